//! The families beyond Llama/Qwen2/GPT-2 against transformers and PyTorch autograd on tiny random checkpoints
//! (tests/fixtures/make_family_fixtures.py): Qwen3 (per-head q/k RMSNorm before RoPE, head_dim ≠ hidden / heads),
//! SmolLM3 (layers without RoPE), Gemma 3 ((1 + w) norms, four per block, GeGLU, scaled embeddings and queries,
//! sliding and global layers with their own RoPE bases; the 4B+ models' linear scaling), Llama 3.1's RoPE scaling, Mistral (a sliding window on
//! every layer) and Phi-3 (fused qkv_proj / gate_up_proj; Phi-4-mini's partial rotary factor and LongRoPE
//! scaling), YaRN (Qwen2.5/Qwen3's long-context RoPE, on tiny-qwen3-yarn) and OLMo 2/3 (norms on the sublayers'
//! outputs only, q/k norms over all heads together; OLMo 3's sliding layers and YaRN on its global ones), every row
//! longer than the windows: logits, LoRA (every linear layer) and full fine-tuning gradients;
//! Qwen3 also through GGUF export (the other families' GGUFs: tests/gguf_families.rs); Phi-3's greedy decoding
//! and KV cache.
mod common;
use common::{
    condlm, copy_fixture, decode_step_and_forward, expected_json, fixture, forward_logits, load_f32_tensors,
    max_abs_diff, reference_sequences, rel_err,
};
use condlm::data::example::Example;
use condlm::formats::load::load_model;
use condlm::formats::peft::load_adapter;
use condlm::generate::decoder::Decoder;
use condlm::generate::{GenerateOptions, generate};
use condlm::network::activations::Activations;
use condlm::network::adapters::set_full_finetune;
use condlm::network::transformer::Transformer;
use condlm::train::objective::{ObjectiveScratch, forward_backward};

const FAMILIES: [&str; 12] = [
    "tiny-qwen3",
    "tiny-smollm3",
    "tiny-gemma3",
    "tiny-gemma3-linear",
    "tiny-mistral",
    "tiny-phi3",
    "tiny-phi4",
    "tiny-llama31",
    "tiny-qwen3-yarn",
    "tiny-olmo2",
    "tiny-olmo3",
    "tiny-qwen35",
];

