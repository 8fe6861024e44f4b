//! One GPU ready for launches: its context, a stream, and every kernel of [`SOURCES`] compiled for its
//! architecture and loaded, looked up by name.
use super::devices::Gpu;
use super::module::{LoadError, Loaded, load_all};
use super::sources::SOURCES;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, DriverError};
use std::collections::HashMap;
use std::sync::Arc;

/// A GPU's context, the stream everything runs on and its loaded kernels.
pub struct Device {
    pub gpu: Gpu,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
}

/// Why a GPU could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no CUDA context on cuda:{ordinal} ({err}): is the GPU in exclusive use by another process?")]
    Context { ordinal: usize, err: DriverError },
    #[error("cuda:{ordinal}: {err}")]
    Load { ordinal: usize, err: LoadError },
}

impl Device {
    /// Makes a context on `gpu` (one that `devices::probe` listed) and loads every kernel source for its
    /// architecture; also returns what each load took, in [`SOURCES`] order.
    pub fn open(gpu: &Gpu) -> Result<(Device, Vec<Loaded>), OpenError> {
        let ordinal = gpu.ordinal;
        let ctx = CudaContext::new(ordinal).map_err(|err| OpenError::Context { ordinal, err })?;
        // Everything runs in order on one stream, so buffers need no events between streams; without them, a
        // launch is only the launch (and can be captured into a graph). Before any buffer is made: a buffer takes
        // its events when it is allocated.
        // SAFETY: no buffer of this context is shared between streams (there is one).
        unsafe { ctx.disable_event_tracking() };
        let loaded = load_all(&ctx, SOURCES, &gpu.arch()).map_err(|err| OpenError::Load { ordinal, err })?;
        let functions = loaded.iter().flat_map(|l| l.functions.iter().cloned()).collect();
        // A stream of our own, not the legacy null stream, which cannot be captured into a graph.
        let stream = ctx.new_stream().map_err(|err| OpenError::Context { ordinal, err })?;
        Ok((Device { gpu: gpu.clone(), ctx, stream, functions }, loaded))
    }

    /// The loaded kernel `name` (one of some source's `kernels`: anything else is a bug in the caller).
    pub fn function(&self, name: &str) -> &CudaFunction {
        self.functions.get(name).unwrap_or_else(|| panic!("no CUDA kernel {name} in src/kernels/cuda/sources.rs"))
    }
}
