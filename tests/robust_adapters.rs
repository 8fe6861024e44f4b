//! Adapters and model weights are checked before use: adapter_config.json field by field with PEFT's semantics
//! (rank/alpha patterns, layers_to_transform, target_modules against the tensors), finite values in adapters and
//! base weights (safetensors and GGUF), the base the adapter was trained for, and `--lora-targets` names.
mod common;
use common::{copy_dir, fixture, load_f32_tensors};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the binary; returns (success, stdout, stderr).
fn condlm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_condlm")).args(args).args(["--threads", "1"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string(), stderr)
}

/// `cmd` (score or eval) of score_rows.jsonl on `model` with `adapter` and `extra` flags.
fn run_with(cmd: &str, model: &Path, adapter: &Path, extra: &[&str]) -> (bool, String, String) {
    let (m, a, d) = (model.to_str().unwrap(), adapter.to_str().unwrap(), fixture("score_rows.jsonl"));
    let mut args = vec![cmd, "--model", m, "--adapter", a, "--data", d.to_str().unwrap()];
    args.extend_from_slice(extra);
    condlm(&args)
}

fn score(adapter: &Path) -> (bool, String, String) {
    run_with("score", &fixture("tiny-llama"), adapter, &[])
}

/// Scoring fails; returns stderr, which names the adapter's file.
fn score_err(adapter: &Path, file: &str) -> String {
    let (ok, _, err) = score(adapter);
    assert!(!ok, "expected failure");
    assert!(err.contains(&adapter.join(file).display().to_string()), "{err}");
    err
}

/// Per-row log-probs of `score`'s stdout.
fn logprobs(stdout: &str) -> Vec<f64> {
    stdout.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["logprob"].as_f64().unwrap()).collect()
}

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn write_tensors(path: &Path, tensors: &Tensors) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, (s, d))| (n.clone(), s.clone(), d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// tiny-llama's PEFT adapter (r 4, α 8, 7 modules × 2 layers) copied to `<tmp>/adapter`, its config edited by
/// `config` and its tensors by `tensors`.
fn adapter(
    tmp: &Path,
    config: impl FnOnce(&mut serde_json::Map<String, Value>),
    tensors: impl FnOnce(&mut Tensors),
) -> PathBuf {
    let src = fixture("train/tiny-llama-lora-init");
    let dir = tmp.join("adapter");
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
    config(cfg.as_object_mut().unwrap());
    std::fs::write(dir.join("adapter_config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let mut t = load_f32_tensors(&src.join("adapter_model.safetensors"));
    tensors(&mut t);
    write_tensors(&dir.join("adapter_model.safetensors"), &t);
    dir
}

/// The adapter with one config key set (or removed, for `None`).
fn with_key(tmp: &Path, key: &str, v: Option<Value>) -> PathBuf {
    adapter(
        tmp,
        |c| {
            match v {
                Some(v) => c.insert(key.into(), v),
                None => c.remove(key),
            };
        },
        |_| {},
    )
}

const A: &str = "adapter_config.json";

#[test]
fn r_as_a_string_is_named_with_what_it_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let err = score_err(&with_key(tmp.path(), "r", Some(json!("16"))), A);
    assert!(err.contains("\"r\" is \"16\" (a string)") && err.contains("positive integer"), "{err}");
}

#[test]
fn r_zero_is_not_blamed_on_another_base() {
    let tmp = tempfile::tempdir().unwrap();
    let err = score_err(&with_key(tmp.path(), "r", Some(json!(0))), A);
    assert!(err.contains("\"r\" is 0") && err.contains("positive integer") && !err.contains("base"), "{err}");
}

#[test]
fn r_negative_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let err = score_err(&with_key(tmp.path(), "r", Some(json!(-1))), A);
    assert!(err.contains("\"r\" is -1") && err.contains("positive integer"), "{err}");
}

#[test]
fn lora_alpha_as_a_string_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let err = score_err(&with_key(tmp.path(), "lora_alpha", Some(json!("big"))), A);
    assert!(err.contains("\"lora_alpha\" is \"big\" (a string)") && err.contains("a number"), "{err}");
}

#[test]
fn lora_alpha_null_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let err = score_err(&with_key(tmp.path(), "lora_alpha", Some(Value::Null)), A);
    assert!(err.contains("\"lora_alpha\" is null") && err.contains("a number"), "{err}");
}

