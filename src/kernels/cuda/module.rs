//! Kernel sources compiled for a GPU and loaded into its context: the functions launches take, by name.
use super::compile::{PtxError, compile};
use super::sources::Source;
use cudarc::driver::{CudaContext, CudaFunction, DriverError};
use std::sync::Arc;
use std::time::Instant;

/// One source's kernels, loaded.
pub struct Loaded {
    pub file: &'static str,
    /// Size of the PTX text the driver loaded.
    pub ptx_bytes: usize,
    /// Seconds spent in NVRTC, and in the driver's load (its JIT of the PTX for the GPU).
    pub compile_s: f64,
    pub load_s: f64,
    /// The source's kernels in its order (`Source::kernels`).
    pub functions: Vec<(&'static str, CudaFunction)>,
}

/// Why a source's kernels could not be loaded, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Compile(#[from] PtxError),
    #[error(
        "the CUDA driver rejected the PTX of src/kernels/cuda/cu/{file} ({err}): a driver older than the NVRTC that compiled \
         it refuses its PTX version — use the NVRTC of the driver's CUDA version (LD_LIBRARY_PATH) or update the \
         driver"
    )]
    Module { file: &'static str, err: DriverError },
    #[error("src/kernels/cuda/cu/{file} has no kernel {kernel} ({err}): it must be defined `extern \"C\" __global__`")]
    Function { file: &'static str, kernel: &'static str, err: DriverError },
}

/// Compiles `src` for `arch` (the GPU's, e.g. `sm_90`), loads it into `ctx` and looks up each of its kernels.
pub fn load(ctx: &Arc<CudaContext>, src: &Source, arch: &str) -> Result<Loaded, LoadError> {
    let t = Instant::now();
    let ptx = compile(src, arch)?;
    let compile_s = t.elapsed().as_secs_f64();
    let ptx_bytes = ptx.to_src().len();
    let t = Instant::now();
    let module = ctx.load_module(ptx).map_err(|err| LoadError::Module { file: src.file, err })?;
    let functions = src
        .kernels
        .iter()
        .map(|&k| {
            Ok((k, module.load_function(k).map_err(|err| LoadError::Function { file: src.file, kernel: k, err })?))
        })
        .collect::<Result<_, LoadError>>()?;
    Ok(Loaded { file: src.file, ptx_bytes, compile_s, load_s: t.elapsed().as_secs_f64(), functions })
}
