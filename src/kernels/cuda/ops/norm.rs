//! RMSNorm (rmsnorm.cu) and LayerNorm (layernorm.cu) on the GPU, as `kernels::norm`'s forward and backward.
use super::{CHUNK_ROWS, Elem, by_chunks, column_scratch, per_row, reduce};
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, PushKernelArg};

/// out[r] = (offset + w) ⊙ (x[r] · rstd[r]); rstd saved. x, out: (rows, dim); w: (dim); rstd: (rows). out f32 or
/// bf16 ([`Elem`]: rounded).
pub fn rmsnorm_forward<T: Elem>(
    d: &Device,
    out: &mut CudaViewMut<T>,
    rstd: &mut CudaViewMut<f32>,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    offset: f32,
    eps: f32,
) -> Result<(), DriverError> {
    let (dim, rows) = (w.len(), rstd.len());
    assert!(x.len() == rows * dim && out.len() == rows * dim, "rmsnorm_forward: shapes");
    let dim_i = dim as i32;
    let name = if T::BF16 { "rmsnorm_forward_bf16" } else { "rmsnorm_forward" };
    let mut b = d.stream.launch_builder(d.function(name));
    b.arg(out).arg(rstd).arg(x).arg(w).arg(&offset).arg(&eps).arg(&dim_i);
    // SAFETY: each block reads row blockIdx.x of x (rows · dim values) and w (dim), writes that row of out and
    // rstd[blockIdx.x]: all inside the slices, whose lengths are checked above.
    unsafe { b.launch(per_row(rows)) }.map(drop)
}

/// dx **+=** ∂L/∂x and, when given, dw **+=** ∂L/∂w. dout, x, dx: (rows, dim); w, dw: (dim); rstd: (rows);
/// partials: scratch of `column_scratch(rows, dim)` values for dw's column sums.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    d: &Device,
    dx: &mut CudaViewMut<f32>,
    dw: Option<&mut CudaViewMut<f32>>,
    dout: &CudaView<f32>,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    offset: f32,
    rstd: &CudaView<f32>,
    partials: &mut CudaViewMut<f32>,
) -> Result<(), DriverError> {
    let (dim, rows) = (w.len(), rstd.len());
    assert!(dx.len() == rows * dim && dout.len() == rows * dim && x.len() == rows * dim, "rmsnorm_backward: shapes");
    let (dim_i, rows_i) = (dim as i32, rows as i32);
    let mut b = d.stream.launch_builder(d.function("rmsnorm_backward_dx"));
    b.arg(&mut *dx).arg(dout).arg(x).arg(w).arg(&offset).arg(rstd).arg(&dim_i);
    // SAFETY: as rmsnorm_forward: one block per row inside the checked slices.
    unsafe { b.launch(per_row(rows)) }?;
    if let Some(dw) = dw {
        assert_eq!(dw.len(), dim, "rmsnorm_backward: dw shape");
        assert!(partials.len() >= column_scratch(rows, dim), "rmsnorm_backward: scratch of {}", partials.len());
        let ((cfg, chunks), chunk_rows) = (by_chunks(rows, dim), CHUNK_ROWS as i32);
        let mut b = d.stream.launch_builder(d.function("rmsnorm_backward_dw"));
        b.arg(&mut *partials).arg(dout).arg(x).arg(rstd).arg(&rows_i).arg(&dim_i).arg(&chunk_rows);
        // SAFETY: thread (j, c), j < dim, reads column j of chunk c's rows (< rows) of the (rows, dim) buffers and
        // rstd, and writes partials[c·dim + j] < column_scratch(rows, dim) ≤ partials.len() (checked).
        unsafe { b.launch(cfg) }?;
        reduce::add_chunk_sums(d, dw, &partials.as_view(), chunks)?;
    }
    Ok(())
}