fn model(name: &str) -> Transformer {
    let path = match name.starts_with('/') {
        true => name.into(),
        false => fixture(name),
    };
    load_model(path.to_str().unwrap()).unwrap().model
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
    let g = model("tiny-gemma3-linear").config;
    assert_eq!((g.rope_linear_factor, g.rope_theta, g.rope_local_theta), (Some(8.0), 1e6, Some(1e4)));
    let l = model("tiny-llama31").config.rope_scaling.unwrap();
    assert_eq!(
        (l.factor, l.low_freq_factor, l.high_freq_factor, l.original_max_position_embeddings),
        (8.0, 1.0, 4.0, 32.0)
    );
    let (ok, out, err) = condlm(&["info", fixture("tiny-gemma3").to_str().unwrap()]);
    assert!(ok, "{err}");
    for line in [
        "sliding window of 4 positions on 3 of 4 layers (global: 2), q·k scaled by",
        "RoPE base 1000000 (sliding layers: 10000)",
        "GeGLU (tanh GELU) MLP, 4 RMSNorms per block",
        "head dim 32, per-head q/k RMSNorm",
        "architecture  Gemma3ForCausalLM (computed by the Llama-family block)",
    ] {
        assert!(out.contains(line), "info lacks {line:?}:\n{out}");
    }
    // --chat-template prints the template itself.
    let (ok, out, err) = condlm(&["info", fixture("tiny-llama").to_str().unwrap(), "--chat-template"]);
    assert!(ok && out.contains("chat template:\n{% for message in messages %}"), "{err}{out}");
    let p = model("tiny-phi3");
    assert!(p.config.fused_projections() && p.config.rotary_dim == 16 && p.config.longrope.is_none());
    let names: Vec<&str> = p.blocks[0].linears().map(|l| l.name.as_str()).collect();
    let want = ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"];
    assert_eq!(names, want.map(|m| format!("model.layers.0.{m}")));
    let p = model("tiny-phi4");
    let l = p.config.longrope.as_ref().unwrap();
    assert_eq!((p.config.rotary_dim, l.original_max_positions, l.long_factor.len()), (12, 16, 6));
    // transformers' default: √(1 + ln(128 / 16) / ln 16)
    assert!((l.attention_factor as f64 - (1.0 + 8f64.ln() / 16f64.ln()).sqrt()).abs() < 1e-6);
    let o = model("tiny-olmo2");
    assert!(o.config.qk_norm_whole && !o.config.pre_norms && o.config.sliding_window.is_none());
    assert!(o.blocks[0].attn_norm.is_none() && o.blocks[0].mlp_norm.is_none() && o.blocks[0].post_norms.is_some());
    let (q, k) = o.blocks[0].qk_norm.as_ref().unwrap();
    assert_eq!((q.w.data.len(), k.w.data.len()), (64, 32), "q and k norms over all heads");
    let o = model("tiny-olmo3").config;
    assert_eq!((0..4).map(|i| o.window(i)).collect::<Vec<_>>(), [Some(4), Some(4), Some(4), None]);
    assert_eq!((0..4).map(|i| o.local_rope(i)).collect::<Vec<_>>(), [true, true, true, false]);
    assert_eq!((o.rope_theta, o.rope_local_theta, o.yarn.map(|y| y.factor)), (1e4, Some(1e4), Some(4.0)));
    let (ok, out, err) = condlm(&["info", fixture("tiny-olmo3").to_str().unwrap()]);
    assert!(ok, "{err}");
    for line in ["q/k RMSNorm over all heads together", "RMSNorm after attention and MLP", "YaRN scaling ×4"] {
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
        for (ids, want) in reference_sequences(name) {
            let diff = max_abs_diff(&forward_logits(&m, &ids), &want);
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
fn qwen3_gguf_export_keeps_the_model() {
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
}

/// YaRN's inverse frequencies and attention factor are transformers', for the fixture and for config.json's other
/// spellings and options (tiny-qwen3-yarn/yarn-variants.json: the ramp's ends, rounding, DeepSeek's mscale pair,
/// an explicit attention factor, where the original context and the base come from), and so are linear scaling's; without YaRN the fixture's logits move
/// far past the tolerance the families test holds them to.
#[test]
fn yarn_frequencies_match_transformers() {
    let close = |got: &[f32], want: &serde_json::Value, what: &str| {
        let want: Vec<f32> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g == w, "{what}: inverse frequency {i}: {g}, transformers' {w}");
        }
    };
    let mut m = model("tiny-qwen3-yarn");
    let rope = &expected_json("tiny-qwen3-yarn")["rope"];
    let y = m.config.yarn.expect("tiny-qwen3-yarn reads with YaRN");
    close(&m.config.rope_inv_freq(false), &rope["inv_freq"], "tiny-qwen3-yarn");
    assert_eq!(y.attention_factor, rope["attention_scaling"].as_f64().unwrap() as f32);
    assert_eq!(
        (y.factor, y.original_max_positions, y.beta_fast, y.beta_slow, y.truncate),
        (4.0, 4096, 32.0, 1.0, true)
    );
    let variants: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny-qwen3-yarn/yarn-variants.json")).unwrap()).unwrap();
    for v in variants.as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.json");
        std::fs::write(&path, v["config"].to_string()).unwrap();
        let c = condlm::network::config::Config::from_hf_json(&path).unwrap();
        close(&c.rope_inv_freq(false), &v["inv_freq"], name);
        let want = v["attention_factor"].as_f64().unwrap() as f32;
        let scale = match &c.yarn {
            Some(y) => y.attention_factor,
            None => 1.0,
        };
        assert_eq!(scale, want, "{name}: attention factor");
        assert_eq!(c.yarn.is_some(), !name.starts_with("linear"), "{name}");
    }
    // the check can fail: the fixture's rows without YaRN
    let (ids, want) = &reference_sequences("tiny-qwen3-yarn")[2];
    m.config.yarn = None;
    let off = max_abs_diff(&forward_logits(&m, ids), want);
    assert!(off > 1e-2, "without YaRN the logits moved only {off}");
}

