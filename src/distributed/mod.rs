//! The processes of a data-parallel run and the collectives between them: rank, world size, in-place
//! allreduce-sum of gradient buffers and scalars (blocking, or started and waited for later so that it overlaps
//! the backward pass), broadcast, every rank's bytes gathered on every rank, barrier, abort. `Single` is the one-process run (every collective a no-op);
//! `mpi::Mpi` (cargo feature `mpi`) runs under `mpirun`/`srun`. A GPU backend (NCCL) is one more implementation of
//! [`Collectives`]; the training loop only sees the trait.
#[cfg(feature = "mpi")]
pub mod mpi;

use anyhow::{Result, bail};
use std::ops::Range;

/// What a data-parallel job needs from its communication library. Every method except `rank`, `size` and
/// `abort` is collective: every rank calls it, in the same order, with buffers of the same length.
pub trait Collectives {
    /// This process's index, 0..size.
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// buf ← Σ over ranks of buf, element-wise; every rank gets the same bits.
    fn sum_f32(&self, buf: &mut [f32]);
    fn sum_f64(&self, buf: &mut [f64]);
    /// buf ← rank `root`'s buf.
    fn broadcast_f32(&self, buf: &mut [f32], root: usize);
    fn barrier(&self);
    /// Ends every rank of the job with exit code `code` (the error is already printed by the caller).
    fn abort(&self, code: i32) -> !;

    /// Starts buf ← Σ over ranks of buf without waiting for it; [`Self::wait_sum`] hands the sums back. The
    /// buffer is the backend's until then. Every rank starts the same sums in the same order. By default the sum
    /// is done at once (a backend without non-blocking collectives).
    fn start_sum_f32(&self, mut buf: Vec<f32>) -> Pending {
        self.sum_f32(&mut buf);
        Pending(Sum::Done(buf))
    }
    /// Lets the started sums progress (MPI moves data only inside its calls) and says whether `p` is done.
    fn test_sum(&self, p: &Pending) -> bool {
        matches!(p.0, Sum::Done(_))
    }
    /// Waits for `p` and hands back the sums, in a buffer of the length given (not necessarily the same one).
    fn wait_sum(&self, p: Pending) -> Vec<f32> {
        match p.0 {
            Sum::Done(buf) => buf,
            Sum::InFlight(_) => unreachable!("a backend that starts sums in flight waits for them itself"),
        }
    }

    /// Every rank's `mine`, in rank order, on every rank; the ranks' bytes may differ in length. By default
    /// through two [`Self::sum_f64`] (lengths, then each rank's bytes in its own slots of a zeroed buffer): enough
    /// for the few kilobytes it is for (each rank's account of its job before a run starts).
    fn gather_bytes(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        let (rank, size) = (self.rank(), self.size());
        let mut lens = vec![0.0; size];
        lens[rank] = mine.len() as f64;
        self.sum_f64(&mut lens);
        let lens: Vec<usize> = lens.iter().map(|&l| l as usize).collect();
        let start: usize = lens[..rank].iter().sum();
        let mut all = vec![0.0; lens.iter().sum()];
        all[start..start + mine.len()].iter_mut().zip(mine).for_each(|(a, &b)| *a = f64::from(b));
        self.sum_f64(&mut all);
        let mut at = 0;
        lens.iter()
            .map(|&l| {
                at += l;
                all[at - l..at].iter().map(|&b| b as u8).collect()
            })
            .collect()
    }
}

/// An error every rank meets at the same point of a run, because it follows from values all ranks share (the
/// summed loss, the rows every rank holds): no rank is then left waiting for another in a collective, so the
/// ranks can end together rather than through [`Collectives::abort`]. Its text is the inner error's.
#[derive(Debug)]
pub struct Everywhere(pub anyhow::Error);

impl std::fmt::Display for Everywhere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Everywhere {}

impl Everywhere {
    /// `e` as an error every rank meets alike.
    pub fn error(e: anyhow::Error) -> anyhow::Error {
        anyhow::Error::new(Everywhere(e))
    }

    /// Whether `e` is one.
    pub fn is(e: &anyhow::Error) -> bool {
        e.downcast_ref::<Everywhere>().is_some()
    }
}

