//! `condlm export-gguf` against independent references: the GGUF that llama.cpp's converter layout gives for
//! tiny-llama (tests/fixtures/tiny-llama-gguf, written by gguf-py in make_fixtures.py), the source model's
//! scores, and the adapter's merged weights.
mod common;

use common::{assert_rows_close, condlm, fixture, fixture_row_scores};
use condlm::formats::gguf::file::GgufFile;
use condlm::formats::gguf::quantize::quantize;
use condlm::kernels::dequant::{GgmlType, dequantize_to_vec};
use std::path::Path;

/// A scratch folder for one test, deleted when the test ends (pass or fail).
fn out_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("condlm-gguf-export-{name}-")).tempdir().unwrap()
}

fn export(args: &[&str]) -> String {
    let (ok, _, err) = condlm(&[&["export-gguf"], args].concat());
    assert!(ok, "export-gguf {args:?} failed: {err}");
    err
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn hf_folder_exports_as_llama_cpp_converter_writes_it() {
    let scratch = out_dir("converter");
    let d = scratch.path();
    let out = d.join("tiny-llama.gguf");
    export(&["--model", p(&fixture("tiny-llama")), "--out", p(&out), "--type", "f32", "--name", "tiny-llama"]);
    let ours = GgufFile::open(&out).unwrap();
    let theirs = GgufFile::open(&fixture("tiny-llama-gguf/tiny-llama.gguf")).unwrap();
    assert_eq!(ours.metadata, theirs.metadata, "metadata differs from the converter's");
    assert_eq!(ours.tensors.len(), theirs.tensors.len());
    for t in &theirs.tensors {
        let o = ours.require_tensor(&t.name).unwrap();
        assert_eq!((o.dims.clone(), o.ty), (t.dims.clone(), GgmlType::F32), "{}", t.name);
        let ours_f32 = ours.tensor_bytes(o).unwrap();
        let expected = match t.ty {
            // the fixture stores ffn_up as F16 / Q8_0: our values quantized so must be its bytes
            GgmlType::F32 => ours_f32.to_vec(),
            ty => {
                let v: Vec<f32> = ours_f32.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
                quantize(ty, &v).unwrap()
            }
        };
        assert!(expected == theirs.tensor_bytes(t).unwrap(), "tensor {} differs from the converter's", t.name);
    }
}

#[test]
fn exported_models_score_like_their_source() {
    let scratch = out_dir("roundtrip");
    let d = scratch.path();
    for (src, model) in [
        ("tiny-llama", fixture("tiny-llama")),
        ("tiny-llama-gguf", fixture("tiny-llama-gguf/tiny-llama.gguf")),
        ("tiny-qwen2", fixture("tiny-qwen2")),
        ("tiny-gpt2", fixture("tiny-gpt2")),
    ] {
        let reference = fixture_row_scores(p(&model), None);
        let out = d.join(format!("{src}.gguf"));
        export(&["--model", p(&model), "--out", p(&out), "--type", "f32"]);
        assert_rows_close(&fixture_row_scores(p(&out), None), &reference, 1e-6, src);
        export(&["--model", p(&model), "--out", p(&out), "--type", "bf16", "--overwrite"]);
        assert_rows_close(&fixture_row_scores(p(&out), None), &reference, 2e-2, &format!("{src} bf16"));
    }
}

#[test]
fn merged_export_scores_like_base_plus_adapter_and_the_gguf_adapter_holds_the_delta() {
    let scratch = out_dir("adapter");
    let d = scratch.path();
    for name in ["tiny-llama", "tiny-gpt2"] {
        let base = fixture(name);
        let adapter = fixture(&format!("interop/{name}-condlm-adapter"));
        let with_adapter = fixture_row_scores(p(&base), Some(&adapter));
        let merged = d.join(format!("{name}-merged.gguf"));
        let a = ["--adapter", p(&adapter), "--ignore-base-mismatch"];
        export(&[&["--model", p(&base), "--out", p(&merged), "--type", "f32"][..], &a].concat());
        assert_rows_close(&fixture_row_scores(p(&merged), None), &with_adapter, 1e-5, name);

        // llama.cpp applies W + (alpha / r)·B·A with A = lora_a (ne [in, r]) and B = lora_b (ne [r, out])
        let base_gguf = d.join(format!("{name}-base.gguf"));
        export(&["--model", p(&base), "--out", p(&base_gguf), "--type", "f32"]);
        let lora = d.join(format!("{name}-lora.gguf"));
        let msg = export(&[&["--model", p(&base), "--out", p(&lora), "--lora-only", "--type", "f32"][..], &a].concat());
        assert!(msg.contains("LoRA adapter"), "{msg}");
        let (base_g, merged_g, lora_g) =
            (GgufFile::open(&base_gguf).unwrap(), GgufFile::open(&merged).unwrap(), GgufFile::open(&lora).unwrap());
        assert_eq!(lora_g.get_str("general.type").unwrap(), "adapter");
        assert_eq!(lora_g.get_str("adapter.type").unwrap(), "lora");
        let alpha = lora_g.get_f32("adapter.lora.alpha").unwrap();
        let mut checked = 0;
        for t in lora_g.tensors.iter().filter(|t| t.name.ends_with(".lora_a")) {
            let w = t.name.trim_end_matches(".lora_a");
            let b_info = lora_g.require_tensor(&format!("{w}.lora_b")).unwrap();
            let (inp, r, out) = (t.dims[0] as usize, t.dims[1] as usize, b_info.dims[1] as usize);
            assert_eq!(b_info.dims[0] as usize, r, "{w}");
            let (a_v, b_v) = (lora_g.tensor_f32(&t.name).unwrap(), lora_g.tensor_f32(&b_info.name).unwrap());
            let (w0, w1) = (base_g.tensor_f32(w).unwrap(), merged_g.tensor_f32(w).unwrap());
            assert_eq!(w0.len(), inp * out, "{w}");
            let mut max_err = 0f32;
            for o in 0..out {
                for i in 0..inp {
                    let delta: f32 = (0..r).map(|k| b_v[o * r + k] * a_v[k * inp + i]).sum::<f32>() * alpha / r as f32;
                    max_err = max_err.max((w0[o * inp + i] + delta - w1[o * inp + i]).abs());
                }
            }
            assert!(max_err < 1e-5, "{name} {w}: base + adapter differs from the merged matrix by {max_err}");
            checked += 1;
        }
        assert!(checked >= 4, "{name}: only {checked} adapted matrices");
    }
}

#[test]
fn quantized_types_hold_llama_cpp_blocks_of_the_same_values() {
    let scratch = out_dir("types");
    let d = scratch.path();
    let model = fixture("tiny-llama");
    let f32_file = d.join("f32.gguf");
    export(&["--model", p(&model), "--out", p(&f32_file), "--type", "f32"]);
    let reference = GgufFile::open(&f32_file).unwrap();
    for (ty, matrix_ty) in [("q8_0", GgmlType::Q8_0), ("q4_0", GgmlType::Q4_0), ("q4_k", GgmlType::Q5_0)] {
        let out = d.join(format!("{ty}.gguf"));
        export(&["--model", p(&model), "--out", p(&out), "--type", ty]);
        let g = GgufFile::open(&out).unwrap();
        for t in &g.tensors {
            let r = reference.require_tensor(&t.name).unwrap();
            let values = reference.tensor_f32(&t.name).unwrap();
            let want = match (t.dims.len(), t.name.as_str()) {
                (1, _) => GgmlType::F32,
                // tied: the embedding is the output matrix, Q6_K below 8 bits, Q8_0 when 64 columns cannot
                (_, "token_embd.weight") if ty != "q8_0" => GgmlType::Q8_0,
                _ => matrix_ty,
            };
            assert_eq!((t.ty, &t.dims), (want, &r.dims), "{ty} {}", t.name);
            assert!(quantize(want, &values).unwrap() == g.tensor_bytes(t).unwrap(), "{ty} {}", t.name);
            let back = dequantize_to_vec(want, g.tensor_bytes(t).unwrap()).unwrap();
            assert_eq!(back.len(), values.len());
        }
    }
}

#[test]
fn modelfile_and_refusals() {
    let scratch = out_dir("modelfile");
    let d = scratch.path();
    let model = fixture("tiny-llama");
    let out = d.join("m.gguf");
    let msg = export(&["--model", p(&model), "--out", p(&out), "--modelfile"]);
    assert!(msg.contains("ollama create"), "{msg}");
    let mf = std::fs::read_to_string(d.join("Modelfile")).unwrap();
    assert!(mf.contains("FROM ./m.gguf") && mf.contains("<|im_start|>{{ .Role }}"), "{mf}");
    assert!(mf.contains("PARAMETER stop \"<|im_end|>\""), "{mf}");

    let before = std::fs::read(&out).unwrap();
    let (ok, _, err) = condlm(&["export-gguf", "--model", p(&model), "--out", p(&out)]);
    assert!(!ok && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before, "a refused export must leave the file alone");

    let gguf = fixture("tiny-llama-gguf/tiny-llama.gguf");
    let (ok, _, err) = condlm(&["export-gguf", "--model", p(&gguf), "--out", p(&gguf), "--overwrite"]);
    assert!(!ok && err.contains("input"), "{err}");

    let adapter = fixture("interop/tiny-llama-condlm-adapter");
    let lora = d.join("lora.gguf");
    let args = ["export-gguf", "--model", p(&model), "--adapter", p(&adapter), "--lora-only", "--out", p(&lora)];
    let (ok, _, err) = condlm(&[&args[..], &["--type", "q4_0", "--ignore-base-mismatch"]].concat());
    assert!(!ok && err.contains("F32, F16 or BF16"), "{err}");
    assert!(!lora.exists(), "a failed export must not leave a file");

    let (ok, _, err) = condlm(&["export-gguf", "--model", p(&model), "--out", p(&d.join("x.gguf")), "--lora-only"]);
    assert!(!ok && err.contains("--adapter"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "only m.gguf and Modelfile may exist: {leftovers:?}");
}

#[test]
fn merging_into_a_quantized_base_warns_when_the_output_is_no_finer() {
    let scratch = out_dir("requantize");
    let d = scratch.path();
    let base = d.join("base-q4_0.gguf");
    export(&["--model", p(&fixture("tiny-llama")), "--out", p(&base), "--type", "q4_0"]);
    let adapter = fixture("interop/tiny-llama-condlm-adapter");
    let merged = |ty: &str| {
        let out = d.join(format!("merged-{ty}.gguf"));
        export(&[
            "--model",
            p(&base),
            "--adapter",
            p(&adapter),
            "--ignore-base-mismatch",
            "--out",
            p(&out),
            "--type",
            ty,
        ])
    };
    let msg = merged("q4_0");
    assert!(msg.contains("warning") && msg.contains("snaps back") && msg.contains("--lora-only"), "{msg}");
    assert!(!merged("q8_0").contains("quantization step"));
    assert!(!merged("f16").contains("quantization step"));
}

/// A model that attends within a sliding window (Mistral v0.1's) exports, as llama.cpp's converter writes it, but
/// not silently: the GGUF attends over the whole context, so the export says up to which length it agrees.
#[test]
fn a_sliding_window_model_exports_with_a_warning() {
    let scratch = out_dir("window");
    let d = scratch.path();
    let msg = export(&["--model", p(&fixture("tiny-mistral")), "--out", p(&d.join("m.gguf")), "--type", "f32"]);
    assert!(msg.contains("warning") && msg.contains("sliding window of 4 positions"), "{msg}");
    let msg = export(&["--model", p(&fixture("tiny-llama")), "--out", p(&d.join("l.gguf")), "--type", "f32"]);
    assert!(!msg.contains("sliding window"), "{msg}");
}

#[test]
fn tokenizer_pre_names_a_pre_tokenizer_llama_cpp_knows_and_the_tokenizer_uses() {
    let scratch = out_dir("tokenizer-pre");
    let d = scratch.path();
    let model = fixture("tiny-llama"); // SmolLM's pre-tokenizer: digits one by one, then GPT-2's split
    let out = d.join("m.gguf");
    let run = |model: &Path, pre: Option<&str>| {
        let mut args = vec!["export-gguf", "--model", p(model), "--out", p(&out), "--type", "f32", "--overwrite"];
        args.extend(pre.map(|pre| ["--tokenizer-pre", pre]).into_iter().flatten());
        condlm(&args)
    };
    // A typo is refused before the model loads (the missing model is never reported).
    let (ok, _, err) = run(Path::new("/nonexistent/model"), Some("llama3-bpe"));
    assert!(!ok && err.contains("\"llama3-bpe\"") && err.contains("llama-bpe, falcon3"), "{err}");
    // A name that splits text otherwise than the tokenizer (Llama 3's regex vs SmolLM's digits) is refused.
    let (ok, _, err) = run(&model, Some("qwen2"));
    assert!(!ok && err.contains("\"smollm\"") && err.contains("leave --tokenizer-pre off"), "{err}");
    assert!(!out.exists());
    let pre_of = |path: &Path| GgufFile::open(path).unwrap().get_str("tokenizer.ggml.pre").unwrap().to_string();
    let (ok, _, err) = run(&model, Some("smollm"));
    assert!(ok && pre_of(&out) == "smollm", "{err}");

    // A pre-tokenizer condlm cannot name: the error asks for --tokenizer-pre, and the flag then gives the name.
    let odd = d.join("odd-pre");
    common::copy_dir(&model, &odd);
    let tok_path = odd.join("tokenizer.json");
    let mut tok: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tok_path).unwrap()).unwrap();
    tok["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
    std::fs::write(&tok_path, tok.to_string()).unwrap();
    let (ok, _, err) = run(&odd, None);
    assert!(!ok && err.contains("pass --tokenizer-pre NAME"), "{err}");
    let (ok, _, err) = run(&odd, Some("gpt-2"));
    assert!(ok && pre_of(&out) == "gpt-2", "{err}");
}

/// A ChatML template that writes a default system turn into a conversation without one (SmolLM2's does) gets it as
/// the Modelfile's SYSTEM, so Ollama prompts as training did.
#[test]
fn the_modelfile_carries_the_templates_default_system_message() {
    let scratch = out_dir("default-system");
    let d = scratch.path();
    let model = d.join("model");
    common::copy_dir(&fixture("tiny-qwen2"), &model);
    let path = model.join("chat_template.jinja");
    let chatml = std::fs::read_to_string(&path).unwrap();
    let system = "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}";
    std::fs::write(&path, format!("{system}{chatml}")).unwrap();
    export(&["--model", p(&model), "--out", p(&d.join("m.gguf")), "--modelfile"]);
    let mf = std::fs::read_to_string(d.join("Modelfile")).unwrap();
    assert!(mf.contains("SYSTEM \"\"\"You are a tiny test model.\"\"\"\n") && mf.contains("range .Messages"), "{mf}");
}

#[test]
fn the_modelfile_presents_prompts_as_training_did() {
    // tiny-llama has a ChatML chat template; an adapter trained on its prompt/completion rows must get raw prompts.
    let scratch = out_dir("trained-on");
    let d = scratch.path();
    let model = fixture("tiny-llama");
    let run = d.join("run");
    let (ok, _, err) = condlm(&[
        "train",
        "--model",
        p(&model),
        "--data",
        p(&fixture("train_rows.jsonl")),
        "--max-steps",
        "1",
        "--output-dir",
        p(&run),
        "--allow-worse",
    ]);
    assert!(ok, "{err}");
    let adapter = run.join("adapter");
    let raw = "TEMPLATE \"\"\"{{ .Prompt }}\"\"\"";
    export(&["--model", p(&model), "--adapter", p(&adapter), "--out", p(&d.join("a.gguf")), "--modelfile"]);
    let mf = std::fs::read_to_string(d.join("Modelfile")).unwrap();
    assert!(mf.contains(raw) && !mf.contains(".Messages"), "{mf}");
    // merge carries the record on to the merged folder, and its export reads it there.
    let merged = d.join("merged");
    let (ok, _, err) = condlm(&["merge", "--model", p(&model), "--adapter", p(&adapter), "--out", p(&merged)]);
    assert!(ok, "{err}");
    export(&["--model", p(&merged), "--out", p(&d.join("m.gguf")), "--modelfile", "--overwrite"]);
    let mf = std::fs::read_to_string(d.join("Modelfile")).unwrap();
    assert!(mf.contains(raw), "{mf}");
}
