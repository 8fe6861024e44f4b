//! GGUF files of Llama 3.1+, Gemma 3, Phi-3/Phi-4-mini and SmolLM3 against llama.cpp's own converter
//! (tests/fixtures/converter/, written by make_converter_fixtures.py from the tiny HF fixtures): Llama 3.1's RoPE
//! scaling as `rope_freqs.weight` and Phi-3's LongRoPE factors read (logits vs transformers) and written (the
//! converter's bytes); Gemma 3 (the 1 of its (1 + w) norms added, its sliding layers and local RoPE base) and
//! SmolLM3 (no RoPE in every 4th layer) written as the converter writes them and read back as the same model;
//! YaRN's `rope.scaling.*` keys read and written (tiny-qwen3-yarn);
//! settings llama.cpp cannot express refused.
mod common;
use common::{
    assert_rows_close, condlm, copy_fixture, fixture, fixture_row_scores, forward_logits, max_abs_diff,
    reference_sequences,
};
use condlm::formats::gguf::file::{GgufFile, MetaValue};
use condlm::formats::load::load_model;
use std::path::{Path, PathBuf};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn export(args: &[&str]) -> (bool, String) {
    let (ok, _, err) = condlm(&[&["export-gguf", "--type", "f32"], args].concat());
    (ok, err)
}

/// Every tensor of the converter's file is in ours with the same shape and bytes; every `<arch>.*` key the
/// converter writes has its value in ours. Returns our keys the converter does not write.
fn assert_as_converter_writes(ours: &Path, converter: &str, arch: &str) -> Vec<String> {
    let (ours, theirs) = (GgufFile::open(ours).unwrap(), GgufFile::open(&fixture(converter)).unwrap());
    assert_eq!(ours.tensors.len(), theirs.tensors.len(), "tensor count");
    for t in &theirs.tensors {
        let o = ours.require_tensor(&t.name).unwrap();
        assert_eq!((&o.dims, o.ty), (&t.dims, t.ty), "{}", t.name);
        assert!(ours.tensor_bytes(o).unwrap() == theirs.tensor_bytes(t).unwrap(), "{} differs", t.name);
    }
    let prefix = format!("{arch}.");
    for (k, v) in theirs.metadata.iter().filter(|(k, _)| k.starts_with(&prefix)) {
        assert_eq!(ours.get(k), Some(v), "{k}");
    }
    let extra = ours.metadata.iter().filter(|(k, _)| k.starts_with(&prefix) && theirs.get(k).is_none());
    extra.map(|(k, _)| k.clone()).collect()
}

#[test]
fn llama31_rope_freqs_read_as_transformers_runs_the_model() {
    let m = load_model(p(&fixture("converter/tiny-llama31.gguf"))).unwrap().model;
    let hf = load_model(p(&fixture("tiny-llama31"))).unwrap().model;
    assert_eq!(m.config.rope_scaling, hf.config.rope_scaling, "the four numbers recovered from rope_freqs.weight");
    assert!(m.config.rope_scaling.is_some());
    for (ids, want) in reference_sequences("tiny-llama31") {
        let diff = max_abs_diff(&forward_logits(&m, &ids), &want);
        assert!(diff <= 1e-4, "max |Δ logit| vs transformers {diff}");
    }
}

#[test]
fn llama31_exports_rope_freqs_as_the_converter_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l.gguf");
    let (ok, err) = export(&["--model", p(&fixture("tiny-llama31")), "--out", p(&out)]);
    assert!(ok, "{err}");
    let extra = assert_as_converter_writes(&out, "converter/tiny-llama31.gguf", "llama");
    assert!(extra.is_empty(), "{extra:?}");
    // the LoRA adapter alone, for llama.cpp's --lora on that base
    let lora = dir.path().join("a.gguf");
    let adapter = fixture("tiny-llama31/lora-init");
    let (ok, err) =
        export(&["--model", p(&fixture("tiny-llama31")), "--adapter", p(&adapter), "--out", p(&lora), "--lora-only"]);
    assert!(ok, "{err}");
    assert!(GgufFile::open(&lora).unwrap().tensor("blk.1.attn_q.weight.lora_b").is_some());
}

/// Fixture `name` copied into `dir` with config.json's `key` set to `value` (what the converter fixture was made
/// from: a setting llama.cpp can express).
fn edited(name: &str, dir: &Path, key: &str, value: serde_json::Value) -> PathBuf {
    let model = copy_fixture(name, &dir.join(name));
    let config = model.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c[key] = value;
    std::fs::write(&config, c.to_string()).unwrap();
    model
}

/// tiny-gemma3 with query_pre_attn_scalar 32 (= head_dim: what llama.cpp applies), as the converter fixture.
fn gemma3_as_llama_cpp_runs_it(dir: &Path) -> PathBuf {
    edited("tiny-gemma3", dir, "query_pre_attn_scalar", 32.into())
}

