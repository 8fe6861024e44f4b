//! A frozen base kept packed (GGML blocks, F16, BF16) computes exactly what its f32 copy computes: both
//! products bit for bit for every type, and whole runs (train, score) with identical numbers; so does a run
//! with activation checkpointing.
mod common;

use common::{condlm, fixture};
use condlm::formats::gguf::quantize::quantize;
use condlm::formats::weights::BaseDtype;
use condlm::kernels::dequant::GgmlType;
use condlm::kernels::mat::{Mat, MatMut};
use condlm::kernels::matmul::matmul;
use condlm::kernels::matvec::{MAX_ROWS, matmul_wt};
use condlm::kernels::packed::PackedMatrix;
use condlm::kernels::weight_bytes::SharedBytes;
use condlm::rng::uniform;
use std::path::{Path, PathBuf};

fn random(n: usize, seed: u64) -> Vec<f32> {
    (0..n).map(|i| (uniform(seed, 1, i as u64) as f32 - 0.5) * 0.4).collect()
}

#[test]
fn packed_products_equal_the_dense_ones_bit_for_bit() {
    let cols = 256 * 3; // every block size divides it
    for ty in GgmlType::ALL {
        // 800 rows: the backward GEMM's depth splits in two blocks of 400, which the packed path must match;
        // 1500 rows of 768: the forward product runs in two panels
        for rows in [40, 300, 800, 1500] {
            let bytes = SharedBytes::owned(quantize(ty, &random(rows * cols, rows as u64)).unwrap());
            let w = PackedMatrix::new(ty, rows, cols, bytes).unwrap();
            let dense = w.to_f32();
            for n in [1, 5, MAX_ROWS + 3, 70] {
                let x = random(n * cols, 7 + n as u64);
                let stride = rows + 3; // a column block of a wider buffer, as q/k/v write
                for acc in [false, true] {
                    let (mut got, mut want) = (vec![0.5f32; n * stride], vec![0.5f32; n * stride]);
                    w.matmul_wt(
                        MatMut { data: &mut got, rows: n, cols: rows, row_stride: stride },
                        Mat::new(&x, n, cols),
                        acc,
                    );
                    let dst = MatMut { data: &mut want, rows: n, cols: rows, row_stride: stride };
                    matmul_wt(dst, Mat::new(&x, n, cols), &dense, acc);
                    assert!(got == want, "{ty:?} x·Wᵀ rows={rows} n={n} accumulate={acc}");

                    let dy = random(n * rows, 9 + n as u64);
                    let (mut got, mut want) = (vec![0.25f32; n * cols], vec![0.25f32; n * cols]);
                    w.matmul_dx(MatMut::new(&mut got, n, cols), Mat::new(&dy, n, rows), acc);
                    matmul(MatMut::new(&mut want, n, cols), Mat::new(&dy, n, rows), Mat::new(&dense, rows, cols), acc);
                    assert!(got == want, "{ty:?} dy·W rows={rows} n={n} accumulate={acc}");
                }
            }
        }
    }
}

/// A fresh folder for one test's files, removed when the returned guard drops.
fn out_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("condlm-quantized-base-{name}-")).tempdir().unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// tiny-llama with every block matrix in `ty` (through export-gguf), in `dir`.
fn packed_model(dir: &Path, ty: &str) -> PathBuf {
    let out = dir.join(format!("tiny-llama-{ty}.gguf"));
    let (ok, _, err) = condlm(&["export-gguf", "--model", p(&fixture("tiny-llama")), "--out", p(&out), "--type", ty]);
    assert!(ok, "{err}");
    out
}

/// Runs a short `train` (3 steps) on `model` into `out`, `extra` flags last.
fn run_train(model: &Path, out: &Path, extra: &[&str]) {
    let data = fixture("train_rows.jsonl");
    let args = ["train", "--model", p(model), "--data", p(&data), "--output-dir", p(out), "--max-steps", "3"];
    let rest = ["--batch-size", "4", "--lr", "5e-3", "--save-every", "0", "--allow-worse"];
    let (ok, _, err) = condlm(&[&args[..], &rest, extra].concat());
    assert!(ok, "train {extra:?}: {err}");
}

/// The per-step losses of the run in `out`, and the adapter (or model) bytes it wrote.
fn outcome(out: &Path) -> (Vec<f64>, Vec<u8>) {
    let losses = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
        .collect();
    let result =
        if out.join("adapter").exists() { "adapter/adapter_model.safetensors" } else { "model/model.safetensors" };
    (losses, std::fs::read(out.join(result)).unwrap())
}

fn train(model: &Path, out: &Path, extra: &[&str]) -> (Vec<f64>, Vec<u8>) {
    run_train(model, out, extra);
    outcome(out)
}