#[test]
fn missing_lora_alpha_takes_peft_default_8() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, explicit, err) = score(&fixture("train/tiny-llama-lora-init"));
    assert!(ok, "{err}");
    let (ok, missing, err) = score(&with_key(&tmp.path().join("m"), "lora_alpha", None));
    assert!(ok, "{err}");
    assert_eq!(missing, explicit);
    // α matters, so the equality above compares something.
    let (ok, sixteen, err) = score(&with_key(&tmp.path().join("s"), "lora_alpha", Some(json!(16))));
    assert!(ok && sixteen != explicit, "{err}");
}

#[test]
fn lora_dropout_and_use_rslora_are_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let err = score_err(&with_key(&tmp.path().join("d"), "lora_dropout", Some(json!(1.5))), A);
    assert!(err.contains("\"lora_dropout\" is 1.5") && err.contains("[0, 1)"), "{err}");
    let err = score_err(&with_key(&tmp.path().join("r"), "use_rslora", Some(json!("yes"))), A);
    assert!(err.contains("\"use_rslora\" is \"yes\"") && err.contains("true or false"), "{err}");
}

#[test]
fn rank_and_alpha_patterns_match_the_same_adapter_written_plainly() {
    // Layer 0's q_proj at rank 2: plainly, as rank 4 with the last two ranks zero (same B·A, scale α/r = 8/4);
    // with patterns, as rank 2 with α 4 (scale 4/2) — the same function.
    let q = "base_model.model.model.layers.0.self_attn.q_proj";
    let tmp = tempfile::tempdir().unwrap();
    let plain = adapter(
        &tmp.path().join("plain"),
        |_| {},
        |t| {
            let (_, a) = t.get_mut(&format!("{q}.lora_A.weight")).unwrap();
            let cols = a.len() / 4;
            a[2 * cols..].fill(0.0);
            let (s, b) = t.get_mut(&format!("{q}.lora_B.weight")).unwrap();
            b.chunks_mut(s[1]).for_each(|row| row[2..].fill(0.0));
        },
    );
    let slice = |t: &mut Tensors| {
        let (sa, a) = t.get_mut(&format!("{q}.lora_A.weight")).unwrap();
        a.truncate(2 * sa[1]);
        sa[0] = 2;
        let (sb, b) = t.get_mut(&format!("{q}.lora_B.weight")).unwrap();
        *b = b.chunks(sb[1]).flat_map(|row| row[..2].to_vec()).collect();
        sb[1] = 2;
    };
    let patterned = adapter(
        &tmp.path().join("pattern"),
        |c| {
            // A pattern for another module first: PEFT tries keys in file order, first match wins.
            c.insert("rank_pattern".into(), json!({"layers.1.self_attn.q_proj": 4, "layers.0.self_attn.q_proj": 2}));
            c.insert("alpha_pattern".into(), json!({"model.layers.0.self_attn.q_proj": 4}));
        },
        slice,
    );
    let (ok, want, err) = score(&plain);
    assert!(ok, "{err}");
    let (ok, got, err) = score(&patterned);
    assert!(ok, "{err}");
    for (g, w) in logprobs(&got).iter().zip(logprobs(&want)) {
        assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{got}\nvs\n{want}");
    }
    // Without alpha_pattern the scale is 8/2: another function.
    let no_alpha = adapter(
        &tmp.path().join("no-alpha"),
        |c| {
            c.insert("rank_pattern".into(), json!({"layers.0.self_attn.q_proj": 2}));
        },
        slice,
    );
    let (ok, other, err) = score(&no_alpha);
    assert!(ok && logprobs(&other) != logprobs(&want), "{err}");
    // Without rank_pattern the rank-2 tensors contradict r = 4.
    let err = score_err(&adapter(&tmp.path().join("no-rank"), |_| {}, slice), "adapter_model.safetensors");
    assert!(err.contains("layers.0.self_attn.q_proj") && err.contains("rank 2") && err.contains("r: 4"), "{err}");
}

#[test]
fn layers_to_transform_must_agree_with_the_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let only_layer_0 = |c: &mut serde_json::Map<String, Value>| {
        c.insert("layers_to_transform".into(), json!([0]));
    };
    let err = score_err(&adapter(&tmp.path().join("both"), only_layer_0, |_| {}), "adapter_model.safetensors");
    assert!(
        err.contains("model.layers.1.") && err.contains("layers_to_transform") && err.contains("does not target"),
        "{err}"
    );
    let dir = adapter(&tmp.path().join("one"), only_layer_0, |t| t.retain(|k, _| k.contains("layers.0.")));
    let (ok, _, err) = score(&dir);
    assert!(ok, "{err}");
}