#[test]
fn gemma3_exports_as_the_converter_writes_it_and_reads_back_as_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = gemma3_as_llama_cpp_runs_it(dir.path());
    let out = dir.path().join("g.gguf");
    let (ok, err) = export(&["--model", p(&model), "--out", p(&out)]);
    assert!(ok && !err.contains("full causal attention"), "{err}");
    // the converter ignores layer_types (llama.cpp then takes every 6th layer as global); condlm writes them
    let extra = assert_as_converter_writes(&out, "converter/tiny-gemma3.gguf", "gemma3");
    assert_eq!(extra, ["gemma3.attention.sliding_window_pattern"]);
    let g = GgufFile::open(&out).unwrap();
    let flags = g.get("gemma3.attention.sliding_window_pattern").and_then(MetaValue::as_array).unwrap();
    assert_eq!(flags, [true, true, false, true].map(MetaValue::Bool));
    assert_rows_close(
        &fixture_row_scores(p(&out), None),
        &fixture_row_scores(p(&model), None),
        1e-6,
        "exported Gemma 3",
    );

    // with an adapter: merged into the file, or alone for llama.cpp's --lora
    let adapter = fixture("interop/tiny-gemma3-condlm-adapter");
    let merged = dir.path().join("merged.gguf");
    let (ok, err) =
        export(&["--model", p(&model), "--adapter", p(&adapter), "--ignore-base-mismatch", "--out", p(&merged)]);
    assert!(ok, "{err}");
    assert_rows_close(
        &fixture_row_scores(p(&merged), None),
        &fixture_row_scores(p(&model), Some(&adapter)),
        1e-5,
        "merged Gemma 3",
    );
    let lora = dir.path().join("lora.gguf");
    let a = ["--adapter", p(&adapter), "--ignore-base-mismatch", "--lora-only"];
    let (ok, err) = export(&[&["--model", p(&model), "--out", p(&lora)][..], &a].concat());
    assert!(ok, "{err}");
    let l = GgufFile::open(&lora).unwrap();
    assert_eq!(l.get_str("general.architecture").unwrap(), "gemma3");
    assert!(l.tensor("blk.3.ffn_gate.weight.lora_a").is_some());
}

#[test]
fn gemma3_linear_rope_scaling_goes_through_gguf() {
    // the converter's file of tiny-gemma3-linear: × 8 on the global layer, llama.cpp's default pattern (all slide)
    let c = load_model(p(&fixture("converter/tiny-gemma3-linear.gguf"))).unwrap().model.config;
    assert_eq!((c.rope_linear_factor, c.local_rope(2)), (Some(8.0), true));
    // condlm's export keeps the layer pattern, so it reads back as the model transformers ran
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.gguf");
    let (ok, err) = export(&["--model", p(&fixture("tiny-gemma3-linear")), "--out", p(&out)]);
    assert!(ok, "{err}");
    let extra = assert_as_converter_writes(&out, "converter/tiny-gemma3-linear.gguf", "gemma3");
    assert_eq!(extra, ["gemma3.attention.sliding_window_pattern"]);
    let m = load_model(p(&out)).unwrap().model;
    for (ids, want) in reference_sequences("tiny-gemma3-linear") {
        let diff = max_abs_diff(&forward_logits(&m, &ids), &want);
        assert!(diff <= 1e-4, "max |Δ logit| vs transformers {diff}");
    }
}

