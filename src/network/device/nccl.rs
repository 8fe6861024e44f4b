//! Gradient sums between GPUs by NCCL, loaded at run time like the driver: one communicator over the ranks of the
//! job, one GPU per rank. Rank 0 makes the communicator's id and the job's host collectives (MPI) carry it to every
//! rank; the sums then run on each GPU's stream, in order with the kernels.
//!
//! The six entry points used are bound here rather than through cudarc's NCCL module, which looks for
//! `libnccl.so` and the CUDA major's soname only: the NCCL of PyTorch's wheels and of the `libnccl2` package is
//! `libnccl.so.2`, so it would never load.
use super::rank_sums::{RankSums, ThroughHost};
use crate::distributed::Collectives;
use crate::kernels::cuda::backend::Cuda;
use anyhow::{Result, anyhow, bail};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut};
use libloading::Library;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::{Arc, OnceLock};

/// ncclUniqueId: 128 opaque bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId([c_char; 128]);

/// ncclComm_t.
type CommPtr = *mut c_void;

/// ncclFloat32 and ncclSum of nccl.h.
const FLOAT32: c_int = 7;
const SUM: c_int = 0;

/// The entry points, from one loaded library.
struct Api {
    get_version: unsafe extern "C" fn(*mut c_int) -> c_int,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut CommPtr, c_int, UniqueId, c_int) -> c_int,
    all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, CommPtr, *mut c_void) -> c_int,
    comm_destroy: unsafe extern "C" fn(CommPtr) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    _lib: Library,
}

/// NCCL's names, newest soname first.
const NAMES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

/// NCCL, loaded on first use; None when no library of [`NAMES`] loads or one lacks an entry point.
fn api() -> Option<&'static Api> {
    static API: OnceLock<Option<Api>> = OnceLock::new();
    API.get_or_init(|| {
        // SAFETY: loading NCCL runs its initializers only; each symbol is given the signature nccl.h declares.
        unsafe {
            let lib = NAMES.iter().find_map(|&n| Library::new(n).ok())?;
            Some(Api {
                get_version: *lib.get(b"ncclGetVersion\0").ok()?,
                get_unique_id: *lib.get(b"ncclGetUniqueId\0").ok()?,
                comm_init_rank: *lib.get(b"ncclCommInitRank\0").ok()?,
                all_reduce: *lib.get(b"ncclAllReduce\0").ok()?,
                comm_destroy: *lib.get(b"ncclCommDestroy\0").ok()?,
                error_string: *lib.get(b"ncclGetErrorString\0").ok()?,
                _lib: lib,
            })
        }
    })
    .as_ref()
}

/// An NCCL result as an error naming the call (ncclSuccess is 0).
fn check(api: &Api, call: &str, code: c_int) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any code.
    let why = unsafe { CStr::from_ptr((api.error_string)(code)) }.to_string_lossy();
    bail!("{call} failed: {why} (NCCL error {code}; NCCL_DEBUG=INFO says more)")
}

/// The NCCL that loads here, as (major, minor, patch); None when none does.
pub fn version() -> Option<(u32, u32, u32)> {
    let api = api()?;
    let mut code = 0;
    // SAFETY: writes one int.
    check(api, "ncclGetVersion", unsafe { (api.get_version)(&mut code) }).ok()?;
    let code = u32::try_from(code).ok()?;
    // NCCL ≥ 2.9 codes its version as major·10000 + minor·100 + patch.
    Some((code / 10000, code / 100 % 100, code % 100))
}

/// The sums of a job whose ranks each train on `cuda`'s GPU: NCCL when every rank can load it, else through host
/// memory (said once, by rank 0). Every rank calls it, at the same point.
pub fn rank_sums(cuda: &Cuda, world: &dyn Collectives) -> Result<Box<dyn RankSums<Cuda>>> {
    let everywhere = world.sum_scalar(f64::from(u8::from(api().is_some()))) as usize == world.size();
    if !everywhere {
        if world.is_root() {
            eprintln!(
                "warning: NCCL (libnccl.so.2) is missing on some rank: the gradients are summed through host memory \
                 and MPI, which is slower; install NCCL (the nvidia-nccl wheel or the libnccl2 package) and add its \
                 folder to LD_LIBRARY_PATH"
            );
        }
        return Ok(Box::new(ThroughHost::default()));
    }
    Ok(Box::new(Nccl::join(cuda, world)?))
}

/// A communicator of every rank's GPU, on this rank's stream.
pub struct Nccl {
    api: &'static Api,
    comm: CommPtr,
    stream: Arc<CudaStream>,
}

impl Nccl {
    /// The communicator of `world`'s ranks: rank 0's id broadcast as one f32 per byte.
    pub fn join(cuda: &Cuda, world: &dyn Collectives) -> Result<Nccl> {
        let api = api().ok_or_else(|| anyhow!("NCCL (libnccl.so.2) was not found"))?;
        let (ordinal, rank) = (cuda.device().gpu.ordinal, world.rank());
        let on = |e: anyhow::Error| e.context(format!("NCCL on cuda:{ordinal} (rank {rank} of {})", world.size()));
        let mut id = UniqueId([0; 128]);
        let mut bytes = [0.0f32; 128];
        if world.is_root() {
            // SAFETY: writes one ncclUniqueId.
            check(api, "ncclGetUniqueId", unsafe { (api.get_unique_id)(&mut id) }).map_err(on)?;
            bytes.iter_mut().zip(id.0).for_each(|(b, c)| *b = f32::from(c as u8));
        }
        world.broadcast_f32(&mut bytes, 0);
        id.0.iter_mut().zip(bytes).for_each(|(c, b)| *c = b as u8 as c_char);
        let stream = cuda.device().stream.clone();
        // ncclCommInitRank joins with the GPU of the calling thread's current context.
        stream.context().bind_to_thread().map_err(|e| on(anyhow!("binding the context: {e}")))?;
        let mut comm: CommPtr = std::ptr::null_mut();
        let (ranks, me) = (c_int::try_from(world.size())?, c_int::try_from(rank)?);
        // SAFETY: writes one communicator; every rank passes the same id and size and its own rank.
        check(api, "ncclCommInitRank", unsafe { (api.comm_init_rank)(&mut comm, ranks, id, me) }).map_err(on)?;
        Ok(Nccl { api, comm, stream })
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: the communicator was made by ncclCommInitRank and is destroyed once. An error cannot be handled
        // here (the process is ending or the run failed already).
        unsafe { (self.api.comm_destroy)(self.comm) };
    }
}

impl RankSums<Cuda> for Nccl {
    fn name(&self) -> &'static str {
        "NCCL"
    }

    fn sum(&mut self, _: &Cuda, buf: &mut CudaSlice<f32>, n: usize, _: &dyn Collectives) -> Result<()> {
        assert!(n <= buf.len(), "NCCL sum of {n} values in a buffer of {}", buf.len());
        let (ptr, _record) = buf.device_ptr_mut(&self.stream);
        let p = ptr as *mut c_void;
        // SAFETY: n f32 values from the buffer's start (checked above), summed in place (send = receive) on the
        // stream the buffer is used on; the record keeps the buffer's events in order with the call.
        let code = unsafe { (self.api.all_reduce)(p, p, n, FLOAT32, SUM, self.comm, self.stream.cu_stream().cast()) };
        check(self.api, "ncclAllReduce", code)
    }
}
