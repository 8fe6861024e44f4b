//! Gradients of the conditional objective against PyTorch autograd (fixtures from
//! tests/fixtures/make_train_fixtures.py): LoRA on every linear layer and full fine-tuning, on a
//! y-masked batch of ragged rows, for tiny Llama, Qwen2 and GPT-2. Relative error ≤ 1e-4 per tensor.
mod common;
use common::{fixture, load_f32_tensors, rel_err};
use condlm::data::example::Example;
use condlm::formats::load::load_model;
use condlm::formats::peft::load_adapter;
use condlm::formats::weights::{is_gpt2_conv1d, transpose};
use condlm::network::adapters::set_full_finetune;
use condlm::network::transformer::Transformer;
use condlm::train::objective::{ObjectiveScratch, forward_backward};

const MODELS: &[&str] = &["tiny-llama", "tiny-qwen2", "tiny-gpt2"];

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("train/expected.json")).unwrap()).unwrap()
}

fn batch_rows(exp: &serde_json::Value, model: &str) -> Vec<Example> {
    exp["batch"][model]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            Example::pair(
                r["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect(),
                r["n_prompt_tokens"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

/// Runs forward+backward over the whole batch; returns the step loss.
fn run(model: &mut Transformer, rows: &[Example], label_smoothing: f32) -> f64 {
    let total: usize = rows.iter().map(Example::n_targets).sum();
    let mut s = ObjectiveScratch::default();
    forward_backward(model, rows, 1.0 / total as f32, label_smoothing, &mut s, 0).unwrap() / total as f64
}

fn check_grads(model: &mut Transformer, grads_file: &str, key_prefix: &str, what: &str) {
    let want = load_f32_tensors(&fixture(&format!("train/{grads_file}")));
    let mut seen = 0;
    for p in model.params_mut() {
        let Some(g) = &p.grad else { continue };
        let key = format!("{key_prefix}{}", p.name);
        let (shape, w) = want.get(&key).unwrap_or_else(|| panic!("{what}: no reference gradient for {key}"));
        // GPT-2 Conv1D weights are (in, out) in PyTorch, (out, in) here.
        let w =
            if is_gpt2_conv1d(&p.name) && p.lora_free_name() { transpose(w, shape[0], shape[1]) } else { w.clone() };
        let e = rel_err(g, &w);
        if e > 1e-4 {
            eprintln!("{key}: ours {:?} want {:?}", &g[..4], &w[..4]);
        }
        assert!(e <= 1e-4, "{what}: {key} relative error {e:e}");
        seen += 1;
    }
    let expected_count = want.keys().filter(|k| *k != "loss").count();
    assert_eq!(seen, expected_count, "{what}: trainable tensors vs reference gradients");
}

trait LoraFree {
    fn lora_free_name(&self) -> bool;
}
impl LoraFree for condlm::network::param::Param {
    fn lora_free_name(&self) -> bool {
        !self.name.contains(".lora_")
    }
}

#[test]
fn lora_gradients_match_pytorch_peft() {
    let exp = expected();
    for name in MODELS {
        let mut m = load_model(fixture(name).to_str().unwrap()).unwrap().model;
        load_adapter(&fixture(&format!("train/{name}-lora-init")), &mut m).unwrap();
        let rows = batch_rows(&exp, name);
        let loss = run(&mut m, &rows, 0.0);
        let want = exp["models"][name]["loss"].as_f64().unwrap();
        assert!((loss - want).abs() / want < 1e-5, "{name}: loss {loss} vs {want}");
        check_grads(&mut m, &format!("{name}-lora-grads.safetensors"), "base_model.model.", name);
    }
}

#[test]
fn lora_gradients_with_label_smoothing_match_pytorch() {
    let exp = expected();
    let mut m = load_model(fixture("tiny-llama").to_str().unwrap()).unwrap().model;
    load_adapter(&fixture("train/tiny-llama-lora-init"), &mut m).unwrap();
    let loss = run(&mut m, &batch_rows(&exp, "tiny-llama"), 0.1);
    let want = exp["models"]["tiny-llama"]["label_smoothing"]["loss"].as_f64().unwrap();
    assert!((loss - want).abs() / want < 1e-5, "loss {loss} vs {want}");
    check_grads(&mut m, "tiny-llama-lora-grads-ls.safetensors", "base_model.model.", "label smoothing");
}

#[test]
fn full_finetune_gradients_match_pytorch() {
    let exp = expected();
    for name in MODELS {
        let mut m = load_model(fixture(name).to_str().unwrap()).unwrap().model;
        set_full_finetune(&mut m, false);
        let loss = run(&mut m, &batch_rows(&exp, name), 0.0);
        let want = exp["models"][name]["full"]["loss"].as_f64().unwrap();
        assert!((loss - want).abs() / want < 1e-5, "{name}: loss {loss} vs {want}");
        check_grads(&mut m, &format!("{name}-full-grads.safetensors"), "", name);
    }
}