/// YaRN through GGUF: the converter's file of tiny-qwen3-yarn reads as the HF model (transformers' logits), and
/// condlm writes what the converter writes; an attention factor that is not the default goes through
/// `rope.scaling.attn_factor`, which llama.cpp multiplies in; a ramp llama.cpp cannot run is refused.
#[test]
fn yarn_goes_through_gguf() {
    let m = load_model(p(&fixture("converter/tiny-qwen3-yarn.gguf"))).unwrap().model;
    let hf = load_model(p(&fixture("tiny-qwen3-yarn"))).unwrap().model;
    assert_eq!(m.config.yarn, hf.config.yarn);
    for (ids, want) in reference_sequences("tiny-qwen3-yarn") {
        let diff = max_abs_diff(&forward_logits(&m, &ids), &want);
        assert!(diff <= 1e-4, "max |Δ logit| vs transformers {diff}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("y.gguf");
    let (ok, err) = export(&["--model", p(&fixture("tiny-qwen3-yarn")), "--out", p(&out)]);
    assert!(ok, "{err}");
    let extra = assert_as_converter_writes(&out, "converter/tiny-qwen3-yarn.gguf", "qwen3");
    assert_eq!(extra, ["qwen3.rope.dimension_count", "qwen3.vocab_size"]);

    let model = copy_fixture("tiny-qwen3-yarn", &dir.path().join("edited"));
    let edit = |key: &str, value: serde_json::Value| {
        let path = model.join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["rope_parameters"][key] = value;
        std::fs::write(&path, v.to_string()).unwrap();
    };
    edit("attention_factor", serde_json::json!(1.25));
    let (ok, err) = export(&["--model", p(&model), "--out", p(&out), "--overwrite"]);
    assert!(ok, "{err}");
    let g = GgufFile::open(&out).unwrap();
    let attn = g.get_f32("qwen3.rope.scaling.attn_factor").unwrap();
    assert!((attn as f64 - 1.25 / (1.0 + 0.1 * 4f64.ln())).abs() < 1e-6, "{attn}");
    let back = load_model(p(&out)).unwrap().model.config.yarn.unwrap();
    assert!((back.attention_factor - 1.25).abs() < 1e-6, "{}", back.attention_factor);
    // with a factor of 1 the attention factor is all the file says: it still reads back
    edit("factor", serde_json::json!(1.0));
    let (ok, err) = export(&["--model", p(&model), "--out", p(&out), "--overwrite"]);
    assert!(ok, "{err}");
    let back = load_model(p(&out)).unwrap().model.config.yarn.unwrap();
    assert_eq!((back.factor, back.attention_factor), (1.0, 1.25));
    edit("beta_fast", serde_json::json!(16.0));
    let (ok, err) = export(&["--model", p(&model), "--out", p(&out), "--overwrite"]);
    assert!(!ok && err.contains("beta_fast 16, beta_slow 1, truncate true") && err.contains("condlm merge"), "{err}");
}

/// OLMo 2 and 3 through GGUF (llama.cpp's `olmo2`): the converter's files read as the HF models (transformers'
/// logits), condlm writes what the converter writes, and the export reads back as the model — OLMo 3's window, its
/// one flag per layer, the sliding layers' base and YaRN on the global layer included.
#[test]
fn olmo_goes_through_gguf() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny-olmo2", "tiny-olmo3"] {
        let converted = load_model(p(&fixture(&format!("converter/{name}.gguf")))).unwrap().model;
        let hf = load_model(p(&fixture(name))).unwrap().model;
        let architecture = converted.config.architecture.clone();
        assert_eq!(architecture, "olmo2");
        assert_eq!(condlm::network::config::Config { architecture, ..hf.config.clone() }, converted.config, "{name}");
        let out = dir.path().join(format!("{name}.gguf"));
        let (ok, err) = export(&["--model", p(&fixture(name)), "--out", p(&out)]);
        assert!(ok && !err.contains("warning"), "{err}");
        let extra = assert_as_converter_writes(&out, &format!("converter/{name}.gguf"), "olmo2");
        assert!(extra.is_empty(), "{name}: {extra:?}");
        let ours = load_model(p(&out)).unwrap().model;
        for m in [&converted, &ours] {
            for (ids, want) in reference_sequences(name) {
                let diff = max_abs_diff(&forward_logits(m, &ids), &want);
                assert!(diff <= 1e-4, "{name}: max |Δ logit| vs transformers {diff}");
            }
        }
    }
    // a window without a pattern key: llama.cpp's every 4th layer global; without freq_base_swa: freq_base
    let out = dir.path().join("o.gguf");
    rewrite(
        &fixture("converter/tiny-olmo3.gguf"),
        &out,
        |m| {
            m.remove("olmo2.attention.sliding_window_pattern");
            m.remove("olmo2.rope.freq_base_swa");
            m.insert("olmo2.rope.freq_base".into(), MetaValue::F32(5e5));
        },
        None,
    );
    let c = load_model(p(&out)).unwrap().model.config;
    assert_eq!((0..4).map(|i| c.window(i)).collect::<Vec<_>>(), [Some(4), Some(4), Some(4), None]);
    assert_eq!((c.rope_theta, c.rope_local_theta), (5e5, Some(5e5)));
    // llama.cpp's olmo2 graph rotates the sliding layers with rope.freq_base whatever rope.freq_base_swa says
    rewrite(&fixture("converter/tiny-olmo3.gguf"), &out, set("olmo2.rope.freq_base_swa", MetaValue::F32(5e4)), None);
    assert_eq!(load_model(p(&out)).unwrap().model.config.rope_local_theta, Some(1e4));
    // without q/k norms llama.cpp refuses the file, and so does condlm
    let qk_norm = |name: &str| name.contains("attn_q_norm") || name.contains("attn_k_norm");
    rewrite_keeping(&fixture("converter/tiny-olmo2.gguf"), &out, |_| {}, None, |name| !qk_norm(name));
    let e = format!("{:#}", load_model(p(&out)).err().unwrap());
    assert!(e.contains("o.gguf") && e.contains("without blk.0.attn_q_norm.weight"), "{e}");
    // an OLMo 3 whose sliding layers have their own base has no llama.cpp spelling
    let model = copy_fixture("tiny-olmo3", &dir.path().join("two-bases"));
    let path = model.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["rope_parameters"]["sliding_attention"]["rope_theta"] = 5e4.into();
    std::fs::write(&path, v.to_string()).unwrap();
    let (ok, err) = export(&["--model", p(&model), "--out", p(&dir.path().join("two.gguf"))]);
    assert!(!ok && err.contains("sliding layers rotate with RoPE base 50000") && err.contains("condlm merge"), "{err}");
}