/// out[r] = (x[r] − mean[r])·rstd[r] ⊙ w + b; mean and rstd saved. x, out: (rows, dim); w, b: (dim); mean, rstd:
/// (rows).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    d: &Device,
    out: &mut CudaViewMut<f32>,
    mean: &mut CudaViewMut<f32>,
    rstd: &mut CudaViewMut<f32>,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    b: &CudaView<f32>,
    eps: f32,
) -> Result<(), DriverError> {
    let (dim, rows) = (w.len(), rstd.len());
    assert!(x.len() == rows * dim && out.len() == rows * dim && mean.len() == rows, "layernorm_forward: shapes");
    assert_eq!(b.len(), dim, "layernorm_forward: bias shape");
    let dim_i = dim as i32;
    let mut l = d.stream.launch_builder(d.function("layernorm_forward"));
    l.arg(out).arg(mean).arg(rstd).arg(x).arg(w).arg(b).arg(&eps).arg(&dim_i);
    // SAFETY: each block reads row blockIdx.x of x (rows · dim values), w and b (dim), writes that row of out and
    // mean[blockIdx.x], rstd[blockIdx.x]: all inside the slices, whose lengths are checked above.
    unsafe { l.launch(per_row(rows)) }.map(drop)
}

/// dx **+=** ∂L/∂x and, when given, dw **+=** ∂L/∂w, db **+=** ∂L/∂b. dout, x, dx: (rows, dim); w, dw, db: (dim);
/// mean, rstd: (rows); partials: scratch of 2 · `column_scratch(rows, dim)` values for the column sums.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    d: &Device,
    dx: &mut CudaViewMut<f32>,
    dw: Option<&mut CudaViewMut<f32>>,
    db: Option<&mut CudaViewMut<f32>>,
    dout: &CudaView<f32>,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    mean: &CudaView<f32>,
    rstd: &CudaView<f32>,
    partials: &mut CudaViewMut<f32>,
) -> Result<(), DriverError> {
    let (dim, rows) = (w.len(), rstd.len());
    assert!(
        dx.len() == rows * dim && dout.len() == rows * dim && x.len() == rows * dim && mean.len() == rows,
        "layernorm_backward: shapes"
    );
    let (dim_i, rows_i) = (dim as i32, rows as i32);
    let mut l = d.stream.launch_builder(d.function("layernorm_backward_dx"));
    l.arg(&mut *dx).arg(dout).arg(x).arg(w).arg(mean).arg(rstd).arg(&dim_i);
    // SAFETY: as layernorm_forward: one block per row inside the checked slices.
    unsafe { l.launch(per_row(rows)) }?;
    if dw.is_none() && db.is_none() {
        return Ok(());
    }
    let fits = |g: &Option<&mut CudaViewMut<f32>>| g.as_ref().is_none_or(|g| g.len() == dim);
    assert!(fits(&dw) && fits(&db), "layernorm_backward: dw/db shape");
    let per = column_scratch(rows, dim);
    assert!(partials.len() >= 2 * per, "layernorm_backward: scratch of {}", partials.len());
    let ((cfg, chunks), chunk_rows) = (by_chunks(rows, dim), CHUNK_ROWS as i32);
    let mut l = d.stream.launch_builder(d.function("layernorm_backward_dwdb"));
    l.arg(&mut *partials).arg(dout).arg(x).arg(mean).arg(rstd).arg(&rows_i).arg(&dim_i).arg(&chunk_rows);
    // SAFETY: thread (j, c), j < dim, reads column j of chunk c's rows (< rows) of the (rows, dim) buffers, mean and
    // rstd, and writes partials[c·dim + j] and partials[(chunks + c)·dim + j], below 2·chunks·dim = 2·per ≤
    // partials.len() (checked).
    unsafe { l.launch(cfg) }?;
    let parts = partials.as_view();
    if let Some(dw) = dw {
        reduce::add_chunk_sums(d, dw, &parts.slice(..per), chunks)?;
    }
    if let Some(db) = db {
        reduce::add_chunk_sums(d, db, &parts.slice(per..2 * per), chunks)?;
    }
    Ok(())
}