/// The job failed, and every rank knows it from a collective they all took part in (rank 0 has done what it had
/// to with the output folder): every rank returns this error, rank 0 prints its report — the whole text, the
/// failing ranks named — and the other ranks exit quietly, with no MPI_Abort.
#[derive(Debug)]
pub struct JobFailed(pub String);

impl std::fmt::Display for JobFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JobFailed {}

/// A sum started by [`Collectives::start_sum_f32`]; give it to `test_sum`/`wait_sum` of the same backend.
#[must_use = "a started sum must be waited for"]
pub struct Pending(Sum);

enum Sum {
    Done(Vec<f32>),
    InFlight(usize),
}

impl Pending {
    /// A sum a backend keeps in flight under its own `id` (an index into its table of sums and buffers).
    pub fn in_flight(id: usize) -> Self {
        Pending(Sum::InFlight(id))
    }

    /// The backend's id of a sum in flight; None for one that was done when it started.
    pub fn id(&self) -> Option<usize> {
        match self.0 {
            Sum::InFlight(id) => Some(id),
            Sum::Done(_) => None,
        }
    }
}

/// One process: the ordinary run.
pub struct Single;

impl Collectives for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_f32(&self, _: &mut [f32]) {}
    fn sum_f64(&self, _: &mut [f64]) {}
    fn broadcast_f32(&self, _: &mut [f32], _: usize) {}
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

impl dyn Collectives + '_ {
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// Σ over ranks of one scalar.
    pub fn sum_scalar(&self, x: f64) -> f64 {
        let mut b = [x];
        self.sum_f64(&mut b);
        b[0]
    }
}

/// Rank `rank`'s share of `n` items split into `size` contiguous, nearly equal parts (the first n % size parts
/// one longer): the same split on every rank, for any n (an empty part when n < size).
pub fn shard(n: usize, rank: usize, size: usize) -> Range<usize> {
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// World size a launcher announces in the environment (`mpirun` of Open MPI, MPICH/Intel MPI's Hydra, Slurm's
/// `srun` through PMI/PMIx), if any.
fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// This process's index among the ranks on its machine, as the launcher announces it (Open MPI, MPICH/Intel MPI,
/// Slurm, PMIx); None when none does.
pub fn local_rank() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "PMIX_LOCAL_RANK"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// The collectives of this process: MPI when a launcher started it (and the `mpi` feature is built in), else
/// `Single`. A launcher that starts several ranks of a build without MPI is an error: each rank would train
/// alone and all would write the same output folder.
pub fn init() -> Result<Box<dyn Collectives>> {
    init_launched(launched_size())
}

/// [`init`] for the world size a launcher announced, if any.
fn init_launched(launched: Option<usize>) -> Result<Box<dyn Collectives>> {
    #[cfg(feature = "mpi")]
    if launched.is_some() {
        return Ok(Box::new(mpi::Mpi::init()?));
    }
    if let Some(n) = launched.filter(|&n| n > 1) {
        bail!(
            "started as one of {n} MPI ranks, but this condlm is built without MPI support: rebuild with \
             `cargo build --release --features mpi` (needs an MPI library and libclang), or run one process"
        );
    }
    Ok(Box::new(Single))
}

#[cfg(test)]
mod tests {
    use super::{Collectives, Single, shard};

    #[test]
    fn one_rank_gathers_its_own_bytes() {
        assert_eq!(Single.gather_bytes(b"job"), vec![b"job".to_vec()]);
        assert_eq!(Single.gather_bytes(b""), vec![Vec::<u8>::new()]);
    }

    #[cfg(not(feature = "mpi"))]
    #[test]
    fn several_ranks_of_a_build_without_mpi_are_refused() {
        let e = super::init_launched(Some(2)).err().expect("refused").to_string();
        assert!(e.contains("one of 2 MPI ranks") && e.contains("--features mpi"), "{e}");
    }

    #[test]
    fn shards_cover_every_item_once_in_order() {
        for n in 0..20 {
            for size in 1..6 {
                let parts: Vec<_> = (0..size).map(|r| shard(n, r, size)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[size - 1].end, n);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() <= w[1].len() + 1);
                }
            }
        }
    }
}
