//! CUDA C → PTX with NVRTC (loaded at run time from libnvrtc; no toolkit at build time), for one GPU
//! architecture: `sm_90` (H100/H200) unless the device says otherwise.
use super::sources::Source;
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx, compile_ptx_with_opts, sys};

/// The architecture kernels are compiled for when no GPU is at hand to ask: the H100/H200's.
pub const DEFAULT_ARCH: &str = "sm_90";

/// Why a source did not become PTX, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum PtxError {
    #[error(
        "NVRTC (libnvrtc.so) was not found, so the CUDA kernels cannot be compiled: install the CUDA toolkit, or \
         the nvidia-cuda-nvrtc wheel, and add the folder holding libnvrtc.so.* to LD_LIBRARY_PATH"
    )]
    NoNvrtc,
    #[error("libnvrtc was loaded but nvrtcVersion failed ({0}): reinstall NVRTC or point LD_LIBRARY_PATH at another")]
    Broken(String),
    #[error("src/kernels/cuda/cu/{file} does not compile for {arch} (NVRTC):\n{log}\nfix the kernel source")]
    Compile { file: &'static str, arch: String, log: String },
}

/// NVRTC's version (major, minor), or why it cannot be loaded.
pub fn nvrtc_version() -> Result<(i32, i32), PtxError> {
    // SAFETY: dlopen of libnvrtc (NVIDIA's initializers only); nvrtcVersion then writes two ints.
    unsafe {
        if !sys::is_culib_present() {
            return Err(PtxError::NoNvrtc);
        }
        let (mut major, mut minor) = (0, 0);
        sys::nvrtcVersion(&mut major, &mut minor).result().map_err(|e| PtxError::Broken(format!("{e:?}")))?;
        Ok((major, minor))
    }
}

/// NVRTC's options for `arch`.
pub fn options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()]
}

/// Compiles `src` (with the common helpers in front) to PTX for `arch` (`sm_90`, …).
pub fn compile(src: &Source, arch: &str) -> Result<Ptx, PtxError> {
    nvrtc_version()?;
    let opts = CompileOptions { options: options(arch), name: Some(src.file.into()), ..Default::default() };
    compile_ptx_with_opts(src.program(), opts).map_err(|e| PtxError::Compile {
        file: src.file,
        arch: arch.into(),
        log: match e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().trim_end().to_string(),
            other => format!("{other:?}"),
        },
    })
}
