//! Gradient sums between GPUs by NCCL (loaded at run time, like the driver): one communicator over the ranks of
//! the job, one GPU per rank. Rank 0 makes the communicator's id and the job's host collectives (MPI) carry it
//! to every rank; the sums then run on each GPU's stream, in order with the kernels.
use super::rank_sums::{RankSums, ThroughHost};
use crate::distributed::Collectives;
use crate::kernels::cuda::backend::Cuda;
use anyhow::{Result, anyhow};
use cudarc::driver::CudaSlice;
use cudarc::nccl::{Comm, Id, ReduceOp};

/// A communicator of every rank's GPU.
pub struct Nccl {
    comm: Comm,
}

/// Whether libnccl.so can be loaded here.
fn present() -> bool {
    // SAFETY: dlopen of libnccl (its initializers only).
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

/// The sums of a job whose ranks each train on `cuda`'s GPU: NCCL when every rank can load it, else through host
/// memory (said once, by rank 0). Every rank calls it, at the same point.
pub fn rank_sums(cuda: &Cuda, world: &dyn Collectives) -> Result<Box<dyn RankSums<Cuda>>> {
    let everywhere = world.sum_scalar(f64::from(u8::from(present()))) as usize == world.size();
    if !everywhere {
        if world.is_root() {
            eprintln!(
                "warning: NCCL (libnccl.so.2) is missing on some rank: the gradients are summed through host memory \
                 and MPI, which is slower; install NCCL (the nvidia-nccl wheel or the CUDA repository's libnccl2) \
                 and add its folder to LD_LIBRARY_PATH"
            );
        }
        return Ok(Box::new(ThroughHost::default()));
    }
    Ok(Box::new(Nccl::join(cuda, world)?))
}

impl Nccl {
    /// The communicator of `world`'s ranks: rank 0's id broadcast as one f32 per byte.
    pub fn join(cuda: &Cuda, world: &dyn Collectives) -> Result<Nccl> {
        let ordinal = cuda.device().gpu.ordinal;
        let failed = |what: &str, e| anyhow!("NCCL {what} on cuda:{ordinal} (rank {}) failed: {e:?}", world.rank());
        let mut bytes = [0.0f32; 128];
        if world.is_root() {
            let id = Id::new().map_err(|e| failed("ncclGetUniqueId", e))?;
            for (b, &c) in bytes.iter_mut().zip(id.internal()) {
                *b = f32::from(c as u8);
            }
        }
        world.broadcast_f32(&mut bytes, 0);
        let id = Id::uninit(bytes.map(|b| b as u8 as std::ffi::c_char));
        let stream = cuda.device().stream.clone();
        // ncclCommInitRank takes the GPU of the calling thread's current context.
        stream.context().bind_to_thread().map_err(|e| anyhow!("binding cuda:{ordinal}'s context: {e}"))?;
        let comm =
            Comm::from_rank(stream, world.rank(), world.size(), id).map_err(|e| failed("ncclCommInitRank", e))?;
        Ok(Nccl { comm })
    }
}

impl RankSums<Cuda> for Nccl {
    fn name(&self) -> &'static str {
        "NCCL"
    }

    fn sum(&mut self, _: &Cuda, buf: &mut CudaSlice<f32>, n: usize, _: &dyn Collectives) -> Result<()> {
        let len = buf.len();
        let mut part = buf.try_slice_mut(..n).unwrap_or_else(|| panic!("NCCL sum of {n} values in a buffer of {len}"));
        self.comm.all_reduce_in_place(&mut part, &ReduceOp::Sum).map_err(|e| anyhow!("ncclAllReduce: {e:?}"))?;
        Ok(())
    }
}
