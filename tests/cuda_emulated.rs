//! The CUDA backend on the CUDA emulator (tests/cuda_emulator/, built by tests/common/cuda_emulator.rs): `condlm`
//! with the emulator's libcuda, libnvrtc and libcublas on LD_LIBRARY_PATH runs `--device cuda` on the CPU — the
//! launch code of src/kernels/cuda/ops/, the kernels of src/kernels/cuda/cu/ (each CUDA thread a fiber, barriers
//! and warp shuffles as on a GPU, reads past a buffer's end caught), and cuBLAS's documented GEMM. What a GPU adds
//! (speed, its own rounding of exp and fused multiply-adds) is left to scripts/gpu_check.sh. Built only with
//! `--features cuda`.
#![cfg(feature = "cuda")]
mod common;

use std::process::{Command, Output};

fn condlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_condlm"))
        .args(args)
        .env("LD_LIBRARY_PATH", common::cuda_emulator::lib_dir())
        // cuBLAS's peak, timed at 4096³ on a GPU, would take minutes on the emulator's CPU GEMM.
        .env("CONDLM_GEMM_PEAK_SIZE", "64")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn every_kernel_and_backend_op_matches_the_cpu() {
    let o = condlm(&["info", "--devices", "--check-kernels"]);
    let t = text(&o);
    println!("{t}");
    assert!(o.status.success(), "--check-kernels on the emulator failed:\n{t}");
    assert!(t.contains("condlm CUDA emulator"), "{t}");
}
