//! f32 → bf16 on the GPU (bf16.cu), as `kernels::bf16::round`: the operands of `--compute bf16`'s GEMMs.
use super::by_rows;
use crate::kernels::backend::MatView;
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, PushKernelArg};

/// out (v.rows · v.cols, dense) = the stored matrix of the view `v` of `src` rounded to bf16 (its transpose flag
/// is the caller's to keep).
pub fn to_bf16(d: &Device, out: &mut CudaViewMut<u16>, src: &CudaView<f32>, v: MatView) -> Result<(), DriverError> {
    let n = v.rows * v.cols;
    assert!(v.ld >= v.cols && v.end() <= src.len(), "to_bf16: view {v:?} in a buffer of {}", src.len());
    assert!(out.len() >= n, "to_bf16: {} values out for a {}×{} view", out.len(), v.rows, v.cols);
    assert!([v.rows, v.cols, v.ld].iter().all(|&x| x <= i32::MAX as usize), "to_bf16: view {v:?} too large");
    if n == 0 {
        return Ok(());
    }
    let src = src.slice(v.offset..v.end());
    let [rows, cols, ld] = [v.rows, v.cols, v.ld].map(|x| x as i32);
    let mut b = d.stream.launch_builder(d.function("to_bf16"));
    b.arg(out).arg(&src).arg(&rows).arg(&cols).arg(&ld);
    // SAFETY: element (row, col) of (rows, cols) reads src[row·ld + col] ≤ (rows − 1)·ld + cols − 1 < the view's
    // extent (the slice's length) and writes out[row·cols + col] (out holds at least rows·cols values, checked).
    unsafe { b.launch(by_rows(v.rows, v.cols)) }.map(drop)
}
