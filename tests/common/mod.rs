//! Shared helpers for integration tests: fixture paths and the reference files make_fixtures.py writes.
#![allow(dead_code)]
pub mod alloc_count;
#[cfg(feature = "cuda")]
pub mod cuda_emulator;
pub mod device_steps;

use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

/// The files of folder `src` copied into `dst` (made if missing).
pub fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// (input ids, logits (len, vocab)) of each reference sequence in `<dir>/expected.safetensors`.
pub fn reference_sequences(dir: &str) -> Vec<(Vec<u32>, Vec<f32>)> {
    let bytes = std::fs::read(fixture(dir).join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    (0..)
        .map_while(|i| {
            let ids = st.tensor(&format!("input_ids.{i}")).ok()?;
            let logits = st.tensor(&format!("logits.{i}")).unwrap();
            let ids = ids.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
            let logits = logits.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            Some((ids, logits))
        })
        .collect()
}

/// The logits (len, vocab) of one sequence run alone through `m`.
pub fn forward_logits(m: &condlm::network::transformer::Transformer, ids: &[u32]) -> Vec<f32> {
    use condlm::kernels::lm_head::{HeadScratch, logits};
    use condlm::network::{activations::Activations, batch::PackedBatch, transformer::Mode};
    let batch = PackedBatch::new(&[ids.to_vec()]);
    let mut acts = Activations::default();
    m.forward(&batch, &mut acts, Mode::Infer);
    let all: Vec<usize> = (0..ids.len()).collect();
    logits(
        &acts.x[..ids.len() * m.config.hidden_size],
        m.config.hidden_size,
        m.head(),
        &all,
        &mut HeadScratch::default(),
    )
}

/// Per-row log P(y|x) of `condlm score` on tests/fixtures/score_rows.jsonl, with `adapter` when given.
pub fn fixture_row_scores(model: &str, adapter: Option<&Path>) -> Vec<f64> {
    let data = fixture("score_rows.jsonl");
    let mut args = vec!["score", "--model", model, "--data", data.to_str().unwrap()];
    if let Some(a) = adapter {
        args.extend(["--adapter", a.to_str().unwrap(), "--ignore-base-mismatch"]);
    }
    let (ok, out, err) = condlm(&args);
    assert!(ok, "score failed: {err}");
    out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["logprob"].as_f64().unwrap()).collect()
}

/// Every `a[i]` within `tol · (1 + |b[i]|)` of `b[i]`.
pub fn assert_rows_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}: row {i}: {x} vs {y}");
    }
}

pub fn expected_json(dir: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(dir).join("expected.json")).unwrap()).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// All f32 tensors of a safetensors file by name, with shapes.
pub fn load_f32_tensors(path: &std::path::Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let data = v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (n, (v.shape().to_vec(), data))
        })
        .collect()
}

/// Writes `tensors` (name → (shape, f32 values)) as a safetensors file: the inverse of [`load_f32_tensors`].
pub fn save_f32_tensors(path: &std::path::Path, tensors: &std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>) {
    let bytes: std::collections::BTreeMap<&String, Vec<u8>> =
        tensors.iter().map(|(k, (_, v))| (k, v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(&String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, (shape, _))| {
            (k, safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), &bytes[k]).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// ‖a − b‖ / ‖b‖ in f64.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Runs the condlm binary with `args` on 2 threads: (success, stdout, stderr).
pub fn condlm(args: &[&str]) -> (bool, String, String) {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_condlm")).args(["--threads", "2"]).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// One decoding step of `seqs` through `dec` beside the full forward pass over the same sequences: on the first
/// step every token of each sequence goes through the decoder (prefill), later only its last one. Returns the
/// last position's logits of each sequence from both, (sequences, vocab) each.
pub fn decode_step_and_forward(
    dec: &mut condlm::generate::decoder::Decoder,
    model: &condlm::network::transformer::Transformer,
    seqs: &[Vec<u32>],
    first: bool,
    acts: &mut condlm::network::activations::Activations,
) -> (Vec<f32>, Vec<f32>) {
    use condlm::kernels::lm_head::{HeadScratch, logits};
    use condlm::network::batch::{PackedBatch, Row};
    let (mut rows, mut logit_rows) = (vec![], vec![]);
    for (s, seq) in seqs.iter().enumerate() {
        let from = if first { 0 } else { seq.len() - 1 };
        for (pos, &token) in seq.iter().enumerate().skip(from) {
            rows.push(Row { slot: s as u32, pos: pos as u32, token });
        }
        logit_rows.push(rows.len() - 1);
    }
    let got = dec.forward(&rows, &logit_rows).unwrap().to_vec();
    let batch = PackedBatch::new(seqs);
    model.forward(&batch, acts, condlm::network::transformer::Mode::Infer);
    let last: Vec<usize> = batch.seqs.iter().map(|r| r.end - 1).collect();
    let d = model.config.hidden_size;
    let want = logits(&acts.x[..batch.len() * d], d, model.head(), &last, &mut HeadScratch::default());
    (got, want)
}

/// tiny-llama (which has a chat template) copied into `dir` with a context window of 1024 instead of 128 (RoPE: the
/// weights do not depend on it), so that rows longer than 128 tokens (Alpaca's prompt) fit whole.
pub fn long_context_llama(dir: &Path) -> PathBuf {
    let model = copy_fixture("tiny-llama", &dir.join("tiny-llama-1k"));
    let config = model.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\"max_position_embeddings\": 128"));
    std::fs::write(&config, text.replace("\"max_position_embeddings\": 128", "\"max_position_embeddings\": 1024"))
        .unwrap();
    model
}

/// The files of fixture folder `name` (not its subfolders: adapters, references) copied to the folder `to`
/// (made), for a test that edits a model; returns `to`.
pub fn copy_fixture(name: &str, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    to.to_path_buf()
}

/// 12 rows of one prompt whose completions grow from 1 to 23 words (4 to 70 tokens of tiny Llama's tokenizer) written
/// to `path` as JSONL: in shuffled order, some steps' batches are larger than others'.
pub fn rows_of_growing_length(path: &Path) {
    let rows: Vec<String> = (0..12)
        .map(|i| {
            let completion = vec!["river"; 1 + 2 * i].join(" ");
            serde_json::json!({"prompt": "name: Blue Spice", "completion": completion}).to_string()
        })
        .collect();
    std::fs::write(path, rows.join("\n") + "\n").unwrap();
}