#[test]
fn lora_and_full_runs_on_a_packed_base_or_with_checkpointing_equal_the_plain_f32_run() {
    let tmp = out_dir("train");
    let d = tmp.path();
    for ty in ["q8_0", "q4_0", "f16"] {
        let model = packed_model(d, ty);
        for mode in [&[][..], &["--full"][..]] {
            let name = format!("{ty}{}", mode.len());
            let (packed_losses, packed_out) = train(&model, &d.join(format!("{name}-stored")), mode);
            let f32_args = [mode, &["--base-dtype", "f32"]].concat();
            let (f32_losses, f32_out) = train(&model, &d.join(format!("{name}-f32")), &f32_args);
            assert_eq!(packed_losses.len(), 3, "{name}");
            assert_eq!(packed_losses, f32_losses, "{name}: losses differ between the packed and the f32 base");
            assert!(packed_out == f32_out, "{name}: the written result differs");
            let ckpt_args = [mode, &["--checkpoint-activations"]].concat();
            let (ckpt_losses, ckpt_out) = train(&model, &d.join(format!("{name}-ckpt")), &ckpt_args);
            assert_eq!(ckpt_losses, f32_losses, "{name}: activation checkpointing changed the losses");
            assert!(ckpt_out == f32_out, "{name}: activation checkpointing changed the result");
        }
    }
}

/// On a device a frozen base stays in its blocks (`Backend::keeps_packed`: the reference backend keeps every type;
/// a GPU those it has kernels for), its products through `gemm_packed`: LoRA runs, in f32 and under `--compute bf16`,
/// and scores equal the device's runs on the f32 base bit for bit.
#[test]
fn a_packed_base_on_the_device_equals_its_f32_copy() {
    let tmp = out_dir("device");
    let d = tmp.path();
    for (ty, compute) in [("q8_0", "f32"), ("q4_k", "f32"), ("q6_k", "bf16"), ("q5_1", "f32"), ("bf16", "bf16")] {
        let model = packed_model(d, ty);
        let device = ["--device", "reference", "--compute", compute];
        let (packed_losses, packed_out) = train(&model, &d.join(format!("{ty}-stored")), &device);
        let f32_args = [&device[..], &["--base-dtype", "f32"]].concat();
        let (f32_losses, f32_out) = train(&model, &d.join(format!("{ty}-f32")), &f32_args);
        assert_eq!(packed_losses, f32_losses, "{ty} {compute}: losses differ between the packed and the f32 base");
        assert!(packed_out == f32_out, "{ty} {compute}: the adapters differ");
        let data = fixture("score_rows.jsonl");
        let score = |base: &str| {
            let args = ["score", "--model", p(&model), "--data", p(&data), "--base-dtype", base, "--per-token"];
            let (ok, out, err) = condlm(&[&args[..], &device].concat());
            assert!(ok, "{err}");
            out
        };
        assert_eq!(score("stored"), score("f32"), "{ty} {compute}: scores differ");
    }
}

