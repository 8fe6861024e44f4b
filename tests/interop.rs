//! PEFT interop both ways: an adapter condlm trained, loaded by PEFT, gives condlm's logits; an
//! adapter PEFT saved, loaded by condlm, gives PEFT's logits (fixtures: make_interop_fixtures.py and
//! make_train_fixtures.py). Also: an adapter for another base is refused by name.
mod common;
use common::{fixture, load_f32_tensors, max_abs_diff};
use condlm::formats::load::load_model;
use condlm::formats::peft::load_adapter;
use condlm::kernels::lm_head::{HeadScratch, logits};
use condlm::network::activations::Activations;
use condlm::network::batch::PackedBatch;
use condlm::network::transformer::{Mode, Transformer};

fn logits_of(model: &Transformer, ids: &[u32]) -> Vec<f32> {
    let batch = PackedBatch::new(&[ids.to_vec()]);
    let mut acts = Activations::default();
    model.forward(&batch, &mut acts, Mode::Infer);
    let d = model.config.hidden_size;
    let rows: Vec<usize> = (0..batch.len()).collect();
    logits(&acts.x[..batch.len() * d], d, model.head(), &rows, &mut HeadScratch::default())
}

fn check(model_dir: &str, adapter: &str, peft_logits: &str) {
    let mut m = load_model(fixture(model_dir).to_str().unwrap()).unwrap().model;
    load_adapter(&fixture(adapter), &mut m).unwrap();
    let want = load_f32_tensors(&fixture(peft_logits));
    for (i, (ids, _)) in common::reference_sequences(model_dir).iter().enumerate() {
        let diff = max_abs_diff(&logits_of(&m, ids), &want[&format!("logits.{i}")].1);
        assert!(diff <= 1e-4, "{adapter}: max |Δ logit| vs PEFT = {diff}");
    }
}

#[test]
fn peft_reads_condlm_adapters_as_condlm_means_them() {
    check("tiny-llama", "interop/tiny-llama-condlm-adapter", "interop/tiny-llama-peft-logits.safetensors");
    check("tiny-gpt2", "interop/tiny-gpt2-condlm-adapter", "interop/tiny-gpt2-peft-logits.safetensors");
    check("tiny-gemma3", "interop/tiny-gemma3-condlm-adapter", "interop/tiny-gemma3-peft-logits.safetensors");
    check("tiny-mistral", "interop/tiny-mistral-condlm-adapter", "interop/tiny-mistral-peft-logits.safetensors");
    check("tiny-qwen3", "interop/tiny-qwen3-condlm-adapter", "interop/tiny-qwen3-peft-logits.safetensors");
    check("tiny-smollm3", "interop/tiny-smollm3-condlm-adapter", "interop/tiny-smollm3-peft-logits.safetensors");
    // all-linear on Phi-3: one adapter on each fused qkv_proj and gate_up_proj
    check("tiny-phi3", "interop/tiny-phi3-condlm-adapter", "interop/tiny-phi3-peft-logits.safetensors");
    check("tiny-phi4", "interop/tiny-phi4-condlm-adapter", "interop/tiny-phi4-peft-logits.safetensors");
}

#[test]
fn condlm_reads_peft_adapters_as_peft_means_them() {
    check("tiny-llama", "train/tiny-llama-lora-init", "train/tiny-llama-lora-logits.safetensors");
    // The newer families' PEFT adapters (lora-init, B ≠ 0) are checked through their loss and gradients
    // against PEFT's in tests/families.rs.
}

#[test]
fn an_adapter_for_another_base_is_refused() {
    let mut m = load_model(fixture("tiny-llama").to_str().unwrap()).unwrap().model;
    let err = load_adapter(&fixture("interop/tiny-gpt2-condlm-adapter"), &mut m).unwrap_err().to_string();
    assert!(err.contains("different base model") && err.contains("transformer.h.0"), "{err}");
    // A shape mismatch on a module both models have (tiny-qwen2's adapter has the same module names as tiny-llama's).
    let mut m = load_model(fixture("tiny-gpt2").to_str().unwrap()).unwrap().model;
    let err = load_adapter(&fixture("train/tiny-llama-lora-init"), &mut m).unwrap_err().to_string();
    assert!(err.contains("different base model"), "{err}");
}
