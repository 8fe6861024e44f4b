//! The loss rows of the LM head on the GPU (cross_entropy.cu), as the per-row step of
//! `kernels::lm_head::cross_entropy_backward`: a chunk of logits rows becomes dlogits — in place, or into a bf16
//! buffer of their own — and each row's loss goes to `loss`.
use super::indices::Indices;
use super::per_row;
use crate::kernels::cuda::device::Device;
use cudarc::driver::{CudaView, CudaViewMut, DriverError, PushKernelArg};

/// The vocabulary of `len` logits over the targets' rows, the shapes checked (the kernels trust them).
fn vocab_of(len: usize, loss: usize, targets: &Indices, label_smoothing: f32) -> i32 {
    let rows = targets.len();
    assert!(rows > 0 && loss == rows && len.is_multiple_of(rows), "cross_entropy_rows: shapes");
    let vocab = len / rows;
    assert!((0.0..=1.0).contains(&label_smoothing), "cross_entropy_rows: label_smoothing outside [0, 1]");
    // The kernel trusts the targets to lie in the vocabulary: check what their upload found.
    targets.check_below(vocab, "cross_entropy_rows (targets vs the vocabulary)");
    vocab as i32
}

/// logits: (rows, vocab) → w·(softmax − (1 − ε)·onehot − ε/V); loss[r] = (1 − ε)·(lse − l_t) + ε·(lse − mean l).
pub fn cross_entropy_rows(
    d: &Device,
    logits: &mut CudaViewMut<f32>,
    loss: &mut CudaViewMut<f64>,
    targets: &Indices,
    token_weight: f32,
    label_smoothing: f32,
) -> Result<(), DriverError> {
    let vocab = vocab_of(logits.len(), loss.len(), targets, label_smoothing);
    let mut b = d.stream.launch_builder(d.function("cross_entropy_rows"));
    b.arg(logits).arg(loss).arg(&targets.view).arg(&vocab).arg(&token_weight).arg(&label_smoothing);
    // SAFETY: block r reads and writes row r of logits (rows · vocab values), reads targets[r] (< vocab, checked)
    // and writes loss[r].
    unsafe { b.launch(per_row(targets.len())) }.map(drop)
}

/// [`cross_entropy_rows`] with the dlogits rounded to bf16 into `dlogits` (as long as `logits`), the logits left.
pub fn cross_entropy_rows_bf16(
    d: &Device,
    logits: &CudaView<f32>,
    dlogits: &mut CudaViewMut<u16>,
    loss: &mut CudaViewMut<f64>,
    targets: &Indices,
    token_weight: f32,
    label_smoothing: f32,
) -> Result<(), DriverError> {
    let vocab = vocab_of(logits.len(), loss.len(), targets, label_smoothing);
    assert_eq!(dlogits.len(), logits.len(), "cross_entropy_rows_bf16: shapes");
    let mut b = d.stream.launch_builder(d.function("cross_entropy_rows_bf16"));
    b.arg(logits).arg(dlogits).arg(loss).arg(&targets.view).arg(&vocab).arg(&token_weight).arg(&label_smoothing);
    // SAFETY: block r reads row r of logits and writes row r of dlogits (rows · vocab values each), reads
    // targets[r] (< vocab, checked) and writes loss[r].
    unsafe { b.launch(per_row(targets.len())) }.map(drop)
}
