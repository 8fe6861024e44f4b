//! Σ x² in f64 on the GPU (reduce.cu), as `kernels::backend::host`'s sum_squares: two launches (a fixed grid of
//! per-block partials, then one block over them into the caller's slot) — deterministic for a given n.
use super::THREADS;
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, LaunchConfig, PushKernelArg};

/// Blocks of the first launch, fixed so that the order of the sums depends on n only.
pub const PARTIALS: usize = 256;

/// total[0] = Σ x[i]² summed in f64; `partials`: PARTIALS values of scratch. Queued on the stream, not waited for.
pub fn sum_squares(
    d: &Device,
    x: &CudaView<f32>,
    partials: &mut CudaViewMut<f64>,
    total: &mut CudaViewMut<f64>,
) -> Result<(), DriverError> {
    assert_eq!(partials.len(), PARTIALS, "sum_squares: partials must hold PARTIALS values");
    assert_eq!(total.len(), 1, "sum_squares: the total is one value");
    let n = x.len();
    let grid = |blocks: usize| LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = d.stream.launch_builder(d.function("sum_squares_partial"));
    b.arg(&mut *partials).arg(x).arg(&n);
    // SAFETY: block j writes partials[j], j < PARTIALS (the grid); threads read x[i] for i < n = x.len().
    unsafe { b.launch(grid(PARTIALS)) }?;
    let (parts, count) = (partials.as_view(), PARTIALS as i32);
    let mut b = d.stream.launch_builder(d.function("sum_partials"));
    b.arg(total).arg(&parts).arg(&count);
    // SAFETY: one block reads the PARTIALS partials and writes total[0] (total holds 1 value).
    unsafe { b.launch(grid(1)) }.map(drop)
}
