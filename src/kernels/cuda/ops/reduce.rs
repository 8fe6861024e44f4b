//! Σ x² in f64 on the GPU (reduce.cu), as `kernels::backend::host`'s sum_squares: two launches (a fixed grid of
//! per-block partials, then one block over them) and one f64 copied back — deterministic for a given n.
use super::THREADS;
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, LaunchConfig, PushKernelArg};

/// Blocks of the first launch, fixed so that the order of the sums depends on n only.
pub const PARTIALS: usize = 256;

/// Σ x[i]² summed in f64. `scratch`: PARTIALS + 1 values (the partials, then the total). Waits for the stream.
pub fn sum_squares(d: &Device, x: &CudaView<f32>, scratch: &mut CudaViewMut<f64>) -> Result<f64, DriverError> {
    assert_eq!(scratch.len(), PARTIALS + 1, "sum_squares: scratch must hold PARTIALS + 1 values");
    let n = x.len();
    let (mut partials, mut total) = scratch.split_at_mut(PARTIALS);
    let grid = |blocks: usize| LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = d.stream.launch_builder(d.function("sum_squares_partial"));
    b.arg(&mut partials).arg(x).arg(&n);
    // SAFETY: block j writes partials[j], j < PARTIALS (the grid); threads read x[i] for i < n = x.len().
    unsafe { b.launch(grid(PARTIALS)) }?;
    let (parts, count) = (partials.as_view(), PARTIALS as i32);
    let mut b = d.stream.launch_builder(d.function("sum_partials"));
    b.arg(&mut total).arg(&parts).arg(&count);
    // SAFETY: one block reads the PARTIALS partials and writes total[0] (total holds 1 value).
    unsafe { b.launch(grid(1)) }?;
    Ok(d.stream.clone_dtoh(&total)?[0])
}