/// YaRN settings that are not numbers, or out of range, are errors naming the key.
#[test]
fn yarn_config_errors_name_the_key() {
    let read = |edit: &dyn Fn(&mut serde_json::Value)| edited_config("tiny-qwen3-yarn", edit);
    let err = |edit: &dyn Fn(&mut serde_json::Value)| format!("{:#}", read(edit).unwrap_err());
    let e = err(&|v| v["rope_parameters"]["factor"] = serde_json::json!(0.5));
    assert!(e.contains("config.json: rope_parameters.factor is 0.5") && e.contains("≥ 1"), "{e}");
    let e = err(&|v| {
        v["rope_parameters"].as_object_mut().unwrap().remove("factor");
    });
    assert!(e.contains("rope_parameters is of type yarn but has no factor"), "{e}");
    let e = err(&|v| v["rope_parameters"]["beta_fast"] = serde_json::json!("fast"));
    assert!(e.contains("rope_parameters.beta_fast is \"fast\""), "{e}");
    let e = err(&|v| v["rope_parameters"]["beta_slow"] = serde_json::json!(-1.0));
    assert!(e.contains("rope_parameters.beta_slow is -1: the ramp's ends are numbers of rotations, > 0"), "{e}");
    let e = err(&|v| v["rope_parameters"]["truncate"] = serde_json::json!(1));
    assert!(e.contains("rope_parameters.truncate is 1: true or false"), "{e}");
    let e = err(&|v| v["rope_parameters"]["attention_factor"] = serde_json::json!(-1.0));
    assert!(e.contains("rope_parameters.attention_factor is -1"), "{e}");
    let e = err(&|v| v["rope_parameters"] = serde_json::json!({"rope_type": "linear", "factor": "4"}));
    assert!(e.contains("rope_parameters.factor is \"4\": linear RoPE scaling needs a positive number"), "{e}");
    let e = err(&|v| v["original_max_position_embeddings"] = serde_json::json!(0));
    assert!(e.contains("rope_parameters: original_max_position_embeddings is 0"), "{e}");
    let e = err(&|v| v["original_max_position_embeddings"] = serde_json::json!(64.5));
    assert!(e.contains("64.5 is not a whole number"), "{e}");
    let e = err(&|v| {
        let p = v.as_object_mut().unwrap().remove("rope_parameters").unwrap();
        v["rope_scaling"] = serde_json::json!({"type": "dynamic", "factor": p["factor"]});
    });
    assert!(e.contains("rope_scaling has type \"dynamic\", which is not supported (supported: llama3, yarn"), "{e}");
    let (ok, out, err) = condlm(&["info", fixture("tiny-qwen3-yarn").to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("YaRN scaling ×4 from 4096 positions (attention factor 1.1386)"), "{out}");
}

/// Greedy decoding over the KV cache gives transformers' ids for every family, for Phi-4-mini's RoPE also when the
/// sequence crosses LongRoPE's original context while decoding (transformers then recomputes its cache with the
/// long factors; condlm re-rotates the cached keys), alone and batched with prefill mixed into decode steps.
#[test]
fn greedy_ids_match_transformers() {
    for name in FAMILIES {
        let m = load_model(fixture(name).to_str().unwrap()).unwrap();
        let exp = expected_json(name);
        let cases = exp["greedy"].as_array().unwrap();
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
        };
        let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt_ids"])).collect();
        let wants: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["output_ids"])).collect();
        for batch in [1, 3] {
            for (p, want) in prompts.iter().zip(&wants) {
                let mut opts = GenerateOptions::greedy(want.len(), 2);
                opts.batch = batch;
                let got = generate(&m.model, &m.tokenizer, std::slice::from_ref(p), &opts, |_| {}).unwrap();
                assert_eq!(&got[0].ids, want, "{name}: prompt {p:?}");
            }
            let mut opts = GenerateOptions::greedy(16, 2);
            opts.batch = batch;
            let got = generate(&m.model, &m.tokenizer, &prompts, &opts, |_| {}).unwrap();
            for (g, want) in got.iter().zip(&wants) {
                assert_eq!(g.ids[..want.len()], want[..], "{name}: batch {batch}");
            }
        }
    }
}