#[test]
fn target_modules_must_agree_with_the_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    // Tensors for k_proj that target_modules does not name: PEFT would drop them.
    let err = score_err(
        &with_key(&tmp.path().join("few"), "target_modules", Some(json!(["q_proj", "v_proj"]))),
        "adapter_model.safetensors",
    );
    assert!(err.contains("k_proj") && err.contains("does not target"), "{err}");
    // A named module with no tensors: the file is incomplete.
    let dir = adapter(&tmp.path().join("missing"), |_| {}, |t| t.retain(|k, _| !k.contains("layers.1.mlp.up_proj")));
    let err = score_err(&dir, "adapter_model.safetensors");
    assert!(err.contains("model.layers.1.mlp.up_proj") && err.contains("incomplete"), "{err}");
    // "all-linear" and a regex string, as PEFT reads them, cover the same modules.
    for t in [json!("all-linear"), json!(r"model\.layers\.\d+\.(self_attn|mlp)\..*_proj")] {
        let (ok, _, err) = score(&with_key(&tmp.path().join("str"), "target_modules", Some(t)));
        assert!(ok, "{err}");
    }
    let err = score_err(&with_key(&tmp.path().join("bad"), "target_modules", Some(json!(7))), A);
    assert!(err.contains("\"target_modules\" is 7") && err.contains("list of module names"), "{err}");
}

#[test]
fn unsupported_peft_features_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (key, v)) in [
        ("modules_to_save", json!(["lm_head"])),
        ("use_dora", json!(true)),
        ("megatron_config", json!({"tp": 2})),
        ("init_lora_weights", json!("pissa")),
        ("some_future_setting", json!(3)),
    ]
    .into_iter()
    .enumerate()
    {
        let err = score_err(&with_key(&tmp.path().join(i.to_string()), key, Some(v)), A);
        assert!(err.contains(&format!("\"{key}\"")), "{key}: {err}");
    }
    // The same keys at their defaults are fine.
    let (ok, _, err) = score(&with_key(tmp.path(), "some_future_setting", Some(Value::Null)));
    assert!(ok, "{err}");
}

#[test]
fn nan_in_lora_b_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = adapter(
        tmp.path(),
        |_| {},
        |t| {
            t.get_mut("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").unwrap().1[3] = f32::NAN;
        },
    );
    let err = score_err(&dir, "adapter_model.safetensors");
    assert!(
        err.contains("layers.1.mlp.down_proj.lora_B.weight") && err.contains("NaN") && err.contains("diverged"),
        "{err}"
    );
}

#[test]
fn nan_in_a_norm_weight_of_a_safetensors_model_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama"), tmp.path());
    let w = tmp.path().join("model.safetensors");
    let mut t = load_f32_tensors(&w);
    t.get_mut("model.norm.weight").unwrap().1[5] = f32::NAN;
    write_tensors(&w, &t);
    let (ok, out, err) = condlm(&[
        "score",
        "--model",
        tmp.path().to_str().unwrap(),
        "--data",
        fixture("score_rows.jsonl").to_str().unwrap(),
    ]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("model.norm.weight") && err.contains("NaN") && err.contains("damaged"), "{err}");
}

#[test]
fn infinity_in_a_gguf_tensor_is_named() {
    use condlm::formats::gguf::file::GgufFile;
    use condlm::kernels::dequant::GgmlType;
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("tiny-llama-gguf/tiny-llama.gguf");
    let mut bytes = std::fs::read(&src).unwrap();
    // An F32 tensor whose bytes occur once in the file, so its offset can be found by search.
    let g = GgufFile::open(&src).unwrap();
    let (name, at) = g
        .tensors
        .iter()
        .filter(|t| t.ty == GgmlType::F32)
        .find_map(|t| {
            let data = g.tensor_bytes(t).unwrap();
            let hits: Vec<usize> =
                bytes.windows(data.len()).enumerate().filter(|(_, w)| *w == data).map(|(i, _)| i).collect();
            (hits.len() == 1).then(|| (t.name.clone(), hits[0]))
        })
        .expect("an F32 tensor");
    bytes[at..at + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let g = tmp.path().join("inf.gguf");
    std::fs::write(&g, bytes).unwrap();
    let (ok, _, err) =
        condlm(&["score", "--model", g.to_str().unwrap(), "--data", fixture("score_rows.jsonl").to_str().unwrap()]);
    assert!(
        !ok && err.contains("inf.gguf") && err.contains("inf at element 0") && err.contains("damaged"),
        "{name}: {err}"
    );
}

#[test]
fn a_tokenizer_larger_than_the_embedding_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-llama"), tmp.path());
    let c = tmp.path().join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&c).unwrap()).unwrap();
    cfg["vocab_size"] = json!(300);
    std::fs::write(&c, cfg.to_string()).unwrap();
    let (ok, _, err) = condlm(&[
        "score",
        "--model",
        tmp.path().to_str().unwrap(),
        "--data",
        fixture("score_rows.jsonl").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("token ids up to 383") && err.contains("300 rows"), "{err}");
}

