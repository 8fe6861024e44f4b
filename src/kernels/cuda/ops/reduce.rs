//! Σ x² in f64 on the GPU (reduce.cu), as `kernels::backend::host`'s sum_squares, for many tensors at once: two
//! launches (per-block partials, as many per tensor as its size asks, then one block per tensor over them) —
//! deterministic for a given n, and two launches per gradient norm however many tensors train.
use super::{THREADS, upload_table};
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DriverError, LaunchConfig, PushKernelArg};

/// Blocks (partials) of the first launch for a tensor of n values: one per 8 · THREADS values, at least 1, at most
/// 256 — a function of n only, so the order of the sums depends on n only.
fn partials_for(n: usize) -> usize {
    n.div_ceil(THREADS as usize * 8).clamp(1, 256)
}

/// Scratch the sums reuse: the tensors' table and their partials, grown to the most partials once.
pub struct Scratch {
    table: CudaSlice<u64>,
    partials: CudaSlice<f64>,
}

impl Scratch {
    pub fn new(d: &Device) -> Result<Scratch, DriverError> {
        Ok(Scratch { table: d.stream.alloc_zeros(3)?, partials: d.stream.alloc_zeros(1)? })
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
    let mut rows = Vec::with_capacity(3 * xs.len());
    // The addresses' guards (cudarc's stream-order records) live until the launches are queued.
    let mut guards = Vec::with_capacity(xs.len());
    let mut total = 0;
    for x in xs {
        let (ptr, guard) = x.device_ptr(&d.stream);
        rows.extend([ptr, x.len() as u64, total as u64]);
        guards.push(guard);
        total += partials_for(x.len());
    }
    if scratch.partials.len() < total {
        scratch.partials = d.stream.alloc_zeros(total)?;
    }
    let count = xs.len() as i32;
    let table = upload_table(d, &mut scratch.table, &rows)?;
    let mut partials = scratch.partials.slice_mut(..total);
    let mut b = d.stream.launch_builder(d.function("sum_squares_partial"));
    b.arg(&mut partials).arg(&table).arg(&count);
    let cfg = LaunchConfig { grid_dim: (total as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: block b, of the tensor y whose partials (the table's firsts, ascending from 0, partitioning 0..total)
    // hold it, reads x[i] for i < n of tensor y (its address and length from a live view) and writes partials[b]
    // (partials holds total values).
    unsafe { b.launch(cfg) }?;
    let (parts, total32) = (partials.as_view(), total as i32);
    let mut b = d.stream.launch_builder(d.function("sum_partials"));
    b.arg(out).arg(&parts).arg(&table).arg(&count).arg(&total32);
    let cfg = LaunchConfig { grid_dim: (count as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: block y reads tensor y's partials, between its first and the next tensor's (or total), and writes
    // out[y], y < count ≤ out.len().
    unsafe { b.launch(cfg) }?;
    drop(guards);
    Ok(())
}