/// Decoding over the cache gives the full forward pass's logits at every step — for Phi-4-mini's RoPE with a
/// sequence that crosses LongRoPE's original context of 16 while decoding and one past it from the prefill on —
/// with an adapter on the fused modules.
#[test]
fn phi3_kv_cache_logits_match_full_forward() {
    for name in ["tiny-phi3", "tiny-phi4"] {
        let mut m = model(name);
        load_adapter(&fixture(&format!("{name}/lora-init")), &mut m).unwrap();
        let vocab = m.config.vocab_size;
        let mut seqs = vec![vec![5u32, 9, 11], (0..20).map(|i| 100 + 7 * i).collect()];
        let mut dec = Decoder::new(&m, seqs.len(), 64, 64).unwrap();
        let mut acts = Activations::default();
        for step in 0..16 {
            let (got, want) = decode_step_and_forward(&mut dec, &m, &seqs, step == 0, &mut acts);
            for s in 0..seqs.len() {
                let diff = max_abs_diff(&got[s * vocab..][..vocab], &want[s * vocab..][..vocab]);
                assert!(diff <= 1e-4, "{name} step {step} sequence {s}: max |Δ logit| {diff}");
            }
            for (s, seq) in seqs.iter_mut().enumerate() {
                seq.push(condlm::generate::sampling::argmax(&got[s * vocab..][..vocab]) as u32);
            }
        }
        assert_eq!((seqs[0].len(), seqs[1].len()), (19, 36));
    }
}

