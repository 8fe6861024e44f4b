//! HF folder export (`model::export::save_hf_folder`) and `condlm merge`:
//! - export round trip: every fixture model (HF, sharded HF, GGUF) saved as an HF folder and loaded
//!   back computes bit-identical logits, with the same config and tokenizer; the file holds every
//!   tensor under its HF name and layout (GPT-2 Conv1D (in, out), no lm_head.weight when tied);
//! - merge: the merged folder's logits equal the unmerged adapter's (condlm) and PEFT's recorded
//!   logits within 1e-4 (Llama, Qwen2, GPT-2 with fan_in_fan_out, and a GGUF base);
//! - bad input: an adapter for another base, an unwritable or occupied `--out` → a clear error and
//!   no output folder.
mod common;
use common::{copy_dir, fixture, load_f32_tensors, max_abs_diff, reference_sequences, save_f32_tensors};
use condlm::formats::hf_export::save_hf_folder;
use condlm::formats::load::{LoadedModel, load_model};
use condlm::formats::peft::load_adapter;
use condlm::kernels::lm_head::{HeadScratch, logits};
use condlm::network::activations::Activations;
use condlm::network::adapters::attach;
use condlm::network::batch::PackedBatch;
use condlm::network::lora::LoraConfig;
use condlm::network::transformer::{Mode, Transformer};
use std::path::Path;
use std::process::Command;

/// Full logits (len, vocab) of each sequence, run together as one packed (ragged) batch.
fn all_logits(model: &Transformer, seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let batch = PackedBatch::new(seqs);
    let mut acts = Activations::default();
    model.forward(&batch, &mut acts, Mode::Infer);
    let d = model.config.hidden_size;
    batch
        .seqs
        .iter()
        .map(|r| {
            let rows: Vec<usize> = r.clone().collect();
            logits(&acts.x[..batch.len() * d], d, model.head(), &rows, &mut HeadScratch::default())
        })
        .collect()
}

fn ids_of(dir: &str) -> Vec<Vec<u32>> {
    reference_sequences(dir).into_iter().map(|(ids, _)| ids).collect()
}

fn load(p: &Path) -> LoadedModel {
    load_model(p.to_str().unwrap()).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()))
}

/// Runs the binary; returns (success, stderr).
fn condlm(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_condlm")).args(args).args(["--threads", "2"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.success(), stderr)
}

fn merge(model: &Path, adapter: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "merge",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    condlm(&args)
}

/// Names of the entries of `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

const PROBES: &[&str] = &[
    "name[The Eagle], eatType[coffee shop], food[French], priceRange[£20-25]",
    "<|im_start|>user\nHi there  42<|im_end|>",
    "  spaces\tand\r\nnewlines 1234567",
];

/// Saves `src` as an HF folder, reloads it, and checks logits (bit for bit), config and tokenizer.
fn round_trip(src: &str, ids_dir: &str) -> (tempfile::TempDir, LoadedModel, LoadedModel) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("export");
    let a = load(&fixture(src));
    save_hf_folder(&out, &a.model, &a.tokenizer, &a.files, None).unwrap();
    let b = load(&out);
    let seqs = ids_of(ids_dir);
    let (la, lb) = (all_logits(&a.model, &seqs), all_logits(&b.model, &seqs));
    for (i, (x, y)) in la.iter().zip(&lb).enumerate() {
        let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{src}: sequence {i}: logits differ after export (max |Δ| {})", max_abs_diff(x, y));
    }
    let mut ca = a.model.config.clone();
    if src.ends_with(".gguf") {
        ca.architecture = b.model.config.architecture.clone();
    }
    assert_eq!(ca, b.model.config, "{src}: config changed");
    let (ta, tb) = (&a.tokenizer, &b.tokenizer);
    assert_eq!((&ta.prefix, ta.eos_id, &ta.chat_template), (&tb.prefix, tb.eos_id, &tb.chat_template), "{src}");
    for p in PROBES {
        assert_eq!(ta.encode(p).unwrap(), tb.encode(p).unwrap(), "{src}: tokenizer differs on {p:?}");
    }
    (tmp, a, b)
}

