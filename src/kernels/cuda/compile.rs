//! CUDA C → PTX with NVRTC (loaded at run time from libnvrtc; no toolkit at build time), for one GPU
//! architecture: `sm_90` (H100/H200) unless the device says otherwise.
use super::sources::Source;
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx, compile_ptx_with_opts, result, sys};
use std::ffi::CString;

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

/// Compiles `src` for `arch` (a real architecture, `sm_90`) to machine code (CUBIN): what is loaded where the driver
/// refuses NVRTC's PTX, as a driver older than NVRTC does (a PTX version it does not know), while it runs the
/// machine code of any toolkit of its major version. PyTorch's NVRTC kernels are loaded so too.
pub fn compile_cubin(src: &Source, arch: &str) -> Result<Vec<u8>, PtxError> {
    nvrtc_version()?;
    let failed = |log: String| PtxError::Compile { file: src.file, arch: arch.into(), log };
    let text = CString::new(src.program()).map_err(|e| failed(e.to_string()))?;
    let name = CString::new(src.file).map_err(|e| failed(e.to_string()))?;
    let prog = result::create_program(&text, Some(&name)).map_err(|e| failed(format!("{e:?}")))?;
    // SAFETY: `prog` was made above from `text` and `name`, which outlive it; it is destroyed once, after its last
    // use. nvrtcGetCUBIN writes nvrtcGetCUBINSize bytes, the buffer's length.
    unsafe {
        let cubin = || -> Result<Vec<u8>, PtxError> {
            if result::compile_program(prog, &options(arch)).is_err() {
                let log = result::get_program_log(prog).map_or_else(
                    |e| format!("{e:?}"),
                    |log| {
                        let bytes: Vec<u8> = log.iter().map(|&c| c as u8).collect();
                        let text = std::ffi::CStr::from_bytes_until_nul(&bytes).map(|c| c.to_string_lossy());
                        text.map_or_else(|_| String::from_utf8_lossy(&bytes).into_owned(), |t| t.into_owned())
                            .trim_end()
                            .to_string()
                    },
                );
                return Err(failed(log));
            }
            let mut n = 0;
            sys::nvrtcGetCUBINSize(prog, &mut n).result().map_err(|e| failed(format!("nvrtcGetCUBINSize: {e:?}")))?;
            let mut bytes = vec![0u8; n];
            sys::nvrtcGetCUBIN(prog, bytes.as_mut_ptr().cast())
                .result()
                .map_err(|e| failed(format!("nvrtcGetCUBIN: {e:?}")))?;
            Ok(bytes)
        }();
        let _ = result::destroy_program(prog);
        cubin
    }
}