/// `info` names Phi-4-mini's RoPE; the config.json condlm writes for a Phi-3 model (GGUF sources) reads back as
/// the same model config, LongRoPE included.
#[test]
fn phi3_info_and_written_config() {
    let dir = fixture("tiny-phi4");
    let (ok, out, err) = condlm(&["info", dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("the first 12 of 16 features") && out.contains("longrope scaling"), "{out}");
    assert!(out.contains("fused qkv_proj and gate_up_proj"), "{out}");
    let c = model("tiny-phi4").config;
    let written = condlm::formats::hf_export::config_json(&c, Some(0)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.json");
    std::fs::write(&path, serde_json::to_string(&written).unwrap()).unwrap();
    assert_eq!(condlm::network::config::Config::from_hf_json(&path).unwrap(), c);
}

/// The config.json of fixture `name` after `edit`, read as condlm reads it.
fn edited_config(name: &str, edit: &dyn Fn(&mut serde_json::Value)) -> anyhow::Result<condlm::network::config::Config> {
    let path = fixture(&format!("{name}/config.json"));
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.json");
    std::fs::write(&path, v.to_string()).unwrap();
    condlm::network::config::Config::from_hf_json(&path)
}

/// Gemma 3 4B+'s linear RoPE scaling in transformers 4's spelling (top-level `rope_scaling`, `rope_theta`,
/// `rope_local_base_freq`) reads as the transformers 5 one; a factor that is not positive, or another type, is an
/// error naming the key.
#[test]
fn gemma3_linear_scaling_spellings_and_errors() {
    let read = |edit: &dyn Fn(&mut serde_json::Value)| edited_config("tiny-gemma3-linear", edit);
    let old = read(&|v| {
        v.as_object_mut().unwrap().remove("rope_parameters");
        v["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 8.0});
        v["rope_theta"] = 1e6.into();
        v["rope_local_base_freq"] = 1e4.into();
    });
    assert_eq!(old.unwrap(), model("tiny-gemma3-linear").config);
    let e = read(&|v| v["rope_parameters"]["full_attention"]["factor"] = 0.0.into()).unwrap_err().to_string();
    assert!(e.contains("rope_parameters.full_attention.factor is 0"), "{e}");
    let e = read(&|v| v["rope_parameters"]["full_attention"]["rope_type"] = "yarn".into()).unwrap_err().to_string();
    assert!(e.contains("rope_parameters.full_attention has rope_type \"yarn\""), "{e}");
    let e =
        read(&|v| v["rope_parameters"]["sliding_attention"]["rope_type"] = "linear".into()).unwrap_err().to_string();
    assert!(e.contains("sliding_attention has rope_type \"linear\""), "{e}");
}

/// OLMo 3's config.json as Olmo-3-7B's is spelled (transformers 4: top-level `rope_theta` and a `rope_scaling` that
/// applies to the full-attention layers) reads as the nested transformers 5 spelling; Olmo3Config's defaults (a
/// window of 4096, every 4th layer global) apply when the keys are absent; what transformers would not run is an
/// error naming the key.
#[test]
fn olmo3_config_spellings_and_errors() {
    let read = |edit: &dyn Fn(&mut serde_json::Value)| edited_config("tiny-olmo3", edit);
    let want = model("tiny-olmo3").config;
    let legacy = read(&|v| {
        let mut p = v.as_object_mut().unwrap().remove("rope_parameters").unwrap();
        v["rope_theta"] = p["full_attention"]["rope_theta"].take();
        p["full_attention"].as_object_mut().unwrap().remove("rope_theta");
        v["rope_scaling"] = p["full_attention"].clone();
    });
    assert_eq!(legacy.unwrap(), want);
    let defaults = read(&|v| {
        let o = v.as_object_mut().unwrap();
        o.remove("sliding_window");
        o.remove("layer_types");
    })
    .unwrap();
    assert_eq!((0..4).map(|i| defaults.window(i)).collect::<Vec<_>>(), [Some(4096), Some(4096), Some(4096), None]);
    let err = |edit: &dyn Fn(&mut serde_json::Value)| format!("{:#}", read(edit).unwrap_err());
    let e = err(&|v| v["rope_parameters"]["sliding_attention"]["rope_type"] = "yarn".into());
    assert!(e.contains("rope_parameters.sliding_attention has rope_type \"yarn\""), "{e}");
    let e = err(&|v| v["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0}));
    assert!(e.contains("must be given per layer type"), "{e}");
    let e = err(&|v| v["sliding_window"] = serde_json::Value::Null);
    assert!(e.contains("sliding_window is null, but an OLMo 3 slides"), "{e}");
    // a legacy rope_scaling beside the nested spelling updates the full-attention object, as transformers 5 does
    let merged = read(&|v| {
        let yarn = v["rope_parameters"]["full_attention"].take();
        v["rope_parameters"]["full_attention"] = serde_json::json!({"rope_type": "default", "rope_theta": 1e4});
        v["rope_scaling"] = yarn;
    });
    assert_eq!(merged.unwrap(), want);
}

/// Phi-3 configs in the Hub's spelling (`rope_scaling` with the old type name `su`, as Phi-3-mini-128k writes it)
/// read like transformers reads them; what condlm cannot run is an error naming the key.
#[test]
fn phi3_config_spellings_and_errors() {
    let read = |edit: &dyn Fn(&mut serde_json::Value)| edited_config("tiny-phi4", edit);
    let want = model("tiny-phi4").config;
    let legacy = read(&|v| {
        let p = v.as_object_mut().unwrap().remove("rope_parameters").unwrap();
        v["rope_theta"] = p["rope_theta"].clone();
        v["rope_scaling"] = serde_json::json!({"type": "su", "short_factor": p["short_factor"],
                                               "long_factor": p["long_factor"]});
    });
    assert_eq!(legacy.unwrap(), want);
    let err = |edit: &dyn Fn(&mut serde_json::Value)| format!("{:#}", read(edit).unwrap_err());
    let e = err(&|v| v["rope_parameters"]["short_factor"] = serde_json::json!([1.0, 2.0]));
    assert!(e.contains("rope_scaling.short_factor has 2 entries; rotary dim 12 needs 6"), "{e}");
    let e = err(&|v| v["rope_parameters"]["rope_type"] = serde_json::json!("dynamic"));
    assert!(e.contains("rope_scaling type \"dynamic\" is not supported for Phi-3"), "{e}");
    let e = err(&|v| v["partial_rotary_factor"] = serde_json::json!(0.7));
    assert!(e.contains("partial_rotary_factor 0.7 of head dim 16 gives 11"), "{e}");
    // without LongRoPE: the partial rotary factor alone, from transformers 5's rope_parameters
    let plain = read(&|v| {
        v.as_object_mut().unwrap().remove("partial_rotary_factor");
        v["rope_parameters"] =
            serde_json::json!({"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5});
    });
    let plain = plain.unwrap();
    assert_eq!((plain.rotary_dim, plain.longrope), (8, None));
}

/// `merge` folds an adapter on the fused modules into the Phi-3 weights: the merged folder gives the logits PEFT
/// computes with the adapter unmerged.
#[test]
fn phi3_merge_keeps_the_adapted_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let (base, adapter) = (fixture("tiny-phi4"), fixture("interop/tiny-phi4-condlm-adapter"));
    let args = ["merge", "--model", base.to_str().unwrap(), "--adapter", adapter.to_str().unwrap()];
    let (ok, _, err) = condlm(&[&args[..], &["--out", out.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    let m = load_model(out.to_str().unwrap()).unwrap().model;
    let want = load_f32_tensors(&fixture("interop/tiny-phi4-peft-logits.safetensors"));
    for (i, (ids, _)) in reference_sequences("tiny-phi4").iter().enumerate() {
        let diff = max_abs_diff(&forward_logits(&m, ids), &want[&format!("logits.{i}")].1);
        assert!(diff <= 1e-4, "row {i}: max |Δ logit| vs PEFT {diff}");
    }
}

/// GPT-2 configs whose attention is not scaled by 1/√head_dim (as some GPT-2 variants train) are refused by name,
/// not run with the wrong scale; the flags at their defaults read as the fixture does.
#[test]
fn gpt2_attention_scale_flags() {
    let read = |edit: &dyn Fn(&mut serde_json::Value)| edited_config("tiny-gpt2", edit);
    let defaults = read(&|v| {
        v["scale_attn_weights"] = serde_json::json!(true);
        v["scale_attn_by_inverse_layer_idx"] = serde_json::json!(false);
        v["reorder_and_upcast_attn"] = serde_json::json!(true);
    });
    assert_eq!(defaults.unwrap(), model("tiny-gpt2").config);
    let e = format!("{:#}", read(&|v| v["scale_attn_weights"] = serde_json::json!(false)).unwrap_err());
    assert!(e.contains("scale_attn_weights = false") && e.contains("not supported"), "{e}");
    let e = format!("{:#}", read(&|v| v["scale_attn_by_inverse_layer_idx"] = serde_json::json!(true)).unwrap_err());
    assert!(e.contains("scale_attn_by_inverse_layer_idx = true") && e.contains("not supported"), "{e}");
}

/// The config.json `merge`/`--full` write for a base that came without one (a GGUF) reads back as the same
/// model, with the integer fields transformers' config classes require as integers (Gemma 3's
/// `query_pre_attn_scalar` was written as 256.0, which transformers 5 refuses to load).
#[test]
fn a_written_config_reads_back_as_the_model_with_integer_fields() {
    // HF folders, and GGUFs whose config is rebuilt from llama.cpp's keys and tensors (RoPE scaling, LongRoPE,
    // layers without RoPE)
    for name in [
        "tiny-gemma3",
        "tiny-llama",
        "tiny-qwen2",
        "tiny-phi3",
        "tiny-gpt2",
        "tiny-smollm3",
        "tiny-llama31",
        "tiny-phi4",
        "tiny-gemma3-linear",
        "tiny-qwen3-yarn",
        "tiny-olmo2",
        "tiny-olmo3",
        "converter/tiny-olmo2.gguf",
        "converter/tiny-olmo3.gguf",
        "converter/tiny-qwen3-yarn.gguf",
        "converter/tiny-gemma3-linear.gguf",
        "converter/tiny-llama31.gguf",
        "converter/tiny-phi4.gguf",
        "converter/tiny-smollm3.gguf",
        "converter/tiny-gemma3.gguf",
        "tiny-qwen35",
        "converter/tiny-qwen35.gguf",
    ] {
        let want = model(name).config;
        let v = condlm::formats::hf_export::config_json(&want, None).unwrap();
        if name == "tiny-gemma3" {
            let hf: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(fixture("tiny-gemma3/config.json")).unwrap()).unwrap();
            assert!(v["query_pre_attn_scalar"].is_u64(), "{}", v["query_pre_attn_scalar"]);
            assert_eq!(v["query_pre_attn_scalar"], hf["query_pre_attn_scalar"]);
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.json");
        std::fs::write(&path, v.to_string()).unwrap();
        let back = condlm::network::config::Config::from_hf_json(&path).unwrap();
        // a GGUF's architecture is llama.cpp's name ("llama"), config.json's the class ("LlamaForCausalLM")
        assert_eq!(condlm::network::config::Config { architecture: want.architecture.clone(), ..back }, want, "{name}");
    }
}

/// Qwen3.5: Gated DeltaNet in the layers `layer_types` names (else every 4th layer is attention), a quarter of each
/// head rotated by default; bad shapes are errors naming the key; what cannot run yet (a device) is refused with the
/// way out.
#[test]
fn qwen35_layers_config_and_refusals() {
    let q = model("tiny-qwen35");
    let c = &q.config;
    assert_eq!((0..4).map(|i| c.is_linear_layer(i)).collect::<Vec<_>>(), [true, true, true, false]);
    assert!(q.blocks[0].delta_net.is_some() && q.blocks[0].qkv.len() == 4 && q.blocks[3].delta_net.is_none());
    assert!(c.attn_output_gate && c.norm_plus_one && c.qk_norm && c.rotary_dim == 8);
    // decoding keeps keys and values for the attention layer only
    assert_eq!(condlm::network::kv_cache::KvCache::for_model(c, 2, 16).layers, 1);
    let read = |edit: &dyn Fn(&mut serde_json::Value)| edited_config("tiny-qwen35", edit);
    let without_types = read(&|v| {
        v.as_object_mut().unwrap().remove("layer_types");
        v["rope_parameters"].as_object_mut().unwrap().remove("partial_rotary_factor");
    })
    .unwrap();
    assert_eq!(without_types.linear_layers, c.linear_layers, "every 4th layer is attention by default");
    assert_eq!(without_types.rotary_dim, 8, "Qwen3_5TextConfig's default partial_rotary_factor is 0.25");
    let every_2nd = read(&|v| {
        v.as_object_mut().unwrap().remove("layer_types");
        v["full_attention_interval"] = 2.into();
    })
    .unwrap();
    assert_eq!(every_2nd.linear_layers, [true, false, true, false]);
    let err = read(&|v| v["layer_types"][1] = "sliding_attention".into()).unwrap_err();
    assert!(format!("{err:#}").contains("layer_types entry \"sliding_attention\" is not a Qwen3.5 layer"), "{err:#}");
    let err = read(&|v| v["linear_num_value_heads"] = 3.into()).unwrap_err();
    assert!(format!("{err:#}").contains("linear_num_value_heads 3 is not a multiple of linear_num_key_heads 2"));

    let m = fixture("tiny-qwen35");
    let data = fixture("data/pairs.jsonl");
    // the device path (here on the CPU's kernels) scores it as the CPU does
    let score = |device: &str| -> Vec<f64> {
        let (ok, out, err) =
            condlm(&["score", "--model", m.to_str().unwrap(), "--device", device, "--data", data.to_str().unwrap()]);
        assert!(ok, "{err}");
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["logprob"].as_f64().unwrap())
            .collect()
    };
    let (dev, cpu) = (score("reference"), score("cpu"));
    assert_eq!(dev.len(), 24);
    assert!(dev.iter().zip(&cpu).all(|(d, c)| (d - c).abs() <= 1e-6 * c.abs()), "{dev:?} vs {cpu:?}");
    let (ok, out, err) = condlm(&["info", m.to_str().unwrap()]);
    assert!(ok && out.contains("Gated DeltaNet in layers [0, 1, 2]"), "{err}{out}");
}

/// Qwen3.5 as every release stores it (Qwen3_5ForConditionalGeneration: text under model.language_model., a vision
/// tower beside it): condlm runs the text model as transformers does, with its gradients; `merge` keeps the vision
/// tower's tensors as they were.
#[test]
fn qwen35_multimodal_checkpoint_runs_its_text_model_and_keeps_the_rest() {
    let m = model("tiny-qwen35-vl");
    assert_eq!(m.config.text_prefix(), "model.language_model");
    assert_eq!(m.embed.name, "model.language_model.embed_tokens.weight");
    for (ids, want) in reference_sequences("tiny-qwen35-vl") {
        let diff = max_abs_diff(&forward_logits(&m, &ids), &want);
        assert!(diff <= 1e-4, "max |Δ logit| vs transformers {diff}");
    }
    // the text model's gradients are tiny-qwen35's, under the checkpoint's names
    let mut m = model("tiny-qwen35-vl");
    set_full_finetune(&mut m, false);
    let loss = step(&mut m, "tiny-qwen35");
    for p in m.params_mut() {
        p.name = p.name.replacen("model.language_model.", "model.", 1);
    }
    let want = expected_json("tiny-qwen35")["full_loss"].as_f64().unwrap();
    check_grads(&mut m, "tiny-qwen35/full-grads.safetensors", "", want, loss);

    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("merged");
    let (src, adapter) = (fixture("tiny-qwen35-vl"), dir.path().join("run"));
    let data = fixture("data/pairs.jsonl");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (ok, _, err) = condlm(&[
        "train",
        "--model",
        &s(&src),
        "--data",
        &s(&data),
        "--output-dir",
        &s(&adapter),
        "--max-steps",
        "2",
        "--lora-targets",
        "all-linear",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) =
        condlm(&["merge", "--model", &s(&src), "--adapter", &s(&adapter.join("adapter")), "--out", &s(&merged)]);
    assert!(ok, "{err}");
    let (before, after) =
        (load_f32_tensors(&src.join("model.safetensors")), load_f32_tensors(&merged.join("model.safetensors")));
    let vision: Vec<&String> = before.keys().filter(|k| k.starts_with("model.visual.")).collect();
    assert!(!vision.is_empty());
    for k in vision {
        assert_eq!(before[k], after[k], "{k} kept as it was");
    }
    assert_eq!(before.len(), after.len(), "every tensor of the checkpoint is in the merged one");

    // a text checkpoint with Qwen3.5's multi-token-prediction block (mtp.*): run without it, kept by merge
    let text = copy_fixture("tiny-qwen35", &dir.path().join("with-mtp"));
    let mut tensors = load_f32_tensors(&text.join("model.safetensors"));
    tensors.insert("mtp.fc.weight".into(), (vec![64, 128], vec![0.5; 64 * 128]));
    common::save_f32_tensors(&text.join("model.safetensors"), &tensors);
    let with_mtp = model(text.to_str().unwrap());
    for (ids, want) in reference_sequences("tiny-qwen35") {
        assert!(max_abs_diff(&forward_logits(&with_mtp, &ids), &want) <= 1e-4);
    }
    let merged = dir.path().join("merged-mtp");
    let (ok, _, err) = condlm(&[
        "merge",
        "--model",
        &s(&text),
        "--adapter",
        &s(&fixture("tiny-qwen35/lora-init")),
        "--out",
        &s(&merged),
        "--ignore-base-mismatch",
    ]);
    assert!(ok, "{err}");
    assert_eq!(load_f32_tensors(&merged.join("model.safetensors"))["mtp.fc.weight"], tensors["mtp.fc.weight"]);
}