#[test]
fn hf_exports_round_trip_bit_for_bit_with_the_source_tensors() {
    for (src, file_src) in [
        ("tiny-llama", "tiny-llama"),
        ("tiny-qwen2", "tiny-qwen2"),
        ("tiny-gpt2", "tiny-gpt2"),
        ("tiny-llama-sharded", "tiny-llama"),
    ] {
        let (tmp, _, _) = round_trip(src, src);
        let out = tmp.path().join("export");
        // The exported file holds exactly the source's tensors, names, HF shapes and bits
        // (GPT-2 Conv1D as (in, out); no lm_head.weight for the tied tiny-llama/tiny-gpt2).
        let want = load_f32_tensors(&fixture(file_src).join("model.safetensors"));
        let got = load_f32_tensors(&out.join("model.safetensors"));
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{src}: tensor names");
        for (name, (shape, data)) in &want {
            assert_eq!(&got[name].0, shape, "{src}: {name} shape");
            assert!(got[name].1.iter().zip(data).all(|(a, b)| a.to_bits() == b.to_bits()), "{src}: {name} values");
        }
        let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(meta.get("format").map(String::as_str), Some("pt"), "{src}");
        // config.json and the tokenizer files are the source's, byte for byte.
        for name in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
            let (a, b) = (std::fs::read(fixture(src).join(name)).unwrap(), std::fs::read(out.join(name)).unwrap());
            assert!(a == b, "{src}: {name} is not a verbatim copy");
        }
        if src == "tiny-qwen2" {
            assert!(out.join("chat_template.jinja").is_file());
        }
        assert!(!out.join("model.safetensors.index.json").exists(), "{src}: a single file is written");
    }
}

#[test]
fn gguf_export_round_trips_bit_for_bit() {
    let (tmp, a, _) = round_trip("tiny-llama-gguf/tiny-llama.gguf", "tiny-llama-gguf");
    let out = tmp.path().join("export");
    assert_eq!(
        entries(&out),
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"].map(String::from)
    );
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["torch_dtype"], "float32");
    assert_eq!(
        (cfg["bos_token_id"].as_u64(), cfg["eos_token_id"].as_u64(), cfg["pad_token_id"].as_u64()),
        (Some(0), Some(2), Some(2))
    );
    assert_eq!(cfg["rms_norm_eps"].as_f64(), Some(1e-5));
    // Q/K rows come out un-permuted: the exported q_proj equals tiny-llama's HF q_proj (stored F32 in the GGUF).
    let got = load_f32_tensors(&out.join("model.safetensors"));
    let hf = load_f32_tensors(&fixture("tiny-llama/model.safetensors"));
    assert!(!got.contains_key("lm_head.weight"));
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight"] {
        assert_eq!(got[name], hf[name], "{name}");
    }
    let tc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!((tc["bos_token"].as_str(), tc["eos_token"].as_str()), (Some("<|endoftext|>"), Some("<|im_end|>")));
    assert_eq!(tc["chat_template"].as_str(), a.tokenizer.chat_template.as_deref());
    assert_eq!(tc["add_bos_token"], false);
}

#[test]
fn export_writes_what_the_params_hold_and_refuses_attached_adapters() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = load(&fixture("tiny-gpt2"));
    let seqs = ids_of("tiny-gpt2");
    let before = all_logits(&m.model, &seqs);
    // A "fine-tuned" model: change a Conv1D weight (transposed on save) and the tied embedding.
    for (i, v) in m.model.blocks[1].qkv[0].w.data.iter_mut().enumerate() {
        *v += 0.01 * ((i % 7) as f32 - 3.0);
    }
    m.model.embed.data[5] += 0.5;
    let tuned = all_logits(&m.model, &seqs);
    assert!(max_abs_diff(&before[0], &tuned[0]) > 1e-3);
    let out = tmp.path().join("tuned");
    save_hf_folder(&out, &m.model, &m.tokenizer, &m.files, None).unwrap();
    let back = all_logits(&load(&out).model, &seqs);
    assert_eq!(back, tuned);

    let cfg = LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, rslora: false, targets: vec!["c_attn".into()] };
    attach(&mut m.model, &cfg, 1).unwrap();
    let out2 = tmp.path().join("with-lora");
    let err = format!("{:#}", save_hf_folder(&out2, &m.model, &m.tokenizer, &m.files, None).unwrap_err());
    assert!(err.contains("LoRA adapters attached") && err.contains("merge"), "{err}");
    assert!(!out2.exists());
}

