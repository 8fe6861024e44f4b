//! The measured GEMM throughput of a GPU (`info --devices --check-kernels`): cuBLAS at 4096³ in f32 and with bf16
//! operands, after a warm-up — the peak that issue 15's model FLOP utilisation is reported against. The size comes
//! from `CONDLM_GEMM_PEAK_SIZE` when set (the CUDA emulator of tests/cuda_emulated.rs runs these products on the
//! CPU, where 4096³ takes minutes).
use anyhow::Result;
use condlm::kernels::cuda::device::Device;
use condlm::kernels::cuda::gemm::{Blas, GemmShape, Operand};
use cudarc::driver::CudaSlice;
use std::time::Instant;

/// Products timed per type, after [`WARM_UP`] untimed ones (cuBLAS picks and loads its kernel on the first).
const REPS: usize = 10;
const WARM_UP: usize = 2;

/// Prints one line per operand type: TFLOP/s of C = A·Bᵀ at m = n = k = 4096 (or `CONDLM_GEMM_PEAK_SIZE`).
pub fn run(d: &Device) -> Result<()> {
    let blas = Blas::new(d)?;
    let size = match std::env::var("CONDLM_GEMM_PEAK_SIZE") {
        Ok(v) => v.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(|| {
            anyhow::anyhow!("CONDLM_GEMM_PEAK_SIZE={v} is not a positive integer (unset it for 4096)")
        })?,
        Err(_) => 4096,
    };
    let shape = GemmShape { m: size, n: size, k: size };
    // Values in [−0.5, 0.5) without a random stream: throughput does not depend on them, but all-zero operands
    // would draw less power than real data and flatter the peak.
    let f32s: Vec<f32> =
        (0..shape.m * shape.k).map(|i| (i.wrapping_mul(2_654_435_761) % 1000) as f32 / 1000.0 - 0.5).collect();
    let bf16s: Vec<u16> = f32s.iter().map(|&v| condlm::kernels::bf16::round(v)).collect();
    let s = &d.stream;
    let mut c = s.alloc_zeros::<f32>(shape.m * shape.n)?;
    let (a, b) = (s.clone_htod(&f32s)?, s.clone_htod(&f32s)?);
    report(d, "f32 (no TF32)", time(&blas, d, &mut c, &a, &b, shape)?, shape)?;
    let (a, b) = (s.clone_htod(&bf16s)?, s.clone_htod(&bf16s)?);
    report(d, "bf16 operands, f32 sums", time(&blas, d, &mut c, &a, &b, shape)?, shape)?;
    Ok(())
}

/// Seconds per product: the mean of [`REPS`] back-to-back products in stream order, synchronized around them.
fn time<T: Operand>(
    blas: &Blas,
    d: &Device,
    c: &mut CudaSlice<f32>,
    a: &CudaSlice<T>,
    b: &CudaSlice<T>,
    shape: GemmShape,
) -> Result<f64> {
    for _ in 0..WARM_UP {
        blas.gemm(c, a, b, shape, false)?;
    }
    d.stream.synchronize()?;
    let t = Instant::now();
    for _ in 0..REPS {
        blas.gemm(c, a, b, shape, false)?;
    }
    d.stream.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / REPS as f64)
}

fn report(d: &Device, what: &str, seconds: f64, shape: GemmShape) -> Result<()> {
    out!(
        "peak   cuda:{} gemm {}×{}×{} {what:24} {:7.1} TFLOP/s ({:.3} ms per product, mean of {REPS})",
        d.gpu.ordinal,
        shape.m,
        shape.k,
        shape.n,
        shape.flops() / seconds / 1e12,
        seconds * 1e3
    );
    Ok(())
}