#[test]
fn an_adapter_for_another_base_with_the_same_shapes_needs_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other-llama");
    copy_dir(&fixture("tiny-llama"), &other);
    let lora = fixture("train/tiny-llama-lora-init");
    for cmd in ["score", "eval"] {
        let (ok, _, err) = run_with(cmd, &other, &lora, &[]);
        assert!(
            !ok && err.contains("different base model")
                && err.contains("other-llama")
                && err.contains("--ignore-base-mismatch"),
            "{cmd}: {err}"
        );
        let (ok, _, err) = run_with(cmd, &other, &lora, &["--ignore-base-mismatch"]);
        assert!(ok && err.contains("warning") && err.contains("tests/fixtures/tiny-llama"), "{cmd}: {err}");
    }
    // The same model by another path, with a trailing slash, or as a GGUF file of the same name: accepted.
    let slash = format!("{}/", fixture("tiny-llama").display());
    for model in [PathBuf::from(slash), fixture("tiny-llama-gguf/tiny-llama.gguf")] {
        let (ok, _, err) = run_with("score", &model, &lora, &[]);
        assert!(ok && !err.contains("warning"), "{}: {err}", model.display());
    }
}

#[test]
fn an_unknown_lora_target_is_refused_with_the_model_s_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, err) = condlm(&[
        "train",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--data",
        fixture("train_rows.jsonl").to_str().unwrap(),
        "--lora-targets",
        "q_proj,foo",
        "--output-dir",
        tmp.path().join("out").to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("\"foo\"") && err.contains("q_proj, up_proj, v_proj") && err.contains("all-linear"),
        "{err}"
    );
}

/// Trains a 2-step LoRA adapter on `model` into `out` (with `extra` flags); returns its adapter folder.
fn train_adapter(model: &Path, out: &Path, extra: &[&str]) -> PathBuf {
    let (model, data) = (model.to_str().unwrap(), fixture("train_rows.jsonl"));
    let mut args = vec!["train", "--model", model, "--data", data.to_str().unwrap(), "--max-steps", "2"];
    args.extend(["--allow-worse", "--output-dir", out.to_str().unwrap()]);
    args.extend(extra);
    let (ok, _, err) = condlm(&args);
    assert!(ok, "train {extra:?}: {err}");
    out.join("adapter")
}

#[test]
fn an_adapter_on_some_layers_only_says_exactly_which_in_its_config() {
    // Full paths and PEFT-style suffixes as --lora-targets; the written target_modules must select exactly the
    // adapted layers under PEFT's matching (leaf names would adapt every block), so condlm and PEFT load it back.
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("tiny-llama", "model.layers.0.self_attn.q_proj", json!(["model.layers.0.self_attn.q_proj"])),
        ("tiny-gpt2", "mlp.c_proj", json!(["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"])),
        ("tiny-llama", "self_attn.q_proj,v_proj", json!(["q_proj", "v_proj"])),
    ];
    for (i, (model, targets, expected)) in cases.into_iter().enumerate() {
        let out = tmp.path().join(format!("run{i}"));
        let model = fixture(model);
        let adapter = train_adapter(&model, &out, &["--lora-targets", targets, "--lr", "1e-2"]);
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(config["target_modules"], expected, "{targets}");
        let (ok, _, err) = run_with("score", &model, &adapter, &[]);
        assert!(ok, "{targets}: {err}");
    }
}

#[test]
fn an_adapter_knows_its_base_under_another_name_by_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("smol-base");
    copy_dir(&fixture("tiny-llama"), &base);
    let out = tmp.path().join("run");
    let adapter = train_adapter(&base, &out, &[]);
    // The same files under another name: the base condlm.json records; accepted without a word.
    let renamed = tmp.path().join("renamed");
    copy_dir(&base, &renamed);
    let (ok, _, err) = run_with("score", &renamed, &adapter, &[]);
    assert!(ok && !err.contains("warning"), "{err}");
    // Another model of the same shapes under another name: refused as before.
    let (ok, _, err) = run_with("score", &fixture("tiny-llama-gguf/tiny-llama.gguf"), &adapter, &[]);
    assert!(!ok && err.contains("trained for a different base model"), "{err}");
}