/// Merges `adapter` into `base` with the binary, checks the merged folder's logits against the unmerged
/// (base + adapter) ones on the reference ids of `ids_dir`, and returns the merged logits.
fn merge_and_compare(base: &str, adapter: &str, ids_dir: &str) -> Vec<Vec<f32>> {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let (ok, err) = merge(&fixture(base), &fixture(adapter), &out, &[]);
    assert!(ok, "{base} + {adapter}: {err}");
    assert!(err.contains("merged") && err.contains("LoRA adapters"), "{err}");
    let seqs = ids_of(ids_dir);
    let merged = all_logits(&load(&out).model, &seqs);
    let mut m = load(&fixture(base));
    let plain = all_logits(&m.model, &seqs);
    load_adapter(&fixture(adapter), &mut m.model).unwrap();
    let unmerged = all_logits(&m.model, &seqs);
    for (i, (a, b)) in merged.iter().zip(&unmerged).enumerate() {
        let d = max_abs_diff(a, b);
        assert!(d <= 1e-4, "{base} + {adapter}: sequence {i}: merged vs unmerged max |Δ| {d}");
        // The adapter (B ≠ 0) changes the logits, so this compares something.
        assert!(max_abs_diff(a, &plain[i]) > 1e-2, "{base} + {adapter}: the adapter had no effect");
    }
    merged
}

