//! [`Collectives`] over MPI (rsmpi): the job `mpirun -np R` or `srun` started. Only the main thread calls MPI
//! (`MPI_THREAD_FUNNELED`); rayon's workers only do math. A panic on any rank aborts the whole job, so no rank
//! waits forever in a collective for one that is gone. Started sums are `MPI_Iallreduce` through the raw
//! bindings (rsmpi's scoped requests cannot outlive the call that made them; ours live in a table here, with
//! their buffers, until `wait_sum`).
use super::{Collectives, Pending};
use anyhow::{Result, bail};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::ffi;
use mpi::raw::AsRaw;
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
    /// Sums in flight (a `Pending` holds its index; None: a free entry).
    in_flight: RefCell<Vec<Option<InFlight>>>,
    /// Buffers that received earlier sums, reused to receive the next ones (no allocation once warm).
    spare: RefCell<Vec<Vec<f32>>>,
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
            // One write, so that Open MPI's abort banner cannot land inside it.
            let msg = format!("error: rank {rank} of {size} panicked; ending every rank of the job\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
            // SAFETY: MPI_Abort on the world communicator, which lives until MPI_Finalize.
            unsafe { mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 101) };
        }));
        Ok(Mpi {
            world,
            scratch_f32: RefCell::default(),
            scratch_f64: RefCell::default(),
            in_flight: RefCell::default(),
            spare: RefCell::default(),
            _universe: universe,
        })
    }
}

/// One `MPI_Iallreduce` and the buffers MPI reads and writes until it completes: MPI may touch them until then,
/// so they stay here, never moved out or dropped early.
struct InFlight {
    request: ffi::MPI_Request,
    send: Vec<f32>,
    recv: Vec<f32>,
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

    fn start_sum_f32(&self, send: Vec<f32>) -> Pending {
        let count = i32::try_from(send.len()).expect("a gradient bucket holds fewer than 2³¹ values");
        let mut recv = self.spare.borrow_mut().pop().unwrap_or_default();
        recv.resize(send.len(), 0.0);
        // SAFETY: MPI reads `send` and writes `recv` until the request completes; both stay in `in_flight`
        // (moving a Vec does not move its values) until `wait_sum` has waited for it.
        let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
        unsafe {
            ffi::MPI_Iallreduce(
                send.as_ptr().cast(),
                recv.as_mut_ptr().cast(),
                count,
                ffi::RSMPI_FLOAT,
                ffi::RSMPI_SUM,
                self.world.as_raw(),
                &mut request,
            )
        };
        let mut table = self.in_flight.borrow_mut();
        let sum = Some(InFlight { request, send, recv });
        let slot = match table.iter().position(Option::is_none) {
            Some(free) => {
                table[free] = sum;
                free
            }
            None => {
                table.push(sum);
                table.len() - 1
            }
        };
        Pending::in_flight(slot)
    }

    fn test_sum(&self, p: &Pending) -> bool {
        let Some(slot) = p.id() else { return true };
        let mut table = self.in_flight.borrow_mut();
        let sum = table[slot].as_mut().expect("a pending sum's entry");
        let mut done = 0;
        // SAFETY: a request MPI_Iallreduce made (or MPI_REQUEST_NULL once completed, which tests as done).
        unsafe { ffi::MPI_Test(&mut sum.request, &mut done, ffi::RSMPI_STATUS_IGNORE) };
        done != 0
    }

    fn wait_sum(&self, p: Pending) -> Vec<f32> {
        let slot = p.id().expect("MPI's sums are all in flight");
        let mut sum = self.in_flight.borrow_mut()[slot].take().expect("a pending sum's entry");
        // SAFETY: as in test_sum; after the wait MPI no longer touches the buffers.
        unsafe { ffi::MPI_Wait(&mut sum.request, ffi::RSMPI_STATUS_IGNORE) };
        self.spare.borrow_mut().push(sum.send);
        sum.recv
    }
}