/// A GGUF's YaRN keys as llama.cpp reads them: no original context means the context length; `attn_factor`
/// multiplies the default; an `attn_factor` without YaRN (llama.cpp would scale cos and sin by it) and YaRN on
/// Gemma 3 are refused by key.
#[test]
fn yarn_keys_read_as_llama_cpp_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("converter/tiny-qwen3-yarn.gguf");
    let out = dir.path().join("y.gguf");
    let read = |edit: &dyn Fn(&mut Meta)| {
        rewrite(&src, &out, edit, None);
        load_model(p(&out)).map(|m| m.model.config)
    };
    let y = read(&|m| {
        m.remove("qwen3.rope.scaling.original_context_length");
    })
    .unwrap()
    .yarn
    .unwrap();
    assert_eq!(y.original_max_positions, 16384);
    let y = read(&set("qwen3.rope.scaling.original_context_length", MetaValue::U32(0))).unwrap().yarn.unwrap();
    assert_eq!(y.original_max_positions, 16384, "0 is llama.cpp's 'not set'");
    let y = read(&set("qwen3.rope.scaling.attn_factor", MetaValue::F32(0.5))).unwrap().yarn.unwrap();
    assert_eq!(y.attention_factor, (1.0 + 0.1 * 4f64.ln()) as f32 * 0.5);
    assert_eq!(read(&set("qwen3.rope.scaling.factor", MetaValue::F32(1.0))).unwrap().yarn, None);
    // llama.cpp scales cos and sin by attn_factor whatever the factor, and takes an absent factor as 1
    for factor in [Some(1.0), None] {
        let y = read(&|m| {
            m.insert("qwen3.rope.scaling.attn_factor".into(), MetaValue::F32(1.25));
            match factor {
                Some(f) => drop(m.insert("qwen3.rope.scaling.factor".into(), MetaValue::F32(f))),
                None => drop(m.remove("qwen3.rope.scaling.factor")),
            }
        });
        let y = y.unwrap().yarn.unwrap();
        assert_eq!((y.factor, y.attention_factor), (1.0, 1.25), "factor {factor:?}");
    }
    let e = format!("{:#}", read(&set("qwen3.rope.scaling.factor", MetaValue::F32(0.5))).unwrap_err());
    assert!(e.contains("y.gguf") && e.contains("qwen3.rope.scaling.factor is 0.5: YaRN's factor"), "{e}");
    // no type: llama.cpp's default, linear, on every layer
    let c = read(&|m| {
        m.remove("qwen3.rope.scaling.type");
    })
    .unwrap();
    assert_eq!((c.rope_linear_factor, c.yarn), (Some(4.0), None));
    // and is written back with its type
    let back = dir.path().join("linear.gguf");
    let (ok, err) = export(&["--model", p(&out), "--out", p(&back)]);
    assert!(ok, "{err}");
    let g = GgufFile::open(&back).unwrap();
    assert_eq!(g.get_str("qwen3.rope.scaling.type").unwrap(), "linear");
    assert_eq!(load_model(p(&back)).unwrap().model.config.rope_linear_factor, Some(4.0));
    let e = format!(
        "{:#}",
        read(&|m| {
            m.insert("qwen3.rope.scaling.type".into(), MetaValue::Str("none".into()));
            m.insert("qwen3.rope.scaling.attn_factor".into(), MetaValue::F32(2.0));
        })
        .unwrap_err()
    );
    assert!(e.contains("and qwen3.rope.scaling.attn_factor 2"), "{e}");
}

#[test]
fn gemma3_files_of_the_converter_read_as_llama_cpp_reads_them() {
    // no pattern key: every 6th layer global, so all four slide; rope.freq_base_swa the local base
    let c = load_model(p(&fixture("converter/tiny-gemma3.gguf"))).unwrap().model.config;
    assert_eq!((0..4).map(|i| c.window(i)).collect::<Vec<_>>(), [Some(4); 4]);
    assert_eq!((c.rope_theta, c.rope_local_theta, c.attn_scale), (1e6, Some(1e4), Some(32f32.sqrt().recip())));
    assert!(c.norm_plus_one && c.sandwich_norms && c.scale_embeddings);
}

#[test]
fn a_gemma3_scale_llama_cpp_cannot_express_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.gguf");
    let (ok, err) = export(&["--model", p(&fixture("tiny-gemma3")), "--out", p(&out)]);
    assert!(!ok && err.contains("query_pre_attn_scalar 24") && err.contains("condlm merge"), "{err}");
    assert!(!out.exists());
}

#[test]
fn phi3_and_phi4_gguf_from_the_converter_run_as_transformers() {
    for name in ["tiny-phi3", "tiny-phi4"] {
        let m = load_model(p(&fixture(&format!("converter/{name}.gguf")))).unwrap().model;
        let hf = load_model(p(&fixture(name))).unwrap().model;
        assert_eq!((m.config.rotary_dim, &m.config.longrope), (hf.config.rotary_dim, &hf.config.longrope), "{name}");
        assert!(m.config.fused_projections());
        // the 20-token row of tiny-phi4 takes the long factors, the others the short ones, as in transformers
        for (ids, want) in reference_sequences(name) {
            let diff = max_abs_diff(&forward_logits(&m, &ids), &want);
            assert!(diff <= 1e-4, "{name}: max |Δ logit| vs transformers {diff}");
        }
    }
}

