//! Steps of the device model on the reference backend and of the CPU path on the same rows, for the tests that
//! compare the two (tests/device_model.rs, tests/device_bf16_activations.rs): `train::parity`'s, unwrapped.
use super::fixture;
use condlm::data::example::Example;
use condlm::formats::load::load_model;
use condlm::kernels::backend::host::Host;
use condlm::network::device::DeviceModel;
use condlm::network::transformer::Transformer;
use condlm::train::parity;
#[allow(unused_imports)] // each test binary uses some
pub use condlm::train::parity::{grads, probe_rows as rows, targets};

pub fn model(name: &str) -> Transformer {
    load_model(fixture(name).to_str().unwrap()).unwrap().model
}

/// LoRA on every linear layer with dropout, rank 4, B made non-zero.
pub fn with_lora(m: Transformer, dropout: f32) -> Transformer {
    with_lora_rank(m, dropout, 4)
}

pub fn with_lora_rank(m: Transformer, dropout: f32, rank: usize) -> Transformer {
    parity::with_lora(m, dropout, rank).unwrap()
}

pub fn device_step(dev: &mut DeviceModel<Host>, rows: &[Example], seed: u64, smoothing: f32) -> f64 {
    parity::device_step(dev, rows, seed, smoothing).unwrap()
}

pub fn cpu_step(m: &mut Transformer, rows: &[Example], seed: u64, smoothing: f32) -> f64 {
    parity::cpu_step(m, rows, seed, smoothing).unwrap()
}
