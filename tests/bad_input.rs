//! Bad input gets an error that names the file, line or tensor — never a panic, never a partial output file.
mod common;
use common::{copy_dir, fixture};
use std::path::Path;
use std::process::Command;

/// Runs the binary; returns (success, stderr).
fn condlm(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_condlm")).args(args).args(["--threads", "1"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.success(), stderr)
}

fn score_err(model: &Path, data: &Path) -> String {
    let (ok, err) = condlm(&["score", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert!(!ok, "expected failure");
    err
}

/// Copies a fixture model folder into a temp dir so a test can damage it.
#[test]
fn missing_model_and_data_files_are_named() {
    let rows = fixture("score_rows.jsonl");
    let err = score_err(Path::new("/nonexistent/model.gguf"), &rows);
    assert!(err.contains("/nonexistent/model.gguf") && err.contains("no such file"), "{err}");
    let err = score_err(&fixture("tiny-llama"), Path::new("/nonexistent/rows.jsonl"));
    assert!(err.contains("/nonexistent/rows.jsonl"), "{err}");
}

#[test]
fn truncated_safetensors_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama"), tmp.path());
    let w = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let err = score_err(tmp.path(), &fixture("score_rows.jsonl"));
    assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");
}

#[test]
fn truncated_gguf_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let g = tmp.path().join("cut.gguf");
    let bytes = std::fs::read(fixture("tiny-llama-gguf/tiny-llama.gguf")).unwrap();
    for cut in [10, bytes.len() / 3, bytes.len() - 1000] {
        std::fs::write(&g, &bytes[..cut]).unwrap();
        let err = score_err(&g, &fixture("score_rows.jsonl"));
        assert!(err.contains("cut.gguf"), "cut at {cut}: {err}");
    }
}

#[test]
fn unknown_and_missing_tensors_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama"), tmp.path());
    let w = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let rename = |from: &str, to: &str| {
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            st.tensors().into_iter().map(|(n, v)| (if n == from { to.to_string() } else { n }, v)).collect();
        std::fs::write(&w, safetensors::serialize(views, None).unwrap()).unwrap();
    };
    rename("model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight_extra");
    let err = score_err(tmp.path(), &fixture("score_rows.jsonl"));
    assert!(err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("missing"), "{err}");

    // An extra tensor the model would silently ignore is refused, by name.
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let (_, v) = views[0].clone();
    views.push(("model.layers.0.self_attn.q_norm.weight".into(), v));
    std::fs::write(&w, safetensors::serialize(views, None).unwrap()).unwrap();
    let err = score_err(tmp.path(), &fixture("score_rows.jsonl"));
    assert!(err.contains("unknown tensor \"model.layers.0.self_attn.q_norm.weight\""), "{err}");
}

/// tiny-llama in a temporary folder with `key` of its tokenizer_config.json set to `value`.
fn tiny_llama_with_tokenizer_config(key: &str, value: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama"), tmp.path());
    let cfg_path = tmp.path().join("tokenizer_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg[key] = value.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    tmp
}

/// An eos_token that is not in the vocabulary is an error naming the file and the token, not a silent fallback to
/// config.json's id (which would train and score another EOS).
#[test]
fn an_eos_token_outside_the_vocabulary_is_named() {
    let tmp = tiny_llama_with_tokenizer_config("eos_token", "<|nope|>");
    let err = score_err(tmp.path(), &fixture("score_rows.jsonl"));
    assert!(err.contains("tokenizer_config.json") && err.contains("eos_token \"<|nope|>\""), "{err}");
}

/// An empty chat_template is no template (as transformers reads it): chat rows are refused saying so, not rendered
/// to nothing and reported as rows without y tokens.
#[test]
fn an_empty_chat_template_is_no_template() {
    let tmp = tiny_llama_with_tokenizer_config("chat_template", "");
    let rows = tmp.path().join("chat.jsonl");
    let chat = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#;
    std::fs::write(&rows, format!("{chat}\n")).unwrap();
    let err = score_err(tmp.path(), &rows);
    assert!(err.contains("chat.jsonl:1") && err.contains("has no chat template"), "{err}");
}

/// A thread count far above the cores (a typo: 4096 threads stall the math for minutes) is refused at once.
#[test]
fn absurd_thread_counts_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_condlm"))
        .args(["--threads", "100000", "score", "--model", "/nonexistent", "--data", "/nonexistent"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--threads 100000 is far more than"), "{err}");
}

#[test]
fn bad_jsonl_lines_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("{\"prompt\":\"a\",\"completion\":\"b\"}\n[1]\n", ":2: expected a JSON object"),
        ("{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"prompt\":\"a\"}\n", ":2: missing field \"completion\""),
        ("{\"prompt\":\"a\",\"completion\":\"b\"\n", ":1: not valid JSON"),
    ];
    for (text, want) in cases {
        let data = tmp.path().join("rows.jsonl");
        std::fs::write(&data, text).unwrap();
        let err = score_err(&fixture("tiny-llama"), &data);
        assert!(err.contains("rows.jsonl") && err.contains(want), "{err}");
    }
}

#[test]
fn unsupported_architecture_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama"), tmp.path());
    let cfg = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("LlamaForCausalLM", "MambaForCausalLM");
    std::fs::write(&cfg, text).unwrap();
    let err = score_err(tmp.path(), &fixture("score_rows.jsonl"));
    assert!(err.contains("MambaForCausalLM") && err.contains("not supported"), "{err}");
}

