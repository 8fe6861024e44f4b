//! Σ x² in f64 on the GPU (reduce.cu), as `kernels::backend::host`'s sum_squares, for many tensors at once: two
//! launches (a fixed grid of per-block partials per tensor, then one block per tensor over them) — deterministic
//! for a given n, and two launches per gradient norm however many tensors train.
use super::{THREADS, upload_table};
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DriverError, LaunchConfig, PushKernelArg};

/// Blocks per tensor of the first launch, fixed so that the order of the sums depends on n only.
pub const PARTIALS: usize = 256;

/// Scratch the sums reuse: the tensors' table and their partials, grown to the most tensors once.
pub struct Scratch {
    table: CudaSlice<u64>,
    partials: CudaSlice<f64>,
}

impl Scratch {
    pub fn new(d: &Device) -> Result<Scratch, DriverError> {
        Ok(Scratch { table: d.stream.alloc_zeros(2)?, partials: d.stream.alloc_zeros(PARTIALS)? })
    }
}

/// out[i] **+=** Σ_c partials[c·n + i] over `chunks` chunks in chunk order (from −0), n = out.len(): the per-chunk
/// column sums of a norm's weight gradient, a bias's and LoRA's dA added to their gradient.
pub(super) fn add_chunk_sums(
    d: &Device,
    out: &mut CudaViewMut<f32>,
    partials: &CudaView<f32>,
    chunks: usize,
) -> Result<(), DriverError> {
    let n = out.len();
    assert!(partials.len() >= chunks * n, "add_chunk_sums: {chunks} chunks of {n} in {} values", partials.len());
    let mut b = d.stream.launch_builder(d.function("add_chunk_sums"));
    b.arg(out).arg(partials).arg(&chunks).arg(&n);
    // SAFETY: element i < n of out (its length) adds partials[c·n + i], c < chunks: inside partials (checked).
    unsafe { b.launch(super::elementwise(n)) }.map(drop)
}

/// out[i] = Σ xs[i][j]² summed in f64, for every tensor (each view's whole length). Queued, not waited for.
pub fn sum_squares(
    d: &Device,
    out: &mut CudaViewMut<f64>,
    xs: &[CudaView<f32>],
    scratch: &mut Scratch,
) -> Result<(), DriverError> {
    if xs.is_empty() {
        return Ok(());
    }
    assert!(xs.len() <= 65_535, "sum_squares: {} tensors exceed a grid's 65 535 rows", xs.len());
    assert!(out.len() >= xs.len(), "sum_squares: {} sums asked of a buffer of {}", xs.len(), out.len());
    let mut rows = Vec::with_capacity(2 * xs.len());
    // The addresses' guards (cudarc's stream-order records) live until the launches are queued.
    let mut guards = Vec::with_capacity(xs.len());
    for x in xs {
        let (ptr, guard) = x.device_ptr(&d.stream);
        rows.extend([ptr, x.len() as u64]);
        guards.push(guard);
    }
    if scratch.partials.len() < PARTIALS * xs.len() {
        scratch.partials = d.stream.alloc_zeros(PARTIALS * xs.len())?;
    }
    let count = xs.len();
    let table = upload_table(d, &mut scratch.table, &rows)?;
    let mut partials = scratch.partials.slice_mut(..PARTIALS * count);
    let mut b = d.stream.launch_builder(d.function("sum_squares_partial"));
    b.arg(&mut partials).arg(&table);
    let cfg =
        LaunchConfig { grid_dim: (PARTIALS as u32, count as u32, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: block (j, y) reads x[i] for i < n of tensor y (its address and length from a live view) and writes
    // partials[y·PARTIALS + j] (partials holds PARTIALS·count values).
    unsafe { b.launch(cfg) }?;
    let (parts, per) = (partials.as_view(), PARTIALS as i32);
    let mut b = d.stream.launch_builder(d.function("sum_partials"));
    b.arg(out).arg(&parts).arg(&per);
    let cfg = LaunchConfig { grid_dim: (count as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: block y reads partials y·PARTIALS.. (PARTIALS values) and writes out[y], y < count ≤ out.len().
    unsafe { b.launch(cfg) }?;
    drop(guards);
    Ok(())
}
