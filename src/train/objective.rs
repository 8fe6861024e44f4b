//! The conditional objective on one micro-batch: forward, fused LM-head cross-entropy on y positions
//! only, backward. Each y token's loss is weighted by 1 / (y tokens in the whole optimizer step), so
//! gradient accumulation over micro-batches is exact.
use crate::data::example::{Example, target_rows};
use crate::kernels::grow;
use crate::kernels::lm_head::{HeadScratch, cross_entropy_backward};
use crate::network::activations::Activations;
use crate::network::batch::PackedBatch;
use crate::network::transformer::{Mode, Transformer};
use anyhow::Result;
use std::borrow::Borrow;

/// Buffers of the objective, reused across micro-batches.
#[derive(Default)]
pub struct ObjectiveScratch {
    pub acts: Activations,
    /// Activation checkpointing: keep only each block's input, recompute the rest in the backward pass.
    pub recompute_activations: bool,
    head: HeadScratch,
    dhidden: Vec<f32>,
    rows: Vec<usize>,
    targets: Vec<u32>,
    batch: PackedBatch,
}

/// Forward + backward of one micro-batch; gradients accumulate into the trainable parameters.
/// Returns Σ per-token loss over its y tokens (unweighted).
pub fn forward_backward<E: Borrow<Example>>(
    model: &mut Transformer,
    rows: &[E],
    token_weight: f32,
    label_smoothing: f32,
    s: &mut ObjectiveScratch,
    step_seed: u64,
) -> Result<f64> {
    forward_backward_with(model, rows, token_weight, label_smoothing, s, step_seed, |_, _| {})
}

/// [`forward_backward`] with `after_block` called as each block's gradients become final
/// ([`Transformer::backward_with`]).
pub fn forward_backward_with<E: Borrow<Example>>(
    model: &mut Transformer,
    rows: &[E],
    token_weight: f32,
    label_smoothing: f32,
    s: &mut ObjectiveScratch,
    step_seed: u64,
    after_block: impl FnMut(&mut Transformer, usize),
) -> Result<f64> {
    let batch = &mut s.batch;
    batch.pack(rows.iter().map(|e| &e.borrow().ids[..]));
    model.check_batch(batch)?;
    model.forward(batch, &mut s.acts, Mode::Train { step_seed, recompute: s.recompute_activations });
    target_rows(rows, batch, &mut s.rows, &mut s.targets);
    let d = model.config.hidden_size;
    let n = batch.len();
    grow(&mut s.dhidden, n * d);
    let dhidden = &mut s.dhidden[..n * d];
    dhidden.fill(0.0);
    let (head, dhead) = model.lm_head.as_mut().unwrap_or(&mut model.embed).matrix_and_grad();
    let loss = cross_entropy_backward(
        &s.acts.x[..n * d],
        d,
        head,
        &s.rows,
        &s.targets,
        token_weight,
        label_smoothing,
        dhidden,
        dhead,
        &mut s.head,
    );
    model.backward_with(batch, &mut s.acts, dhidden, after_block);
    Ok(loss)
}
