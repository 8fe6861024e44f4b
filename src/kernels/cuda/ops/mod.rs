//! Launches of the kernels in src/kernels/cuda/cu/, one file per source: shapes checked on the host (a kernel trusts
//! them), launch shapes chosen here. Buffers are views of device buffers (`CudaView`, `CudaViewMut`: a whole
//! buffer, or the prefix of a longer one that the backend's ops work on) in the CPU kernels' layouts.
pub mod adamw;
pub mod attention;
pub mod bf16;
pub mod cross_entropy;
pub mod delta_mixer;
pub mod dequant;
pub mod dropout;
pub mod elementwise;
pub mod gated_delta;
pub mod glu;
pub mod indices;
pub mod kv_cache;
pub mod norm;
pub mod reduce;
pub mod rope;
pub mod rows;

use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaSlice, CudaView, DeviceRepr, DriverError, LaunchConfig};

/// The element type of a kernel that comes in two forms (glu.cu, dropout.cu): f32, or bf16 held as its bits in a
/// `u16` (the MLP's activations kept in bf16 under `--compute bf16`), whose kernel is named with `_bf16`.
pub trait Elem: DeviceRepr {
    const BF16: bool;
}

impl Elem for f32 {
    const BF16: bool = false;
}

impl Elem for u16 {
    const BF16: bool = true;
}

/// `rows` (a multi-tensor kernel's table: tensors' device addresses and lengths) copied into `scratch`, grown to fit
/// first; returns the view a launch reads. Stream order keeps an earlier launch's reads before this copy.
fn upload_table<'a>(
    d: &Device,
    scratch: &'a mut CudaSlice<u64>,
    rows: &[u64],
) -> Result<CudaView<'a, u64>, DriverError> {
    if scratch.len() < rows.len() {
        *scratch = d.stream.alloc_zeros(rows.len())?;
    }
    d.stream.memcpy_htod(rows, &mut scratch.slice_mut(..rows.len()))?;
    Ok(scratch.slice(..rows.len()))
}

/// Threads per block of every launch (a multiple of 32, as the block reductions of common.cuh require).
const THREADS: u32 = 256;

/// One block per row: what the row-wise kernels (norms, RoPE, cross-entropy rows) take.
fn per_row(rows: usize) -> LaunchConfig {
    assert!(rows <= i32::MAX as usize, "{rows} rows exceed one launch's grid");
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Enough blocks for `n` elements of an element-wise kernel (which strides over the grid), at most 65 536.
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Rows one thread sums for its column in the column sums of a norm's weight gradient and a bias's: each
/// (columns, chunk) block writes its chunk's sums to scratch, then `reduce::add_chunk_sums` adds the chunks' sums
/// in chunk order — parallel over the rows, not one thread per column over all of them, and the same bits every
/// run.
const CHUNK_ROWS: usize = 64;

/// Scratch values the column sums of (rows, cols) need: a row of cols sums per chunk of [`CHUNK_ROWS`] rows.
pub fn column_scratch(rows: usize, cols: usize) -> usize {
    rows.div_ceil(CHUNK_ROWS).max(1) * cols
}

/// The grid of a per-chunk column-sum kernel over (rows, cols) — (column tiles, chunks) — and its chunk count.
fn by_chunks(rows: usize, cols: usize) -> (LaunchConfig, usize) {
    let chunks = rows.div_ceil(CHUNK_ROWS).max(1);
    assert!(chunks <= 65_535, "{rows} rows exceed the column sums' grid");
    let grid = (cols.div_ceil(THREADS as usize).max(1) as u32, chunks as u32, 1);
    (LaunchConfig { grid_dim: grid, block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }, chunks)
}

/// A 2-D grid for a (rows, cols) kernel that strides over rows by gridDim.y and columns by gridDim.x · THREADS:
/// a block per row (at most 65 535, a grid's rows) and enough blocks across for a row's columns.
fn by_rows(rows: usize, cols: usize) -> LaunchConfig {
    let across = cols.div_ceil(THREADS as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (across, rows.clamp(1, 65_535) as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_shapes() {
        assert_eq!(per_row(37).grid_dim, (37, 1, 1));
        assert_eq!(per_row(37).block_dim.0 % 32, 0, "block reductions need whole warps");
        assert_eq!(elementwise(0).grid_dim.0, 1, "an empty launch still has a block");
        assert_eq!(elementwise(257).grid_dim.0, 2);
        assert_eq!(elementwise(1 << 40).grid_dim.0, 1 << 16, "large inputs stride over a capped grid");
        assert_eq!(by_rows(1850, 8960).grid_dim, (35, 1850, 1));
        assert_eq!(by_chunks(1850, 576).0.grid_dim, (3, 29, 1));
        assert_eq!((by_chunks(0, 5).1, column_scratch(0, 5)), (1, 5), "no rows: one chunk of zero sums");
        assert_eq!(column_scratch(129, 7), 3 * 7);
        assert_eq!(by_rows(0, 0).grid_dim, (1, 1, 1), "an empty launch still has a block");
        assert_eq!(by_rows(1 << 20, 1).grid_dim, (1, 65_535, 1), "rows past a grid's stride over it");
    }
}
