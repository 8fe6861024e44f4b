//! Whole rows moved by an index on the GPU (rows.cu), as `kernels::backend::host`'s embedding, gather_rows and
//! scatter_add_rows: the same bits. The kernels trust the indices: their upload's facts are checked first.
use super::indices::Indices;
use super::per_row;
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, PushKernelArg};

/// out[k] = src[idx[k]] · scale for the k < idx.len() rows of `dim`: an embedding lookup (src the (vocab, dim)
/// table, scale Gemma's √dim or 1) or a plain gather (scale 1). out: (idx.len(), dim).
pub fn gather_rows(
    d: &Device,
    out: &mut CudaViewMut<f32>,
    src: &CudaView<f32>,
    idx: &Indices,
    dim: usize,
    scale: f32,
) -> Result<(), DriverError> {
    let n = idx.len();
    assert!(dim > 0 && dim <= i32::MAX as usize && out.len() == n * dim, "gather_rows: out shape ({n} rows of {dim})");
    if n == 0 {
        return Ok(());
    }
    idx.check_below(src.len() / dim, "gather_rows");
    let dim_i = dim as i32;
    let mut b = d.stream.launch_builder(d.function("gather_rows"));
    b.arg(out).arg(src).arg(&idx.view).arg(&dim_i).arg(&scale);
    // SAFETY: block k reads idx[k] (k < n) and row idx[k] of src (checked to lie in it), writes row k of out
    // (n rows of dim, checked).
    unsafe { b.launch(per_row(n)) }.map(drop)
}

/// dst[idx[k]] += src[k] for the k < idx.len() rows of `dim`, the indices distinct. src: (idx.len(), dim).
pub fn scatter_add_rows(
    d: &Device,
    dst: &mut CudaViewMut<f32>,
    src: &CudaView<f32>,
    idx: &Indices,
    dim: usize,
) -> Result<(), DriverError> {
    let n = idx.len();
    assert!(
        dim > 0 && dim <= i32::MAX as usize && src.len() == n * dim,
        "scatter_add_rows: src shape ({n} rows of {dim})"
    );
    if n == 0 {
        return Ok(());
    }
    idx.check_below(dst.len() / dim, "scatter_add_rows");
    assert!(idx.facts.distinct, "scatter_add_rows: an index appears twice (the rows it adds to must be distinct)");
    let dim_i = dim as i32;
    let mut b = d.stream.launch_builder(d.function("scatter_add_rows"));
    b.arg(dst).arg(src).arg(&idx.view).arg(&dim_i);
    // SAFETY: block k reads row k of src (n rows, checked) and adds it to row idx[k] of dst, checked to lie in it;
    // the indices are distinct (checked), so no two blocks write one row.
    unsafe { b.launch(per_row(n)) }.map(drop)
}
