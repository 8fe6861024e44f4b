//! Kernel sources compiled for a GPU and loaded into its context: the functions launches take, by name.
use super::compile::PtxError;
use super::ptx_cache::{self, Compiled, compiled};
use super::sources::Source;
use cudarc::driver::{CudaContext, CudaFunction, DriverError, sys};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;
use std::time::Instant;

/// One source's kernels, loaded.
pub struct Loaded {
    pub file: &'static str,
    /// Size of the PTX text the driver loaded (or refused, when it loaded machine code instead).
    pub ptx_bytes: usize,
    /// Whether the driver refused the PTX's version and the kernels were loaded as machine code (CUBIN).
    pub machine_code: bool,
    /// Seconds spent in NVRTC (0 when the PTX came from `ptx_cache`), and in the driver's load (its JIT of the PTX
    /// for the GPU, itself cached by the driver).
    pub compile_s: f64,
    pub from_cache: bool,
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
        "the CUDA driver rejected the kernels of src/kernels/cuda/cu/{file} ({err}): use the NVRTC of the driver's \
         CUDA version (LD_LIBRARY_PATH) or update the driver"
    )]
    Module { file: &'static str, err: DriverError },
    #[error("src/kernels/cuda/cu/{file} has no kernel {kernel} ({err}): it must be defined `extern \"C\" __global__`")]
    Function { file: &'static str, kernel: &'static str, err: DriverError },
}

/// Compiles `src` for `arch` (the GPU's, e.g. `sm_90`; through `ptx_cache`), loads it into `ctx` and looks up each
/// of its kernels.
pub fn load(ctx: &Arc<CudaContext>, src: &'static Source, arch: &str) -> Result<Loaded, LoadError> {
    load_compiled(ctx, src, arch, compiled(src, arch)?)
}

/// [`load`] for every source: compiled side by side (NVRTC's programs are independent; one thread each), then
/// loaded in order. Stops at the first source that fails.
pub fn load_all(ctx: &Arc<CudaContext>, sources: &'static [Source], arch: &str) -> Result<Vec<Loaded>, LoadError> {
    let ptx: Vec<Result<Compiled, PtxError>> = std::thread::scope(|s| {
        let handles: Vec<_> = sources.iter().map(|src| s.spawn(move || compiled(src, arch))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    sources.iter().zip(ptx).map(|(src, c)| load_compiled(ctx, src, arch, c?)).collect()
}

/// Loads `c`'s PTX; where the driver refuses its version (a driver older than NVRTC), compiles `src` again to
/// machine code for `arch` and loads that.
fn load_compiled(ctx: &Arc<CudaContext>, src: &'static Source, arch: &str, c: Compiled) -> Result<Loaded, LoadError> {
    let ptx_bytes = c.ptx.to_src().len();
    let (mut compile_s, mut from_cache) = (c.nvrtc_s, c.from_cache);
    let mut t = Instant::now();
    let refused = |err: &DriverError| err.0 == sys::cudaError_enum::CUDA_ERROR_UNSUPPORTED_PTX_VERSION;
    let (module, machine_code) = match ctx.load_module(c.ptx) {
        Ok(m) => (m, false),
        Err(err) if refused(&err) => {
            let (cubin, nvrtc_s) = ptx_cache::machine_code(src, arch)?;
            (compile_s, from_cache) = (compile_s + nvrtc_s, from_cache && nvrtc_s == 0.0);
            t = Instant::now();
            (ctx.load_module(Ptx::from_binary(cubin)).map_err(|err| LoadError::Module { file: src.file, err })?, true)
        }
        Err(err) => return Err(LoadError::Module { file: src.file, err }),
    };
    let functions = src
        .kernels
        .iter()
        .map(|&k| {
            Ok((k, module.load_function(k).map_err(|err| LoadError::Function { file: src.file, kernel: k, err })?))
        })
        .collect::<Result<_, LoadError>>()?;
    let load_s = t.elapsed().as_secs_f64();
    Ok(Loaded { file: src.file, ptx_bytes, machine_code, compile_s, from_cache, load_s, functions })
}