#[test]
fn phi3_and_phi4_export_as_the_converter_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny-phi3", "tiny-phi4"] {
        let out = dir.path().join(format!("{name}.gguf"));
        let (ok, err) = export(&["--model", p(&fixture(name)), "--out", p(&out)]);
        assert!(ok, "{err}");
        let extra = assert_as_converter_writes(&out, &format!("converter/{name}.gguf"), "phi3");
        assert!(extra.is_empty(), "{name}: {extra:?}");
        assert_rows_close(&fixture_row_scores(p(&out), None), &fixture_row_scores(p(&fixture(name)), None), 1e-6, name);
    }
    // a LoRA adapter on the fused matrices, for llama.cpp's --lora
    let lora = dir.path().join("lora.gguf");
    let adapter = fixture("interop/tiny-phi3-condlm-adapter");
    let a = ["--adapter", p(&adapter), "--ignore-base-mismatch", "--lora-only"];
    let (ok, err) = export(&[&["--model", p(&fixture("tiny-phi3")), "--out", p(&lora)][..], &a].concat());
    assert!(ok, "{err}");
    let l = GgufFile::open(&lora).unwrap();
    assert!(l.tensor("blk.0.attn_qkv.weight.lora_a").is_some() && l.tensor("blk.1.ffn_up.weight.lora_b").is_some());
}

#[test]
fn smollm3_exports_as_the_converter_writes_it_when_llama_cpp_can_run_it() {
    let dir = tempfile::tempdir().unwrap();
    // llama.cpp's SmolLM3: no RoPE in every 4th layer
    let c = load_model(p(&fixture("converter/tiny-smollm3.gguf"))).unwrap().model.config;
    assert_eq!((0..4).map(|i| c.rope_in(i)).collect::<Vec<_>>(), [true, true, true, false]);
    let model = edited("tiny-smollm3", dir.path(), "no_rope_layers", serde_json::json!([1, 1, 1, 0]));
    let out = dir.path().join("s.gguf");
    let (ok, err) = export(&["--model", p(&model), "--out", p(&out)]);
    assert!(ok, "{err}");
    // the converter writes the head size only when config.json names head_dim; condlm always does (the value
    // llama.cpp derives: hidden / heads)
    let extra = assert_as_converter_writes(&out, "converter/tiny-smollm3.gguf", "smollm3");
    assert_eq!(extra, ["smollm3.attention.key_length", "smollm3.attention.value_length"]);
    assert_eq!(GgufFile::open(&out).unwrap().get_u32("smollm3.attention.key_length").unwrap(), 64 / 4);
    assert_rows_close(
        &fixture_row_scores(p(&out), None),
        &fixture_row_scores(p(&model), None),
        1e-6,
        "exported SmolLM3",
    );
    // the fixture's own pattern (every 2nd layer) has no GGUF spelling
    let (ok, err) = export(&["--model", p(&fixture("tiny-smollm3")), "--out", p(&dir.path().join("x.gguf"))]);
    assert!(!ok && err.contains("layers [1, 3]") && err.contains("every 4th"), "{err}");
}

#[test]
fn vocab_from_copies_the_base_gguf_vocabulary_when_it_is_the_models() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("converter/tiny-llama31.gguf");
    let out = dir.path().join("v.gguf");
    let (ok, err) = export(&["--model", p(&fixture("tiny-llama31")), "--out", p(&out), "--vocab-from", p(&base)]);
    assert!(ok, "{err}");
    let (ours, theirs) = (GgufFile::open(&out).unwrap(), GgufFile::open(&base).unwrap());
    for (k, v) in theirs.metadata.iter().filter(|(k, _)| k.starts_with("tokenizer.")) {
        assert_eq!(ours.get(k), Some(v), "{k}");
    }
    // but the model's own chat template, which it was trained with, over the vocabulary source's (or its lack)
    let templated = copy_fixture("tiny-llama31", &dir.path().join("templated"));
    let cfg_path = templated.join("tokenizer_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}";
    cfg["chat_template"] = template.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let (ok, err) = export(&["--model", p(&templated), "--out", p(&out), "--vocab-from", p(&base), "--overwrite"]);
    assert!(ok, "{err}");
    let ours = GgufFile::open(&out).unwrap();
    assert_eq!(ours.get("tokenizer.chat_template"), Some(&MetaValue::Str(template.into())));
    // another vocabulary: another size, or the same size with two tokens swapped
    // a LoRA adapter GGUF is no vocabulary
    let lora = dir.path().join("lora.gguf");
    let adapter = fixture("tiny-llama31/lora-init");
    let (ok, err) =
        export(&["--model", p(&fixture("tiny-llama31")), "--adapter", p(&adapter), "--out", p(&lora), "--lora-only"]);
    assert!(ok, "{err}");
    let (ok, err) =
        export(&["--model", p(&fixture("tiny-llama31")), "--out", p(&out), "--vocab-from", p(&lora), "--overwrite"]);
    assert!(!ok && err.contains("a LoRA adapter, not a model"), "{err}");
    let spm = fixture("gguf_tokenizer/spm/ggml-vocab-llama-spm.gguf");
    let (ok, err) =
        export(&["--model", p(&fixture("tiny-llama31")), "--out", p(&out), "--vocab-from", p(&spm), "--overwrite"]);
    assert!(!ok && err.contains("32000 tokens and the model's 384"), "{err}");
    let model = copy_fixture("tiny-llama31", &dir.path().join("swapped"));
    let path = model.join("tokenizer.json");
    let mut t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vocab = t["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = (vocab["a"].as_u64().unwrap(), vocab["b"].as_u64().unwrap());
    assert!(a < b);
    (vocab["a"], vocab["b"]) = (b.into(), a.into());
    std::fs::write(&path, t.to_string()).unwrap();
    let (ok, err) = export(&["--model", p(&model), "--out", p(&out), "--vocab-from", p(&base), "--overwrite"]);
    assert!(!ok && err.contains(&format!("token {a} is \"a\" there and \"b\" in the model")), "{err}");
}

/// `src` rewritten to `dst` with its metadata edited by `edit` and tensor `rope_freqs.weight`'s values (when it
/// has one) replaced by `freqs`.
fn rewrite(src: &Path, dst: &Path, edit: impl Fn(&mut Meta), freqs: Option<&[f32]>) {
    rewrite_keeping(src, dst, edit, freqs, |_| true);
}

/// [`rewrite`], keeping only the tensors whose names `keep` accepts.
fn rewrite_keeping(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&mut Meta),
    freqs: Option<&[f32]>,
    keep: impl Fn(&str) -> bool,
) {
    use condlm::formats::gguf::writer::{TensorData, TensorToWrite, write_gguf};
    let g = GgufFile::open(src).unwrap();
    let mut meta = g.metadata.clone();
    edit(&mut meta);
    let meta: Vec<(&str, MetaValue)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let freq_bytes: Vec<u8> = freqs.unwrap_or_default().iter().flat_map(|f| f.to_le_bytes()).collect();
    let tensors: Vec<TensorToWrite<'_>> = g
        .tensors
        .iter()
        .filter(|t| keep(&t.name))
        .map(|t| TensorToWrite {
            name: &t.name,
            dims: t.dims.clone(),
            ty: t.ty,
            data: TensorData::Bytes(match t.name.as_str() {
                "rope_freqs.weight" if freqs.is_some() => &freq_bytes,
                _ => g.tensor_bytes(t).unwrap(),
            }),
        })
        .collect();
    write_gguf(std::fs::File::create(dst).unwrap(), &meta, &tensors).unwrap();
}

