//! One training step of the device model beside the CPU path's on the same rows, and the rows and adapters that
//! make such a comparison sensitive: what `condlm info MODEL --check-device` runs on a GPU and the device tests run
//! on the reference backend (tests/device_model.rs).
use crate::data::example::{Example, target_rows};
use crate::kernels::backend::Backend;
use crate::network::adapters::attach;
use crate::network::batch::PackedBatch;
use crate::network::device::DeviceModel;
use crate::network::lora::LoraConfig;
use crate::network::transformer::Transformer;
use crate::train::objective::{ObjectiveScratch, forward_backward};
use anyhow::Result;

/// Ragged rows with x and y parts of tokens below `vocab`, some longer than Mistral's window of 4 (and than a
/// Qwen3.5 chunk's first rows), none past 16 positions (Phi-4's LongRoPE switches sets there).
pub fn probe_rows(vocab: u32) -> Vec<Example> {
    let row = |len: u32, y_start: usize, salt: u32| {
        Example::pair((0..len).map(|i| (i * 37 + salt * 11 + 3) % vocab).collect(), y_start)
    };
    vec![row(9, 4, 1), row(3, 1, 2), row(14, 6, 3), row(6, 5, 4)]
}

/// The LM head's inputs of a batch: selected rows and their next tokens.
pub fn targets(rows: &[Example], batch: &PackedBatch) -> (Vec<usize>, Vec<u32>) {
    let (mut sel, mut t) = (vec![], vec![]);
    target_rows(rows, batch, &mut sel, &mut t);
    (sel, t)
}

/// LoRA of rank `rank` (alpha 2·rank) on every linear layer with `dropout`, B made non-zero (it starts at zero)
/// so that the adapters change the logits and A's gradients and the dropout masks matter.
pub fn with_lora(mut m: Transformer, dropout: f32, rank: usize) -> Result<Transformer> {
    let targets = vec!["all-linear".into()];
    let cfg = LoraConfig { rank, alpha: 2.0 * rank as f32, dropout, rslora: false, targets };
    attach(&mut m, &cfg, 7)?;
    for (k, p) in m.params_mut().into_iter().enumerate() {
        if p.name.contains("lora_B") {
            p.data.iter_mut().enumerate().for_each(|(i, v)| *v = ((i * 7 + k) % 13) as f32 * 0.01 - 0.06);
        }
    }
    Ok(m)
}

/// Every trainable tensor's gradient, by name.
pub fn grads(m: &mut Transformer) -> Vec<(String, Vec<f32>)> {
    m.params_mut().into_iter().filter_map(|p| p.grad.as_ref().map(|g| (p.name.clone(), g.clone()))).collect()
}

/// The device model's step: forward, loss, backward; returns the loss per y token and leaves the gradients on
/// the device.
pub fn device_step<B: Backend>(dev: &mut DeviceModel<B>, rows: &[Example], seed: u64, smoothing: f32) -> Result<f64> {
    let batch = PackedBatch::new(&rows.iter().map(|e| e.ids.clone()).collect::<Vec<_>>());
    let (sel, t) = targets(rows, &batch);
    dev.forward(&batch, Some(seed))?;
    Ok(dev.loss_backward(&sel, &t, 1.0 / t.len() as f32, smoothing)? / t.len() as f64)
}

/// The CPU path's step on the same rows: the loss per y token; the gradients are left in `m`.
pub fn cpu_step(m: &mut Transformer, rows: &[Example], seed: u64, smoothing: f32) -> Result<f64> {
    let total: usize = rows.iter().map(Example::n_targets).sum();
    let mut s = ObjectiveScratch::default();
    Ok(forward_backward(m, rows, 1.0 / total as f32, smoothing, &mut s, seed)? / total as f64)
}