#[test]
fn score_writes_its_output_whole_or_not_at_all() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("scores.jsonl");
    let (ok, err) = condlm(&[
        "score",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--data",
        fixture("score_rows.jsonl").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("perplexity"), "{err}");
    let lines = std::fs::read_to_string(&out).unwrap();
    assert_eq!(lines.lines().count(), 4);
    // A failing run (bad data) leaves no output file behind.
    let out2 = tmp.path().join("scores2.jsonl");
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\":\"a\"}\n").unwrap();
    let (ok, _) = condlm(&[
        "score",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--data",
        bad.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(!ok && !out2.exists());
    // An unwritable destination is a clear error.
    let (ok, err) = condlm(&[
        "score",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--data",
        fixture("score_rows.jsonl").to_str().unwrap(),
        "--out",
        "/nonexistent-dir/scores.jsonl",
    ]);
    assert!(!ok && err.contains("/nonexistent-dir") && err.contains("not writable"), "{err}");
}

/// What users pass by mistake instead of a model or an adapter is named for what it is, with what to pass: a
/// llama.cpp LoRA GGUF, and the run folders `train` writes (the model or adapter is one level down).
#[test]
fn adapters_and_run_folders_given_in_the_wrong_place_say_what_to_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, rows) = (fixture("tiny-llama"), fixture("score_rows.jsonl"));
    let (m, r) = (model.to_str().unwrap(), rows.to_str().unwrap());
    let lora = tmp.path().join("lora.gguf");
    let adapter = fixture("interop/tiny-llama-condlm-adapter");
    let a = adapter.to_str().unwrap();
    let (ok, err) =
        condlm(&["export-gguf", "--model", m, "--adapter", a, "--lora-only", "--out", lora.to_str().unwrap()]);
    assert!(ok, "{err}");
    let err = score_err(&lora, &rows);
    assert!(err.contains("a LoRA adapter in llama.cpp's format") && err.contains("--lora"), "{err}");
    let (ok, err) = condlm(&["score", "--model", m, "--adapter", lora.to_str().unwrap(), "--data", r]);
    assert!(!ok && err.contains("a GGUF file; condlm reads adapters as PEFT folders"), "{err}");
    // The adapter's weights file instead of its folder: the folder is named.
    let weights = adapter.join("adapter_model.safetensors");
    let (ok, err) = condlm(&["score", "--model", m, "--adapter", weights.to_str().unwrap(), "--data", r]);
    assert!(!ok && err.contains(&format!("pass the folder, {}", adapter.display())), "{err}");
    // A run folder: the adapter (or the full fine-tune's model) inside it.
    let run = tmp.path().join("run");
    copy_dir(&adapter, &run.join("adapter"));
    let (ok, err) = condlm(&["score", "--model", m, "--adapter", run.to_str().unwrap(), "--data", r]);
    assert!(!ok && err.contains(&format!("an adapter in {}", run.join("adapter").display())), "{err}");
    copy_dir(&model, &run.join("model"));
    let err = score_err(&run, &rows);
    assert!(err.contains(&format!("a model in {}", run.join("model").display())), "{err}");
    // An adapter saved by PyTorch only (adapter_model.bin).
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::copy(adapter.join("adapter_config.json"), bin.join("adapter_config.json")).unwrap();
    std::fs::write(bin.join("adapter_model.bin"), b"pickle").unwrap();
    let (ok, err) = condlm(&["score", "--model", m, "--adapter", bin.to_str().unwrap(), "--data", r]);
    assert!(!ok && err.contains("only adapter_model.bin") && err.contains("safe_serialization=True"), "{err}");
}

/// A tied model (tie_word_embeddings) that also stores lm_head.weight uses the embedding, as transformers does; a
/// stored head that is not a copy of the embedding is named in a warning, since the config may be the mistake.
#[test]
fn a_tied_model_storing_a_different_output_layer_gets_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::copy_fixture("tiny-llama", &tmp.path().join("model"));
    let rows = fixture("score_rows.jsonl");
    let score = |model: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_condlm"))
            .args(["score", "--threads", "1", "--model", model.to_str().unwrap(), "--data", rows.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (tied_scores, quiet) = score(&model);
    assert!(!quiet.contains("warning"), "{quiet}");

    let weights = model.join("model.safetensors");
    let mut tensors = common::load_f32_tensors(&weights);
    let embed = tensors["model.embed_tokens.weight"].clone();
    tensors.insert("lm_head.weight".into(), embed.clone());
    common::save_f32_tensors(&weights, &tensors);
    let (scores, err) = score(&model);
    assert!(!err.contains("warning"), "a stored copy of the embedding is no news: {err}");
    assert_eq!(scores, tied_scores);

    let (shape, values) = embed;
    let other: Vec<f32> = values.chunks_exact(shape[1]).rev().flatten().copied().collect();
    tensors.insert("lm_head.weight".into(), (shape, other));
    common::save_f32_tensors(&weights, &tensors);
    let (scores, err) = score(&model);
    assert!(
        err.contains("warning") && err.contains("lm_head.weight") && err.contains("\"tie_word_embeddings\": false"),
        "{err}"
    );
    assert_eq!(scores, tied_scores, "the tied head is used, as transformers uses it");
}

/// A zero or absurd size in config.json names its key (and the GGUF one), not an internal label.
#[test]
fn a_bad_size_in_the_config_names_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::copy_fixture("tiny-llama", &tmp.path().join("model"));
    let path = model.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["num_key_value_heads"] = 0.into();
    std::fs::write(&path, config.to_string()).unwrap();
    let err = score_err(&model, &fixture("score_rows.jsonl"));
    assert!(err.contains("config.json") && err.contains("num_key_value_heads") && err.contains("is 0"), "{err}");
}