#[test]
fn scores_are_identical_and_bf16_is_close() {
    let tmp = out_dir("score");
    let d = tmp.path();
    let model = packed_model(d, "q4_0");
    let data = fixture("score_rows.jsonl");
    let score = |base: &str| {
        let (ok, out, err) = condlm(&["score", "--model", p(&model), "--data", p(&data), "--base-dtype", base]);
        assert!(ok, "{err}");
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["logprob"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    let m = condlm::formats::load::load_model_as(p(&model), BaseDtype::Stored).unwrap().model;
    let q = &m.blocks[0].qkv[0].w;
    assert_eq!((q.dtype(), q.data.len()), (GgmlType::Q4_0, 0), "the stored base must be kept packed");
    let (stored, f32) = (score("stored"), score("f32"));
    assert_eq!(stored, f32);
    for (b, f) in score("bf16").iter().zip(&f32) {
        assert!((b - f).abs() < 2e-2 * (1.0 + f.abs()), "bf16 {b} vs f32 {f}");
    }
}

#[test]
fn dry_run_prints_the_plan_by_kept_type_and_writes_nothing() {
    let tmp = out_dir("dry-run");
    let d = tmp.path();
    let model = packed_model(d, "q8_0");
    let out = d.join("run");
    let data = fixture("train_rows.jsonl");
    let args = ["train", "--model", p(&model), "--data", p(&data), "--output-dir", p(&out), "--dry-run"];
    let (ok, _, err) = condlm(&args);
    assert!(ok, "{err}");
    assert!(err.contains("memory: ≈") && err.contains("weights as kept (GiB): F32") && err.contains("Q8_0"), "{err}");
    assert!(err.contains("dry run: nothing trained"), "{err}");
    assert!(!out.exists(), "a dry run must not create the output folder");
    let (ok, _, err) = condlm(&[&args[..], &["--base-dtype", "f32"]].concat());
    assert!(ok && !err.contains("Q8_0"), "{err}");
}

#[test]
fn an_infinite_scale_in_a_packed_matrix_is_named_with_its_row() {
    let tmp = out_dir("inf-scale");
    let d = tmp.path();
    let model = packed_model(d, "q8_0");
    let g = condlm::formats::gguf::file::GgufFile::open(&model).unwrap();
    let t = g.require_tensor("blk.1.ffn_up.weight").unwrap();
    // Q8_0 rows of 64 values are two 34-byte blocks, each led by its f16 scale: row 3's second block
    let at = (g.data_offset() + t.offset) as usize + 3 * 68 + 34;
    let mut bytes = std::fs::read(&model).unwrap();
    bytes[at..at + 2].copy_from_slice(&0x7C00u16.to_le_bytes()); // +inf
    let bad = d.join("inf.gguf");
    std::fs::write(&bad, bytes).unwrap();
    let (ok, _, err) = condlm(&["score", "--model", p(&bad), "--data", p(&fixture("score_rows.jsonl"))]);
    assert!(!ok && err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("row 3, column 32"), "{err}");
    assert!(err.contains("damaged"), "{err}");
}

#[test]
fn a_run_on_a_packed_base_with_checkpointing_resumes_exactly() {
    let tmp = out_dir("resume");
    let d = tmp.path();
    let model = packed_model(d, "q4_0");
    let flags = ["--checkpoint-activations", "--lora-dropout", "0.1"];
    let whole = train(&model, &d.join("whole"), &flags);
    let out = d.join("parts");
    run_train(&model, &out, &[&flags[..], &["--stop-after-steps", "2"]].concat());
    let (ok, _, err) = condlm(&["train", "--resume", p(&out), "--allow-worse"]);
    assert!(ok, "{err}");
    assert!(outcome(&out) == whole, "the resumed run differs from the uninterrupted one");
}

#[test]
fn resume_may_switch_to_checkpointing_and_an_f32_base_but_not_to_bf16() {
    let tmp = out_dir("resume-switch");
    let d = tmp.path();
    let model = packed_model(d, "q8_0");
    let whole = train(&model, &d.join("whole"), &[]);
    let out = d.join("parts");
    run_train(&model, &out, &["--stop-after-steps", "2"]);
    let (ok, _, err) = condlm(&["train", "--resume", p(&out), "--base-dtype", "bf16"]);
    assert!(!ok && err.contains("bf16 rounds") && err.contains("Stored"), "{err}");
    let resume = ["train", "--resume", p(&out), "--allow-worse", "--checkpoint-activations", "--base-dtype", "f32"];
    let (ok, _, err) = condlm(&resume);
    assert!(ok, "{err}");
    assert!(outcome(&out) == whole, "the resumed run differs from the uninterrupted one");
}

/// A full fine-tune of a quantized base records the base's type (`condlm.json`), and exporting it in any type but F32
/// — each rounds the weights about as far as training moved them — warns with the way out; F32 does not, and a LoRA
/// adapter records none.
#[test]
fn exports_of_a_full_fine_tune_of_a_quantized_base_warn_where_rounding_undoes_training() {
    let tmp = out_dir("full-export");
    let d = tmp.path();
    let model = packed_model(d, "q4_0");
    run_train(&model, &d.join("full"), &["--full"]);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("full/model/condlm.json")).unwrap()).unwrap();
    assert_eq!(record["base_model_quantized_as"], "Q4_0", "{record}");
    run_train(&model, &d.join("lora"), &[]);
    let adapter = std::fs::read_to_string(d.join("lora/adapter/condlm.json")).unwrap();
    assert!(!adapter.contains("quantized_as"), "{adapter}");
    let full = d.join("full/model");
    let export = |ty: &str| {
        let out = d.join(format!("full-{ty}.gguf"));
        let args = ["export-gguf", "--model", p(&full), "--out", p(&out), "--type", ty];
        let (ok, _, err) = condlm(&args);
        assert!(ok, "{ty}: {err}");
        err
    };
    for (ty, name) in [("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0"), ("q5_1", "Q5_1"), ("q4_0", "Q4_0")] {
        let err = export(ty);
        let warned = format!("fully fine-tuned from a Q4_0 base and is written as {name}");
        assert!(err.contains(&warned) && err.contains("--type f32"), "{ty}: {err}");
    }
    let err = export("f32");
    assert!(!err.contains("warning"), "f32: {err}");
}