type Meta = std::collections::BTreeMap<String, MetaValue>;

fn set(key: &str, value: MetaValue) -> impl Fn(&mut Meta) {
    let key = key.to_string();
    move |m: &mut Meta| {
        m.insert(key.clone(), value.clone());
    }
}

#[test]
fn gemma3_layer_settings_read_as_llama_cpp_reads_every_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("converter/tiny-gemma3.gguf");
    let out = dir.path().join("g.gguf");
    let read = |edit: &dyn Fn(&mut Meta)| {
        rewrite(&src, &out, edit, None);
        load_model(p(&out)).map(|m| m.model.config)
    };
    let sliding = |c: &condlm::network::config::Config| (0..4).map(|i| c.window(i).is_some()).collect::<Vec<_>>();
    let local = |c: &condlm::network::config::Config| (0..4).map(|i| c.local_rope(i)).collect::<Vec<_>>();
    // no window: every layer global, on rope.freq_base
    let c = read(&|m| {
        m.remove("gemma3.attention.sliding_window");
    })
    .unwrap();
    assert_eq!((sliding(&c), local(&c)), (vec![false; 4], vec![false; 4]));
    // its config.json still names a window (transformers builds Gemma 3's sliding mask whatever the layers are)
    let v = condlm::formats::hf_export::config_json(&c, None).unwrap();
    assert_eq!((v["sliding_window"].as_u64(), &v["layer_types"][2]), (Some(128), &serde_json::json!("full_attention")));
    // a pattern of 0: every layer slides; of 2: every 2nd is global
    let c = read(&set("gemma3.attention.sliding_window_pattern", MetaValue::U32(0))).unwrap();
    assert_eq!((sliding(&c), local(&c)), (vec![true; 4], vec![true; 4]));
    let c = read(&set("gemma3.attention.sliding_window_pattern", MetaValue::U32(2))).unwrap();
    assert_eq!(sliding(&c), [true, false, true, false]);
    // one flag per layer, as bools or integers
    let ints = MetaValue::Array([1, 1, 0, 1].map(MetaValue::I32).to_vec());
    assert_eq!(
        sliding(&read(&set("gemma3.attention.sliding_window_pattern", ints)).unwrap()),
        [true, true, false, true]
    );
    // Gemma 3 4B+'s linear RoPE scaling (× 1 is none); YaRN on Gemma 3, which condlm does not apply, is refused
    let linear = |f: f32| {
        move |m: &mut Meta| {
            m.insert("gemma3.rope.scaling.type".into(), MetaValue::Str("linear".into()));
            m.insert("gemma3.rope.scaling.factor".into(), MetaValue::F32(f));
        }
    };
    assert_eq!(read(&linear(8.0)).unwrap().rope_linear_factor, Some(8.0));
    assert_eq!(read(&linear(1.0)).unwrap().rope_linear_factor, None);
    let yarn = |m: &mut Meta| {
        m.insert("gemma3.rope.scaling.type".into(), MetaValue::Str("yarn".into()));
        m.insert("gemma3.rope.scaling.factor".into(), MetaValue::F32(4.0));
    };
    let e = format!("{:#}", read(&yarn).unwrap_err());
    assert!(e.contains("g.gguf") && e.contains("gemma3.rope.scaling.type is \"yarn\" with factor 4"), "{e}");
    let short = MetaValue::Array(vec![MetaValue::Bool(true); 3]);
    let e = format!("{:#}", read(&set("gemma3.attention.sliding_window_pattern", short)).unwrap_err());
    assert!(e.contains("g.gguf") && e.contains("holds 3 values") && e.contains("per layer (4)"), "{e}");
}

