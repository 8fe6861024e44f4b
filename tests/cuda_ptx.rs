//! Every CUDA kernel source compiles to PTX with NVRTC and defines the kernels it lists — when libnvrtc loads
//! (a toolkit, or the nvidia-cuda-nvrtc wheel on LD_LIBRARY_PATH: scripts/cuda/ptx_check.sh); otherwise a SKIP
//! line says why. Needs no GPU. Built only with `--features cuda`.
#![cfg(feature = "cuda")]
use condlm::cuda::compile::{DEFAULT_ARCH, PtxError, compile, nvrtc_version};
use condlm::cuda::sources::SOURCES;

#[test]
fn every_kernel_source_compiles_to_ptx() {
    let (major, minor) = match nvrtc_version() {
        Ok(v) => v,
        Err(PtxError::NoNvrtc) => {
            println!("SKIP every_kernel_source_compiles_to_ptx: {}", PtxError::NoNvrtc);
            return;
        }
        Err(e) => panic!("{e}"),
    };
    println!("ptx_check: NVRTC {major}.{minor}, arch {DEFAULT_ARCH}");
    let mut failed = vec![];
    for src in SOURCES {
        match compile(src, DEFAULT_ARCH) {
            Ok(ptx) => {
                let text = ptx.to_src();
                let missing: Vec<_> = src.kernels.iter().filter(|k| !text.contains(&format!(".entry {k}("))).collect();
                assert!(missing.is_empty(), "{}: PTX lacks the kernels {missing:?}", src.file);
                let version = text.lines().find(|l| l.starts_with(".version")).unwrap_or(".version ?");
                println!(
                    "ptx_check: {} OK, {} bytes of PTX ({version}), kernels {}",
                    src.file,
                    text.len(),
                    src.kernels.join(" ")
                );
            }
            Err(e) => {
                println!("ptx_check: {} FAILED", src.file);
                failed.push(e.to_string());
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
