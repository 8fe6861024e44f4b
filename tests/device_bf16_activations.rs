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
use common::{copy_dir, fixture, rel_err};
use condlm::formats::load::load_model;
use condlm::kernels::backend::host::{Host, set_bf16_activations};
use condlm::kernels::compute::{Compute, set_compute};
use condlm::network::adapters::set_full_finetune;
use condlm::network::device::DeviceModel;
use condlm::network::transformer::Transformer;

/// The gated-MLP fixtures (SwiGLU; Qwen2 with q/k/v biases; Mistral's window; Gemma 3's GeGLU and post norms;
/// Qwen3.5's Gated DeltaNet projections and gated attention).
const MODELS: &[&str] = &["tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-gemma3", "tiny-qwen35"];

/// tiny Llama with heads of 8 features instead of 16 — q, k, v keep their first half, o the matching columns — so
/// that the hidden size (64) exceeds the attention's width (4 × 8): the normed inputs' gradients, not attention's
/// output, are then the widest f32 input gradient of LoRA's dropout scratch.
fn narrow_heads(dir: &std::path::Path) -> Transformer {
    copy_dir(&fixture("tiny-llama"), dir);
    let config =
        std::fs::read_to_string(dir.join("config.json")).unwrap().replace("\"head_dim\": 16", "\"head_dim\": 8");
    std::fs::write(dir.join("config.json"), config).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
    for (name, v) in st.tensors() {
        let (shape, data) = (v.shape().to_vec(), v.data());
        let (rows, cols) = (shape[0], shape.get(1).copied().unwrap_or(1));
        let keep = |r: usize, c: usize| -> Vec<u8> {
            (0..r).flat_map(|i| data[i * cols * 4..(i * cols + c) * 4].to_vec()).collect()
        };
        let narrowed = match name.rsplit('.').nth(1) {
            Some("q_proj" | "k_proj" | "v_proj") => (vec![rows / 2, cols], keep(rows / 2, cols)),
            Some("o_proj") => (vec![rows, cols / 2], keep(rows, cols / 2)),
            _ => (shape, data.to_vec()),
        };
        tensors.push((name, narrowed.0, narrowed.1));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    let m = load_model(dir.to_str().unwrap()).unwrap().model;
    assert!(m.config.hidden_size > m.config.num_heads * m.config.head_dim, "narrow heads: {:?}", m.config.head_dim);
    m
}

/// One step of `cpu` on the device model and on the CPU path, on `copies` copies of the test rows (32 tokens
/// each); returns the worst relative error of a gradient.
fn worst_gradient(name: &str, what: &str, mut cpu: Transformer, mut copy: Transformer, copies: usize) -> f64 {
    let base = rows(cpu.config.vocab_size as u32);
    let rows: Vec<_> = (0..copies).flat_map(|_| base.clone()).collect();
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
            let worst =
                worst_gradient(name, &what, with_lora(model(name), dropout), with_lora(model(name), dropout), 1);
            assert!(worst > 1e-4, "{name} {what}: gradients within {worst:e} of the CPU path's: no bf16 rounding");
        }
        let full = || {
            let mut m = model(name);
            set_full_finetune(&mut m, true);
            m
        };
        let worst = worst_gradient(name, "full fine-tuning", full(), full(), 1);
        assert!(worst > 1e-4, "{name} full: gradients within {worst:e} of the CPU path's: no bf16 rounding");
    }
    let dir = tempfile::tempdir().unwrap();
    let narrow = || with_lora(narrow_heads(dir.path()), 0.1);
    // 64 tokens, the buffers' whole capacity (a multiple of 64 rows): a scratch sized by attention's width (32)
    // would be half what the normed inputs' gradients (64) need.
    let worst = worst_gradient("tiny-llama, heads of 8", "LoRA, dropout 0.1", narrow(), narrow(), 2);
    assert!(worst > 1e-4, "narrow heads: gradients within {worst:e} of the CPU path's: no bf16 rounding");
}
