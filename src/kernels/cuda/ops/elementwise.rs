//! The backend's element-wise ops on the GPU (elementwise.cu), as `kernels::backend::host`'s scale,
//! scale_in_place and add_bias: the same bits (one rounding per element on both sides); and add_bias's backward,
//! add_column_sums: by chunks of rows, the CPU's bits up to one chunk, within float rounding beyond.
use super::{CHUNK_ROWS, by_chunks, by_rows, column_scratch, elementwise, reduce};
use crate::kernels::backend::MatView;
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, PushKernelArg};

/// dst = s · src. Both of one length.
pub fn scale(d: &Device, dst: &mut CudaViewMut<f32>, src: &CudaView<f32>, s: f32) -> Result<(), DriverError> {
    let n = dst.len();
    assert_eq!(src.len(), n, "scale: dst and src lengths");
    let mut b = d.stream.launch_builder(d.function("scale"));
    b.arg(dst).arg(src).arg(&n).arg(&s);
    // SAFETY: element-wise over n values of views of length n.
    unsafe { b.launch(elementwise(n)) }.map(drop)
}

/// x *= s.
pub fn scale_in_place(d: &Device, x: &mut CudaViewMut<f32>, s: f32) -> Result<(), DriverError> {
    let n = x.len();
    let mut b = d.stream.launch_builder(d.function("scale_in_place"));
    b.arg(x).arg(&n).arg(&s);
    // SAFETY: element-wise over the n values of x.
    unsafe { b.launch(elementwise(n)) }.map(drop)
}

/// Every row of the view `ov` of `out` += b (b: ov.cols values). The view is not transposed and its rows do
/// not overlap (ld ≥ cols: each element gets one add).
pub fn add_bias(d: &Device, out: &mut CudaViewMut<f32>, ov: MatView, b: &CudaView<f32>) -> Result<(), DriverError> {
    assert!(!ov.trans && ov.ld >= ov.cols, "add_bias: view {ov:?} is transposed or its rows overlap");
    assert!(ov.end() <= out.len(), "add_bias: view {ov:?} past a buffer of {}", out.len());
    assert_eq!(b.len(), ov.cols, "add_bias: bias length");
    if ov.rows == 0 || ov.cols == 0 {
        return Ok(());
    }
    let mut o = out.slice_mut(ov.offset..ov.end());
    let mut l = d.stream.launch_builder(d.function("add_bias"));
    l.arg(&mut o).arg(b).arg(&ov.rows).arg(&ov.cols).arg(&ov.ld);
    // SAFETY: element (r, c) of (rows, cols) adds to o[r·ld + c] ≤ (rows − 1)·ld + cols − 1 < o.len() (the view's
    // extent, checked inside out) and reads b[c] (b holds cols values).
    unsafe { l.launch(by_rows(ov.rows, ov.cols)) }.map(drop)
}

/// db += the column sums of the view `dyv` of `dy` (db: dyv.cols values), as `Host::add_column_sums`: each column
/// summed from −0 by chunks of rows, in row order within a chunk, the chunks' sums then added in order — the CPU's
/// sum within float rounding. The view is not transposed; its rows may overlap (it is only read). partials: scratch
/// of `column_scratch(rows, cols)` values.
pub fn add_column_sums(
    d: &Device,
    db: &mut CudaViewMut<f32>,
    dy: &CudaView<f32>,
    dyv: MatView,
    partials: &mut CudaViewMut<f32>,
) -> Result<(), DriverError> {
    assert!(!dyv.trans, "add_column_sums: view {dyv:?} is transposed");
    assert!(dyv.end() <= dy.len(), "add_column_sums: view {dyv:?} past a buffer of {}", dy.len());
    assert_eq!(db.len(), dyv.cols, "add_column_sums: db length");
    if dyv.rows == 0 || dyv.cols == 0 {
        // Each sum would be −0, and x + (−0) is x.
        return Ok(());
    }
    assert!(partials.len() >= column_scratch(dyv.rows, dyv.cols), "add_column_sums: scratch of {}", partials.len());
    let y = dy.slice(dyv.offset..dyv.end());
    let ((cfg, chunks), chunk_rows) = (by_chunks(dyv.rows, dyv.cols), CHUNK_ROWS);
    let mut l = d.stream.launch_builder(d.function("add_column_sums"));
    l.arg(&mut *partials).arg(&y).arg(&dyv.rows).arg(&dyv.cols).arg(&dyv.ld).arg(&chunk_rows);
    // SAFETY: thread (c, k), c < cols, reads y[r·ld + c] for chunk k's rows r < rows, at most (rows − 1)·ld + cols − 1
    // < y.len() (the view's extent, checked inside dy), and writes partials[k·cols + c] < column_scratch(rows, cols)
    // ≤ partials.len() (checked).
    unsafe { l.launch(cfg) }?;
    reduce::add_chunk_sums(d, db, &partials.as_view(), chunks)
}

/// dst += src. Both of one length.
pub fn add(d: &Device, dst: &mut CudaViewMut<f32>, src: &CudaView<f32>) -> Result<(), DriverError> {
    let n = dst.len();
    assert_eq!(src.len(), n, "add: dst and src lengths");
    let mut b = d.stream.launch_builder(d.function("add_in_place"));
    b.arg(dst).arg(src).arg(&n);
    // SAFETY: element-wise over n values of views of length n.
    unsafe { b.launch(elementwise(n)) }.map(drop)
}

/// The view `dv` of dst = the view `sv` of src: the same (rows, cols), neither transposed, each inside its buffer.
pub fn copy_view(
    d: &Device,
    dst: &mut CudaViewMut<f32>,
    dv: MatView,
    src: &CudaView<f32>,
    sv: MatView,
) -> Result<(), DriverError> {
    assert!(!dv.trans && !sv.trans && dv.shape() == sv.shape(), "copy_view: {dv:?} ← {sv:?}");
    assert!(dv.ld >= dv.cols, "copy_view: destination rows {dv:?} overlap");
    assert!(dv.end() <= dst.len() && sv.end() <= src.len(), "copy_view: views past their buffers");
    if dv.rows == 0 || dv.cols == 0 {
        return Ok(());
    }
    let (mut o, i) = (dst.slice_mut(dv.offset..dv.end()), src.slice(sv.offset..sv.end()));
    let mut b = d.stream.launch_builder(d.function("copy_view"));
    b.arg(&mut o).arg(&i).arg(&dv.rows).arg(&dv.cols).arg(&dv.ld).arg(&sv.ld);
    // SAFETY: element (r, c), r < rows, c < cols, writes o[r·dld + c] ≤ (rows − 1)·dld + cols − 1 < o.len() and
    // reads i[r·sld + c] < i.len() (the views' extents, checked inside their buffers); the destination rows do not
    // overlap (dld ≥ cols), so no two threads write one value.
    unsafe { b.launch(elementwise(dv.rows * dv.cols)) }.map(drop)
}
