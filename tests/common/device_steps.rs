//! Steps of the device model on the reference backend and of the CPU path on the same rows, for the tests that
//! compare the two (tests/device_model.rs, tests/device_bf16_mlp.rs).
use super::fixture;
use condlm::data::example::{Example, target_rows};
use condlm::formats::load::load_model;
use condlm::kernels::backend::host::Host;
use condlm::network::adapters::attach;
use condlm::network::batch::PackedBatch;
use condlm::network::device::DeviceModel;
use condlm::network::lora::LoraConfig;
use condlm::network::transformer::Transformer;
use condlm::train::objective::{ObjectiveScratch, forward_backward};

pub fn model(name: &str) -> Transformer {
    load_model(fixture(name).to_str().unwrap()).unwrap().model
}

/// Ragged rows with x and y parts, some longer than Mistral's window.
pub fn rows(vocab: u32) -> Vec<Example> {
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

/// LoRA on every linear layer with dropout, B made non-zero so that A's gradients and the dropout masks matter.
pub fn with_lora(m: Transformer, dropout: f32) -> Transformer {
    with_lora_rank(m, dropout, 4)
}

/// [`with_lora`] at rank `rank` (alpha 2·rank).
pub fn with_lora_rank(mut m: Transformer, dropout: f32, rank: usize) -> Transformer {
    let targets = vec!["all-linear".into()];
    let cfg = LoraConfig { rank, alpha: 2.0 * rank as f32, dropout, rslora: false, targets };
    attach(&mut m, &cfg, 7).unwrap();
    for (k, p) in m.params_mut().into_iter().enumerate() {
        if p.name.contains("lora_B") {
            p.data.iter_mut().enumerate().for_each(|(i, v)| *v = ((i * 7 + k) % 13) as f32 * 0.01 - 0.06);
        }
    }
    m
}

/// Every trainable tensor's gradient, by name.
pub fn grads(m: &mut Transformer) -> Vec<(String, Vec<f32>)> {
    m.params_mut().into_iter().filter_map(|p| p.grad.as_ref().map(|g| (p.name.clone(), g.clone()))).collect()
}

/// The device model's step: forward, loss, backward; returns the loss per y token and leaves the gradients on
/// the device.
pub fn device_step(dev: &mut DeviceModel<Host>, rows: &[Example], seed: u64, smoothing: f32) -> f64 {
    let batch = PackedBatch::new(&rows.iter().map(|e| e.ids.clone()).collect::<Vec<_>>());
    let (sel, t) = targets(rows, &batch);
    dev.forward(&batch, Some(seed)).unwrap();
    dev.loss_backward(&sel, &t, 1.0 / t.len() as f32, smoothing).unwrap() / t.len() as f64
}

pub fn cpu_step(m: &mut Transformer, rows: &[Example], seed: u64, smoothing: f32) -> f64 {
    let total: usize = rows.iter().map(Example::n_targets).sum();
    let mut s = ObjectiveScratch::default();
    forward_backward(m, rows, 1.0 / total as f32, smoothing, &mut s, seed).unwrap() / total as f64
}
