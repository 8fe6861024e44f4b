//! Whole rows moved by an index on the GPU (rows.cu), as `kernels::backend::host`'s embedding, gather_rows and
//! scatter_add_rows: the same bits. The indices are copied back and checked first (the kernels trust them; n
//! values, small next to the rows).
use super::per_row;
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, PushKernelArg};

/// The indices, checked to name rows of a buffer of `rows` rows (`distinct`: no index twice).
fn checked_indices(d: &Device, op: &str, idx: &CudaView<u32>, rows: usize, distinct: bool) -> Result<(), DriverError> {
    let mut v = d.stream.clone_dtoh(idx)?;
    if let Some(&bad) = v.iter().find(|&&i| i as usize >= rows) {
        panic!("{op}: index {bad} past a buffer of {rows} rows");
    }
    if distinct {
        v.sort_unstable();
        if let Some(w) = v.windows(2).find(|w| w[0] == w[1]) {
            panic!("{op}: index {} appears twice (the rows it adds to must be distinct)", w[0]);
        }
    }
    Ok(())
}

/// out[k] = src[idx[k]] · scale for the k < idx.len() rows of `dim`: an embedding lookup (src the (vocab, dim)
/// table, scale Gemma's √dim or 1) or a plain gather (scale 1). out: (idx.len(), dim).
pub fn gather_rows(
    d: &Device,
    out: &mut CudaViewMut<f32>,
    src: &CudaView<f32>,
    idx: &CudaView<u32>,
    dim: usize,
    scale: f32,
) -> Result<(), DriverError> {
    let n = idx.len();
    assert!(dim > 0 && dim <= i32::MAX as usize && out.len() == n * dim, "gather_rows: out shape ({n} rows of {dim})");
    if n == 0 {
        return Ok(());
    }
    checked_indices(d, "gather_rows", idx, src.len() / dim, false)?;
    let dim_i = dim as i32;
    let mut b = d.stream.launch_builder(d.function("gather_rows"));
    b.arg(out).arg(src).arg(idx).arg(&dim_i).arg(&scale);
    // SAFETY: block k reads idx[k] (k < n) and row idx[k] of src (checked to lie in it), writes row k of out
    // (n rows of dim, checked).
    unsafe { b.launch(per_row(n)) }.map(drop)
}

/// dst[idx[k]] += src[k] for the k < idx.len() rows of `dim`, the indices distinct. src: (idx.len(), dim).
pub fn scatter_add_rows(
    d: &Device,
    dst: &mut CudaViewMut<f32>,
    src: &CudaView<f32>,
    idx: &CudaView<u32>,
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
    checked_indices(d, "scatter_add_rows", idx, dst.len() / dim, true)?;
    let dim_i = dim as i32;
    let mut b = d.stream.launch_builder(d.function("scatter_add_rows"));
    b.arg(dst).arg(src).arg(idx).arg(&dim_i);
    // SAFETY: block k reads row k of src (n rows, checked) and adds it to row idx[k] of dst, checked to lie in it;
    // the indices are distinct (checked), so no two blocks write one row.
    unsafe { b.launch(per_row(n)) }.map(drop)
}
