//! Dropout on the GPU (dropout.cu), as `kernels::dropout`: the same mask bits (one per element, kept when
//! `rng::uniform_at(key, i) >= p`, in u64 words) and the same values.
use super::elementwise;
use crate::kernels::cuda::device::Device;
use crate::kernels::dropout::mask_words;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, PushKernelArg};

/// 1/(1 − p) rounded as `kernels::dropout` rounds it (in f32), for the kernels to multiply by.
fn keep_scale(p: f32) -> f32 {
    1.0 / (1.0 - p)
}

/// x_drop = dropout(x), drawing the mask into keep. x, x_drop: (n); keep: (mask_words(n)).
pub fn dropout_forward(
    d: &Device,
    x_drop: &mut CudaViewMut<f32>,
    keep: &mut CudaViewMut<u64>,
    x: &CudaView<f32>,
    p: f32,
    key: u64,
) -> Result<(), DriverError> {
    let n = x.len();
    assert!(x_drop.len() == n && keep.len() == mask_words(n), "dropout_forward: shapes");
    let (p64, scale) = (p as f64, keep_scale(p));
    let mut b = d.stream.launch_builder(d.function("dropout_forward"));
    b.arg(x_drop).arg(keep).arg(x).arg(&n).arg(&p64).arg(&scale).arg(&key);
    // SAFETY: thread w < mask_words(n) writes keep[w] and elements 64·w .. min(n, 64·w + 64) of x_drop, reading
    // those of x: all inside the views (lengths checked).
    unsafe { b.launch(elementwise(mask_words(n))) }.map(drop)
}

/// x_drop = dropout(x) again from the mask [`dropout_forward`] drew. x, x_drop: (n); keep: ≥ mask_words(n).
pub fn dropout_again(
    d: &Device,
    x_drop: &mut CudaViewMut<f32>,
    keep: &CudaView<u64>,
    x: &CudaView<f32>,
    p: f32,
) -> Result<(), DriverError> {
    let n = x.len();
    assert!(x_drop.len() == n && keep.len() >= mask_words(n), "dropout_again: shapes");
    let scale = keep_scale(p);
    let mut b = d.stream.launch_builder(d.function("dropout_again"));
    b.arg(x_drop).arg(keep).arg(x).arg(&n).arg(&scale);
    // SAFETY: element-wise over n values; element i reads keep[i / 64] < mask_words(n) ≤ keep.len().
    unsafe { b.launch(elementwise(n)) }.map(drop)
}

/// dx **+=** keep ⊙ t / (1 − p). dx, t: (n); keep: ≥ mask_words(n).
pub fn dropout_backward(
    d: &Device,
    dx: &mut CudaViewMut<f32>,
    t: &CudaView<f32>,
    keep: &CudaView<u64>,
    p: f32,
) -> Result<(), DriverError> {
    let n = t.len();
    assert!(dx.len() == n && keep.len() >= mask_words(n), "dropout_backward: shapes");
    let scale = keep_scale(p);
    let mut b = d.stream.launch_builder(d.function("dropout_backward"));
    b.arg(dx).arg(t).arg(keep).arg(&n).arg(&scale);
    // SAFETY: element-wise over n values; element i reads keep[i / 64] < mask_words(n) ≤ keep.len().
    unsafe { b.launch(elementwise(n)) }.map(drop)
}
