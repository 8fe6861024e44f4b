//! The device model's bf16 activations — what `--device cuda --compute bf16` runs: the blocks' normed inputs, gate,
//! up, act(gate)·up and their gradients kept in bf16, every product reading or writing one a bf16 product —
//! composed on the reference backend with that path switched on (`host::set_bf16_activations`). Against the CPU
//! path's `--compute bf16` gradients (f32 activations): every trainable tensor within 5e-2 relative — what bf16 itself
//! moves these fixtures' gradients by (the CPU's bf16 against its f32 reaches 3.4e-2: Gemma 3's q_proj lora_A; a
//! LoRA A gradient sums products of few rows that partly cancel), while a term left out, added twice or taken from
//! the wrong buffer shows as an error of order 1 — and off them by more than the 1e-5 of another summation order
//! (tests/device_model.rs), so the bf16 path was taken. One test in its own process: the switch and `--compute` are
//! process-wide.
mod common;
use common::device_steps::{cpu_step, device_step, grads, model, rows, with_lora};
use common::rel_err;
use condlm::kernels::backend::host::{Host, set_bf16_activations};
use condlm::kernels::compute::{Compute, set_compute};
use condlm::network::adapters::set_full_finetune;
use condlm::network::device::DeviceModel;
use condlm::network::transformer::Transformer;

/// The gated-MLP fixtures (SwiGLU; Qwen2 with q/k/v biases; Mistral's window; Gemma 3's GeGLU and post norms).
const MODELS: &[&str] = &["tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-gemma3"];

/// One step of `cpu` on the device model and on the CPU path; returns the worst relative error of a gradient.
fn worst_gradient(name: &str, what: &str, mut cpu: Transformer, mut copy: Transformer) -> f64 {
    let rows = rows(cpu.config.vocab_size as u32);
    let mut dev = DeviceModel::new(Host, &cpu).unwrap();
    let (want_loss, loss) = (cpu_step(&mut cpu, &rows, 5, 0.0), device_step(&mut dev, &rows, 5, 0.0));
    assert!((loss - want_loss).abs() / want_loss < 1e-2, "{name} {what}: loss {loss} vs CPU {want_loss}");
    dev.download_into(&mut copy, true).unwrap();
    let (got, want) = (grads(&mut copy), grads(&mut cpu));
    assert_eq!(got.len(), want.len(), "{name} {what}: trainable tensors");
    let mut worst = 0.0f64;
    for ((n, g), (_, w)) in got.iter().zip(&want) {
        let e = rel_err(g, w);
        assert!(e < 5e-2, "{name} {what}: {n} gradient off the CPU path's by {e:e}");
        worst = worst.max(e);
    }
    eprintln!("{name} {what}: worst gradient {worst:e}, loss {loss} vs {want_loss}");
    worst
}

#[test]
fn bf16_activation_gradients_stay_within_bf16_rounding_of_the_cpu_path() {
    set_compute(Compute::Bf16);
    set_bf16_activations(true);
    for name in MODELS {
        for dropout in [0.1, 0.0] {
            let what = format!("LoRA, dropout {dropout}");
            let worst = worst_gradient(name, &what, with_lora(model(name), dropout), with_lora(model(name), dropout));
            assert!(worst > 1e-4, "{name} {what}: gradients within {worst:e} of the CPU path's: no bf16 rounding");
        }
        let full = || {
            let mut m = model(name);
            set_full_finetune(&mut m, true);
            m
        };
        let worst = worst_gradient(name, "full fine-tuning", full(), full());
        assert!(worst > 1e-4, "{name} full: gradients within {worst:e} of the CPU path's: no bf16 rounding");
    }
}