#[test]
fn llama31_rope_freqs_of_one_are_no_scaling_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l.gguf");
    rewrite(&fixture("converter/tiny-llama31.gguf"), &out, |_| {}, Some(&[1.0; 16]));
    assert_eq!(load_model(p(&out)).unwrap().model.config.rope_scaling, None);
    let mut nan = [1.0f32; 16];
    nan[3] = f32::NAN;
    rewrite(&fixture("converter/tiny-llama31.gguf"), &out, |_| {}, Some(&nan));
    let e = format!("{:#}", load_model(p(&out)).err().unwrap());
    assert!(e.contains("l.gguf") && e.contains("rope_freqs.weight") && e.contains("divisor 3 is NaN"), "{e}");
}

/// A model whose embedding has more rows than its tokenizer has tokens (Phi-3: 32064 rows, 32011 tokens): llama.cpp's
/// converter pads the vocabulary with `[PADn]` tokens, and `--vocab-from` takes such a base.
#[test]
fn vocab_from_takes_a_base_padded_to_the_embedding_rows() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_fixture("tiny-llama31", &dir.path().join("padded"));
    let weights = model.join("model.safetensors");
    let mut tensors = common::load_f32_tensors(&weights);
    let (shape, embed) = tensors.get_mut("model.embed_tokens.weight").unwrap();
    embed.extend(std::iter::repeat_n(0.01, 16 * shape[1]));
    shape[0] += 16;
    common::save_f32_tensors(&weights, &tensors);
    let config = model.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["vocab_size"] = 400.into();
    std::fs::write(&config, c.to_string()).unwrap();
    // the base: the folder as a GGUF, its vocabulary padded to 400 tokens
    let base = dir.path().join("base.gguf");
    let (ok, err) = export(&["--model", p(&model), "--out", p(&base)]);
    assert!(ok, "{err}");
    let g = GgufFile::open(&base).unwrap();
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap()[399], "[PAD399]");
    let out = dir.path().join("v.gguf");
    let (ok, err) = export(&["--model", p(&model), "--out", p(&out), "--vocab-from", p(&base)]);
    assert!(ok, "{err}");
}

/// Qwen3.5 through GGUF: the converter's qwen35 file (its Gated DeltaNet as ssm_* tensors, A as −e^A_log, value
/// heads tiled, norms + 1) reads as the HF model and runs as transformers does; condlm's export is the converter's
/// file byte for byte and key for key, and reads back as the same model.
#[test]
fn qwen35_goes_through_gguf() {
    let converted = load_model(p(&fixture("converter/tiny-qwen35.gguf"))).unwrap().model;
    let hf = load_model(p(&fixture("tiny-qwen35"))).unwrap().model;
    let architecture = converted.config.architecture.clone();
    assert_eq!(architecture, "qwen35");
    let want = condlm::network::config::Config { architecture, ..hf.config.clone() };
    assert_eq!(want, converted.config);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("qwen35.gguf");
    let (ok, err) = export(&["--model", p(&fixture("tiny-qwen35")), "--out", p(&out)]);
    assert!(ok && !err.contains("warning"), "{err}");
    let extra = assert_as_converter_writes(&out, "converter/tiny-qwen35.gguf", "qwen35");
    assert!(extra.is_empty(), "{extra:?}");
    // the multimodal checkpoint of the same text model: its text model, as the converter writes it from either
    let from_multimodal = dir.path().join("qwen35-vl.gguf");
    let (ok, err) = export(&["--model", p(&fixture("tiny-qwen35-vl")), "--out", p(&from_multimodal)]);
    assert!(ok, "{err}");
    assert!(assert_as_converter_writes(&from_multimodal, "converter/tiny-qwen35.gguf", "qwen35").is_empty());
    let ours = load_model(p(&out)).unwrap().model;
    // llama.cpp takes value heads as wide as key heads
    let mut wide = hf.config.clone();
    wide.delta_net.as_mut().unwrap().v_head_dim = 24;
    let err = condlm::formats::gguf::export::gguf_arch(&wide).unwrap_err().to_string();
    assert!(err.contains("llama.cpp's qwen35 takes both as wide"), "{err}");
    for m in [&converted, &ours] {
        for (ids, want) in reference_sequences("tiny-qwen35") {
            let diff = max_abs_diff(&forward_logits(m, &ids), &want);
            assert!(diff <= 1e-4, "max |Δ logit| vs transformers {diff}");
        }
    }
}