#[test]
fn merged_llama_matches_unmerged_and_peft() {
    let merged = merge_and_compare("tiny-llama", "train/tiny-llama-lora-init", "tiny-llama");
    let peft = reference_sequences("tiny-llama");
    let bytes = std::fs::read(fixture("train/tiny-llama-lora-logits.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (i, (ids, _)) in peft.iter().enumerate() {
        let want_ids: Vec<u32> = st
            .tensor(&format!("input_ids.{i}"))
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
            .collect();
        assert_eq!(&want_ids, ids);
        let want: Vec<f32> = st
            .tensor(&format!("logits.{i}"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let d = max_abs_diff(&merged[i], &want);
        assert!(d <= 1e-4, "sequence {i}: merged vs PEFT max |Δ| {d}");
    }
}

#[test]
fn merged_gpt2_and_qwen2_match_unmerged() {
    merge_and_compare("tiny-gpt2", "train/tiny-gpt2-lora-init", "tiny-gpt2");
    merge_and_compare("tiny-qwen2", "train/tiny-qwen2-lora-init", "tiny-qwen2");
}

#[test]
fn merge_onto_a_gguf_base_writes_an_hf_folder() {
    merge_and_compare("tiny-llama-gguf/tiny-llama.gguf", "train/tiny-llama-lora-init", "tiny-llama-gguf");
}

#[test]
fn adapter_for_another_base_is_refused_without_output() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let (ok, err) = merge(&fixture("tiny-llama"), &fixture("train/tiny-gpt2-lora-init"), &out, &[]);
    assert!(!ok);
    assert!(err.contains("different base model") && err.contains("tiny-gpt2-lora-init"), "{err}");
    assert!(!out.exists());
    assert!(entries(tmp.path()).is_empty(), "left behind: {:?}", entries(tmp.path()));
    // Same shapes but another base (tiny-qwen2's adapter on tiny-llama): refused, merged with
    // --ignore-base-mismatch and a warning naming both.
    let (ok, err) = merge(&fixture("tiny-llama"), &fixture("train/tiny-qwen2-lora-init"), &out, &[]);
    assert!(!ok && err.contains("different base model") && err.contains("--ignore-base-mismatch"), "{err}");
    assert!(!out.exists());
    let (ok, err) =
        merge(&fixture("tiny-llama"), &fixture("train/tiny-qwen2-lora-init"), &out, &["--ignore-base-mismatch"]);
    assert!(ok && err.contains("warning:") && err.contains("tiny-qwen2") && err.contains("tiny-llama"), "{err}");
    let (ok, err) = merge(&fixture("tiny-llama"), &fixture("train/tiny-llama-lora-init"), &tmp.path().join("m2"), &[]);
    assert!(ok && !err.contains("warning:"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(tmp.path().join("m2")).unwrap();
    let (ok, err) = merge(&fixture("tiny-llama"), &tmp.path().join("no-such-adapter"), &out, &[]);
    assert!(!ok && err.contains("no-such-adapter"), "{err}");
    assert!(entries(tmp.path()).is_empty());
}

/// An adapter finite on its own whose merged weights overflow (lora_alpha 1e30, one lora_B scaled by 1e20) is
/// refused by merge and by export-gguf (to f32, which would store the infinities) naming the weight; nothing is
/// written.
#[test]
fn a_merge_that_overflows_is_refused_naming_the_weight() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("huge-alpha");
    copy_dir(&fixture("interop/tiny-llama-condlm-adapter"), &adapter);
    let cfg_path = adapter.join("adapter_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["lora_alpha"] = serde_json::json!(1e30);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let weights = adapter.join("adapter_model.safetensors");
    let mut tensors = load_f32_tensors(&weights);
    let b = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight";
    tensors.get_mut(b).expect("the adapter has this tensor").1.iter_mut().for_each(|v| *v *= 1e20);
    save_f32_tensors(&weights, &tensors);
    let out = tmp.path().join("merged");
    let (ok, err) = merge(&fixture("tiny-llama"), &adapter, &out, &[]);
    let named = "model.layers.1.mlp.down_proj.weight is";
    assert!(!ok && err.contains(named) && err.contains("after merging"), "{err}");
    assert!(!out.exists());
    let gguf = tmp.path().join("merged.gguf");
    let (base, a, o) = (fixture("tiny-llama"), adapter.to_str().unwrap(), gguf.to_str().unwrap());
    let (ok, err) =
        condlm(&["export-gguf", "--model", base.to_str().unwrap(), "--adapter", a, "--out", o, "--type", "f32"]);
    assert!(!ok && err.contains("after merging"), "{err}");
    assert!(!gguf.exists());
    assert_eq!(entries(tmp.path()), ["huge-alpha"], "nothing else is left behind");
}

#[test]
fn out_folder_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, adapter) = (fixture("tiny-llama"), fixture("train/tiny-llama-lora-init"));
    // An occupied folder is refused without --force and left untouched; --force replaces an earlier model folder
    // only, never a folder holding anything else.
    let out = tmp.path().join("occupied");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    // A foreign file is named first, with or without --force, which would not help (and is not suggested).
    let (ok, err) = merge(&base, &adapter, &out, &[]);
    assert!(!ok && err.contains("notes.txt") && !err.contains("pass --force"), "{err}");
    assert_eq!(entries(&out), ["notes.txt"]);
    let (ok, err) = merge(&base, &adapter, &out, &["--force"]);
    assert!(!ok && err.contains("notes.txt") && err.contains("not part of a model folder"), "{err}");
    assert_eq!(entries(&out), ["notes.txt"]);
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    assert!(merge(&base, &adapter, &out, &[]).0);
    let (ok, err) = merge(&base, &adapter, &out, &[]);
    assert!(!ok && err.contains("not empty") && err.contains("--force"), "{err}");
    let (ok, err) = merge(&base, &adapter, &out, &["--force"]);
    assert!(ok, "{err}");
    assert!(out.join("model.safetensors").is_file());
    // An empty folder is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(merge(&base, &adapter, &empty, &[]).0);
    // Never over an input, even with --force.
    let copy = tmp.path().join("base-copy");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(&base).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let before = entries(&copy);
    let (ok, err) = merge(&copy, &adapter, &copy, &["--force"]);
    assert!(!ok && err.contains("input of this command"), "{err}");
    let (ok, err) = merge(&copy, &adapter, tmp.path(), &["--force"]);
    assert!(!ok && err.contains("input of this command"), "{err}");
    assert_eq!(entries(&copy), before);
    // A folder that cannot be created (its parent is a file).
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (ok, err) = merge(&base, &adapter, &file.join("merged"), &[]);
    assert!(!ok && err.contains("a-file"), "{err}");
    let (ok, err) = merge(&base, &adapter, &file, &["--force"]);
    assert!(!ok && err.contains("not a folder"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    assert!(entries(tmp.path()).iter().all(|e| !e.starts_with(".condlm-tmp")), "{:?}", entries(tmp.path()));
}
