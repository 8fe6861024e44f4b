//! The families beyond Llama/Qwen2/GPT-2 against transformers and PyTorch autograd on tiny random checkpoints
//! (tests/fixtures/make_family_fixtures.py): Qwen3 (per-head q/k RMSNorm before RoPE, head_dim ≠ hidden / heads),
//! SmolLM3 (layers without RoPE), Gemma 3 ((1 + w) norms, four per block, GeGLU, scaled embeddings and queries,
//! sliding and global layers with their own RoPE bases) and Mistral (a sliding window on every layer), every row
//! longer than the windows: logits, LoRA (every linear layer) and full fine-tuning gradients; Qwen3 also through
//! GGUF export.
mod common;
use common::{condlm, expected_json, fixture, load_f32_tensors, max_abs_diff, reference_sequences, rel_err};
use condlm::data::example::Example;
use condlm::formats::load::load_model;
use condlm::formats::peft::load_adapter;
use condlm::kernels::lm_head::{HeadScratch, logits};
use condlm::network::activations::Activations;
use condlm::network::adapters::set_full_finetune;
use condlm::network::batch::PackedBatch;
use condlm::network::transformer::{Mode, Transformer};
use condlm::train::objective::{ObjectiveScratch, forward_backward};

const FAMILIES: [&str; 4] = ["tiny-qwen3", "tiny-smollm3", "tiny-gemma3", "tiny-mistral"];

fn model(name: &str) -> Transformer {
    load_model(fixture(name).to_str().unwrap()).unwrap().model
}

fn rows(name: &str) -> Vec<Example> {
    let exp = expected_json(name);
    let rows = exp["rows"].as_array().unwrap().iter().map(|r| {
        let ids = r["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        Example::pair(ids, r["n_prompt_tokens"].as_u64().unwrap() as usize)
    });
    rows.collect()
}

#[test]
fn configs_read_the_family_features() {
    let q = model("tiny-qwen3");
    assert!(q.config.qk_norm && q.config.head_dim == 32 && q.blocks[0].qk_norm.is_some());
    let s = model("tiny-smollm3");
    assert_eq!((0..4).map(|i| s.config.rope_in(i)).collect::<Vec<_>>(), [true, false, true, false]);
    let g = model("tiny-gemma3").config;
    assert_eq!((0..4).map(|i| g.window(i)).collect::<Vec<_>>(), [Some(4), Some(4), None, Some(4)]);
    assert_eq!((0..4).map(|i| g.local_rope(i)).collect::<Vec<_>>(), [true, true, false, true]);
    assert!(g.norm_plus_one && g.sandwich_norms && g.scale_embeddings && g.qk_norm && g.tie_embeddings);
    assert_eq!((g.head_dim, g.rope_theta, g.rope_local_theta), (32, 1e6, Some(1e4)));
    assert_eq!(g.attn_scale, Some((24f64).powf(-0.5) as f32));
    let m = model("tiny-mistral").config;
    assert_eq!((m.window(0), m.window(1)), (Some(4), Some(4)));
    let (ok, out, err) = condlm(&["info", fixture("tiny-gemma3").to_str().unwrap()]);
    assert!(ok, "{err}");
    for line in [
        "sliding window of 4 positions on 3 of 4 layers (global: 2), q·k scaled by",
        "RoPE base 1000000 (sliding layers: 10000)",
        "GeGLU (tanh GELU) MLP, 4 RMSNorms per block",
        "head dim 32, per-head q/k RMSNorm",
    ] {
        assert!(out.contains(line), "info lacks {line:?}:\n{out}");
    }
    for name in FAMILIES {
        // every tensor of the checkpoint, counted from the config (the memory plan relies on it)
        let stored: usize =
            load_f32_tensors(&fixture(&format!("{name}/model.safetensors"))).values().map(|(_, v)| v.len()).sum();
        assert_eq!(model(name).config.num_parameters(), stored, "{name}");
    }
}

#[test]
fn logits_match_transformers() {
    for name in FAMILIES {
        let m = model(name);
        let d = m.config.hidden_size;
        for (ids, want) in reference_sequences(name) {
            let batch = PackedBatch::new(std::slice::from_ref(&ids));
            let mut acts = Activations::default();
            m.forward(&batch, &mut acts, Mode::Infer);
            let all: Vec<usize> = (0..ids.len()).collect();
            let got = logits(&acts.x[..ids.len() * d], d, m.head(), &all, &mut HeadScratch::default());
            let diff = max_abs_diff(&got, &want);
            assert!(diff <= 1e-4, "{name}: max |Δ logit| {diff}");
        }
    }
}

/// Forward + backward over the fixture rows with PyTorch's weighting (1 / Σ targets); the step loss.
fn step(m: &mut Transformer, name: &str) -> f64 {
    let rows = rows(name);
    let total: usize = rows.iter().map(Example::n_targets).sum();
    let mut s = ObjectiveScratch::default();
    forward_backward(m, &rows, 1.0 / total as f32, 0.0, &mut s, 0).unwrap() / total as f64
}

fn check_grads(m: &mut Transformer, file: &str, prefix: &str, want_loss: f64, loss: f64) {
    assert!((loss - want_loss).abs() / want_loss < 1e-5, "{file}: loss {loss} vs {want_loss}");
    let want = load_f32_tensors(&fixture(file));
    let mut seen = 0;
    for p in m.params_mut() {
        let Some(g) = &p.grad else { continue };
        let key = format!("{prefix}{}", p.name);
        let (_, w) = want.get(&key).unwrap_or_else(|| panic!("{file}: no reference gradient for {key}"));
        let e = rel_err(g, w);
        assert!(e <= 1e-4, "{file}: {key} relative error {e:e}");
        seen += 1;
    }
    assert_eq!(seen, want.len() - 1, "{file}: trainable tensors vs reference gradients");
}

#[test]
fn lora_and_full_gradients_match_pytorch() {
    for name in FAMILIES {
        let exp = expected_json(name);
        let mut m = model(name);
        load_adapter(&fixture(&format!("{name}/lora-init")), &mut m).unwrap();
        let loss = step(&mut m, name);
        let file = format!("{name}/lora-grads.safetensors");
        check_grads(&mut m, &file, "base_model.model.", exp["lora_loss"].as_f64().unwrap(), loss);

        let mut m = model(name);
        set_full_finetune(&mut m, false);
        let loss = step(&mut m, name);
        let file = format!("{name}/full-grads.safetensors");
        check_grads(&mut m, &file, "", exp["full_loss"].as_f64().unwrap(), loss);
    }
}

#[test]
fn qwen3_gguf_export_keeps_the_model_and_smollm3_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny-qwen3.gguf");
    let model = fixture("tiny-qwen3");
    let (ok, _, err) =
        condlm(&["export-gguf", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--type", "f32"]);
    assert!(ok, "{err}");
    let g = condlm::formats::gguf::file::GgufFile::open(&out).unwrap();
    assert_eq!(g.get_str("general.architecture").unwrap(), "qwen3");
    assert!(g.tensor("blk.1.attn_k_norm.weight").is_some());
    let data = fixture("score_rows.jsonl");
    let score = |m: &str| condlm(&["score", "--model", m, "--data", data.to_str().unwrap()]).1;
    assert_eq!(score(out.to_str().unwrap()), score(model.to_str().unwrap()));
    let smol = fixture("tiny-smollm3");
    let (ok, _, err) =
        condlm(&["export-gguf", "--model", smol.to_str().unwrap(), "--out", out.to_str().unwrap(), "--overwrite"]);
    assert!(!ok && err.contains("no_rope_layers"), "{err}");
}