/// A Qwen3.5 GGUF with the multi-token-prediction block llama.cpp's converter appends to real checkpoints (one more
/// block, `nextn_predict_layers` 1, its `nextn.*` tensors; `attention.recurrent_layers` one flag longer) reads as
/// the model without it.
#[test]
fn qwen35_gguf_mtp_block_is_skipped() {
    use condlm::formats::gguf::writer::{TensorData, TensorToWrite, write_gguf};
    let src = fixture("converter/tiny-qwen35.gguf");
    let g = GgufFile::open(&src).unwrap();
    let mut meta = g.metadata.clone();
    meta.insert("qwen35.block_count".into(), MetaValue::U32(5));
    meta.insert("qwen35.nextn_predict_layers".into(), MetaValue::U32(1));
    let flags = [true, true, true, false, false].map(MetaValue::Bool).to_vec();
    meta.insert("qwen35.attention.recurrent_layers".into(), MetaValue::Array(flags));
    let meta: Vec<(&str, MetaValue)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    // the MTP block: an attention layer's tensors again, and its nextn projection
    let mtp: Vec<(String, &condlm::formats::gguf::file::GgufTensorInfo)> = g
        .tensors
        .iter()
        .filter_map(|t| Some((t.name.strip_prefix("blk.3.")?, t)))
        .map(|(rest, t)| (format!("blk.4.{rest}"), t))
        .chain(
            g.tensors
                .iter()
                .find(|t| t.name == "blk.3.ffn_down.weight")
                .map(|t| ("blk.4.nextn.eh_proj.weight".into(), t)),
        )
        .collect();
    let mut tensors: Vec<TensorToWrite<'_>> = g
        .tensors
        .iter()
        .map(|t| TensorToWrite {
            name: &t.name,
            dims: t.dims.clone(),
            ty: t.ty,
            data: TensorData::Bytes(g.tensor_bytes(t).unwrap()),
        })
        .collect();
    for (name, t) in &mtp {
        tensors.push(TensorToWrite {
            name,
            dims: t.dims.clone(),
            ty: t.ty,
            data: TensorData::Bytes(g.tensor_bytes(t).unwrap()),
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("with-mtp.gguf");
    write_gguf(std::fs::File::create(&out).unwrap(), &meta, &tensors).unwrap();
    let with_mtp = load_model(p(&out)).unwrap().model;
    let without = load_model(p(&src)).unwrap().model;
    assert_eq!(with_mtp.config, without.config);
    for (ids, _) in reference_sequences("tiny-qwen35") {
        assert_eq!(forward_logits(&with_mtp, &ids), forward_logits(&without, &ids));
    }
}

/// A GGUF whose `block_count` is lower than the blocks it stores is refused, naming the first block it would
/// ignore: run as the shallower model it claims to be, it would score every row wrongly with exit 0.
#[test]
fn gguf_with_more_blocks_than_block_count_is_refused() {
    let src = fixture("tiny-llama-gguf/tiny-llama.gguf");
    let Some(&MetaValue::U32(blocks)) = GgufFile::open(&src).unwrap().get("llama.block_count") else {
        panic!("no block_count")
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fewer-blocks.gguf");
    rewrite(&src, &out, set("llama.block_count", MetaValue::U32(blocks - 1)), None);
    let err = format!("{:#}", load_model(p(&out)).err().expect("a lowered block_count must be refused"));
    let last = format!("model.layers.{}.", blocks - 1);
    assert!(err.contains("fewer-blocks.gguf") && err.contains("unknown tensor") && err.contains(&last), "{err}");
    assert!(err.contains("block_count"), "the message says what to check: {err}");
}

/// A quantized Qwen3.5 GGUF: its matrices kept in their blocks (value heads put back by moving whole rows; out_proj,
/// whose heads run across its columns, as f32) give the logits of the same file read all as f32 (value heads put
/// back on the f32 values), and the file is near the model it was made from.
#[test]
fn qwen35_quantized_gguf_reads_the_same_kept_in_blocks_or_as_f32() {
    use condlm::formats::load::load_model_as;
    use condlm::formats::weights::BaseDtype;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q8.gguf");
    let (ok, err) = condlm_export_typed(&fixture("tiny-qwen35"), &out, "q8_0");
    assert!(ok, "{err}");
    let packed = load_model_as(p(&out), BaseDtype::Stored).unwrap().model;
    assert!(packed.blocks[0].qkv[0].w.packed.is_some(), "in_proj_qkv kept as Q8_0 blocks");
    assert!(packed.blocks[0].o.w.packed.is_none(), "out_proj as f32");
    let dense = load_model_as(p(&out), BaseDtype::F32).unwrap().model;
    for (ids, want) in reference_sequences("tiny-qwen35") {
        let (a, b) = (forward_logits(&packed, &ids), forward_logits(&dense, &ids));
        assert!(max_abs_diff(&a, &b) <= 1e-5, "packed vs f32 {}", max_abs_diff(&a, &b));
        assert!(max_abs_diff(&a, &want) <= 5e-2, "Q8_0 vs transformers {}", max_abs_diff(&a, &want));
    }
}

fn condlm_export_typed(model: &Path, out: &Path, ty: &str) -> (bool, String) {
    let (ok, _, err) = condlm(&["export-gguf", "--model", p(model), "--out", p(out), "--type", ty]);
    (ok, err)
}
