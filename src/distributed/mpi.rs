//! [`Collectives`] over MPI (rsmpi): the job `mpirun -np R` or `srun` started. Only the main thread calls MPI
//! (`MPI_THREAD_FUNNELED`); rayon's workers only do math. A panic on any rank aborts the whole job, so no rank
//! waits forever in a collective for one that is gone.
use super::Collectives;
use anyhow::{Result, bail};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::Equivalence;
use std::cell::RefCell;

/// Elements per allreduce call: MPI has no in-place allreduce in rsmpi, so a buffer goes through a scratch
/// copy of this many elements at a time (sums are element-wise, so the chunking does not change them).
const CHUNK: usize = 1 << 20;

pub struct Mpi {
    world: SimpleCommunicator,
    scratch_f32: RefCell<Vec<f32>>,
    scratch_f64: RefCell<Vec<f64>>,
    /// Finalizes MPI when dropped: declared last, so dropped last.
    _universe: Universe,
}

impl Mpi {
    pub fn init() -> Result<Self> {
        let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Funneled) else {
            bail!("MPI is already initialized in this process");
        };
        let world = universe.world();
        let (rank, size) = (world.rank(), world.size());
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            eprintln!("error: rank {rank} of {size} panicked; ending every rank of the job");
            // SAFETY: MPI_Abort on the world communicator, which lives until MPI_Finalize.
            unsafe { mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 101) };
        }));
        Ok(Mpi { world, scratch_f32: RefCell::default(), scratch_f64: RefCell::default(), _universe: universe })
    }
}

/// buf ← Σ over ranks, through `scratch` in chunks of CHUNK.
fn sum<T: Equivalence + Copy + Default>(world: &SimpleCommunicator, buf: &mut [T], scratch: &RefCell<Vec<T>>) {
    let mut scratch = scratch.borrow_mut();
    scratch.resize(buf.len().min(CHUNK), T::default());
    for part in buf.chunks_mut(CHUNK) {
        let send = &mut scratch[..part.len()];
        send.copy_from_slice(part);
        world.all_reduce_into(&*send, part, SystemOperation::sum());
    }
}

impl Collectives for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn sum_f32(&self, buf: &mut [f32]) {
        sum(&self.world, buf, &self.scratch_f32);
    }
    fn sum_f64(&self, buf: &mut [f64]) {
        sum(&self.world, buf, &self.scratch_f64);
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) {
        for part in buf.chunks_mut(CHUNK) {
            self.world.process_at_rank(root as i32).broadcast_into(part);
        }
    }
    fn barrier(&self) {
        self.world.barrier();
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
