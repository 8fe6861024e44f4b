//! The CUDA backend on the CUDA emulator (tests/cuda_emulator/, built by tests/common/cuda_emulator.rs): `condlm`
//! with the emulator's libcuda, libnvrtc and libcublas on LD_LIBRARY_PATH runs `--device cuda` on the CPU — the
//! launch code of src/kernels/cuda/ops/, the kernels of src/kernels/cuda/cu/ (each CUDA thread a fiber, barriers
//! and warp shuffles as on a GPU, reads past a buffer's end caught), and cuBLAS's documented GEMM — against
//! `--device cpu`, as scripts/gpu_check.sh does on a GPU. What a GPU adds (speed, its own rounding of exp and
//! fused multiply-adds) is left to that script. The emulator runs a kernel's threads one at a time, so the inputs
//! are the smallest that still cover each path. Built only with `--features cuda`.
#![cfg(feature = "cuda")]
mod common;

use common::{fixture, load_f32_tensors, rel_err};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// `condlm ARGS` with the emulator as the CUDA driver; panics with its output when it fails.
fn condlm(args: &[&str]) -> String {
    condlm_with(args, &[])
}

/// [`condlm`] with the emulator's settings `env` (tests/cuda_emulator/threads.cpp: CUDA_EMULATOR_ORDER,
/// CUDA_EMULATOR_STATS); returns stdout then stderr.
fn condlm_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let o: Output = Command::new(env!("CARGO_BIN_EXE_condlm"))
        .args(args)
        .envs(env.iter().copied())
        .env("LD_LIBRARY_PATH", common::cuda_emulator::lib_dir())
        // cuBLAS's peak, timed at 4096³ on a GPU, and the attention kernels' speed, at 16 × 300 rows, would take
        // minutes on the emulator's CPU.
        .env("CONDLM_GEMM_PEAK_SIZE", "64")
        .env("CONDLM_ATTENTION_SPEED_ROWS", "8")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "condlm {} failed:\n{text}", args.join(" "));
    text
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// max |a − b| / max |b| over two equally long lists.
fn worst(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Each block's threads first to last and last to first between barriers: a missing `__syncthreads` shows in one.
#[test]
fn every_kernel_and_backend_op_matches_the_cpu() {
    for order in ["forward", "reverse"] {
        let t = condlm_with(&["info", "--devices", "--check-kernels"], &[("CUDA_EMULATOR_ORDER", order)]);
        assert!(t.contains("condlm CUDA emulator"), "{t}");
        // Every kernel against its CPU kernel, every backend op against the host backend: dozens of lines, none off.
        let (kernels, ops) = (t.matches("\nparity ").count(), t.matches("\nbackend ").count());
        assert!(kernels >= 39 && ops >= 100, "{order}: {kernels} parity and {ops} backend lines:\n{t}");
        assert!(!t.contains("FAILED"), "{order}:\n{t}");
    }
}

/// A driver older than the NVRTC at hand refuses its PTX (CUDA_ERROR_UNSUPPORTED_PTX_VERSION): the kernels are
/// then compiled to machine code and loaded as such, and every check passes as with PTX.
#[test]
fn kernels_a_driver_refuses_as_ptx_load_as_machine_code() {
    let t = condlm_with(&["info", "--devices", "--check-kernels"], &[("CUDA_EMULATOR_OLD_DRIVER", "1")]);
    let loaded = t.lines().filter(|l| l.contains(" loaded for ")).collect::<Vec<_>>();
    assert!(!loaded.is_empty() && loaded.iter().all(|l| l.contains("loaded as machine code (CUBIN)")), "{t}");
    assert!(!t.contains("FAILED"), "{t}");
}

/// A whole model on the emulated GPU against the CPU path (`info MODEL --check-device cuda`): logits in f32 and
/// bf16 (the tensor cores' attention, bf16 activations), KV decoding against the full forward pass, greedy ids, LoRA
/// and full gradients — every line OK, on Gemma 3 (sliding layers, GeGLU, post norms) and Qwen3.5.
#[test]
fn a_whole_model_on_the_device_passes_its_check() {
    for m in ["tiny-gemma3", "tiny-qwen35"] {
        let t = condlm(&["info", fixture(m).to_str().unwrap(), "--check-device", "cuda"]);
        let lines: Vec<&str> = t.lines().filter(|l| l.starts_with("model cuda:0 ")).collect();
        assert_eq!(lines.len(), 8, "{m}: one line per comparison:\n{t}");
        assert!(lines.iter().all(|l| l.ends_with(" OK")), "{m}:\n{t}");
    }
}

/// Per-token log-probs: the device's f32 within 1e-5 of the CPU's; its `--compute bf16` (bf16 weight products and
/// attention on the tensor cores) within the acceptance's bf16 tolerance, 2e-2, of the CPU's f32.
#[test]
fn score_on_the_device_equals_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    for m in ["tiny-llama", "tiny-qwen3", "tiny-gemma3", "tiny-phi3", "tiny-gpt2", "tiny-olmo3", "tiny-qwen35"] {
        let mut runs = vec![];
        for (d, compute) in [("cpu", "f32"), ("cuda", "f32"), ("cuda", "bf16")] {
            let out = dir.path().join(format!("{m}-{d}-{compute}.jsonl"));
            let model = fixture(m);
            condlm(&[
                "score",
                "--model",
                model.to_str().unwrap(),
                "--data",
                fixture("score_rows.jsonl").to_str().unwrap(),
                "--per-token",
                "--device",
                d,
                "--compute",
                compute,
                "--out",
                out.to_str().unwrap(),
            ]);
            let logprobs: Vec<f64> = jsonl(&out)
                .iter()
                .flat_map(|r| r["token_logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                .collect();
            runs.push(logprobs);
        }
        let w = worst(&runs[1], &runs[0]);
        assert!(w <= 1e-5, "{m}: per-token log-probs on the emulated GPU differ from the CPU's by {w:e}");
        let w = worst(&runs[2], &runs[0]);
        assert!(w > 0.0 && w <= 2e-2, "{m}: bf16 per-token log-probs on the emulated GPU vs the CPU's f32: {w:e}");
    }
}

/// (losses, eval NLLs) of a run's metrics.jsonl.
fn curves(dir: &Path) -> (Vec<f64>, Vec<f64>) {
    let rows = jsonl(&dir.join("metrics.jsonl"));
    let pick = |k: &str| rows.iter().filter_map(|r| r[k].as_f64()).collect::<Vec<_>>();
    (pick("loss"), pick("eval_nll"))
}

fn train(dir: &Path, model: &str, device: &str, extra: &[&str]) {
    train_with(dir, model, device, extra, &[]);
}

/// [`train`] with the environment `env` added.
fn train_with(dir: &Path, model: &str, device: &str, extra: &[&str], env: &[(&str, &str)]) {
    let (model, data) = (fixture(model), fixture("train_rows.jsonl"));
    let mut args = vec![
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output-dir",
        dir.to_str().unwrap(),
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--eval-fraction",
        "0.1",
        "--eval-every",
        "3",
        "--save-every",
        "0",
        "--device",
        device,
    ];
    args.extend(extra);
    condlm_with(&args, env);
}

/// Losses and eval NLLs within `tol` relative.
fn losses_agree(cuda: &Path, cpu: &Path, what: &str, tol: f64) {
    let ((loss_gpu, eval_gpu), (loss_cpu, eval_cpu)) = (curves(cuda), curves(cpu));
    assert_eq!(loss_cpu.len(), 3, "{what}: {loss_cpu:?}");
    assert!(!eval_cpu.is_empty(), "{what}: no eval NLL");
    for (name, a, b) in [("loss", &loss_gpu, &loss_cpu), ("eval NLL", &eval_gpu, &eval_cpu)] {
        let w = worst(a, b);
        assert!(w <= tol, "{what}: {name} on the emulated GPU {a:?} vs CPU {b:?} ({w:e})");
    }
}

/// [`losses_agree`], and the written tensors (`file` in the run folder) within 10·`tol`.
fn runs_agree(cuda: &Path, cpu: &Path, file: &str, what: &str, tol: f64) {
    losses_agree(cuda, cpu, what, tol);
    let (gpu, cpu) = (load_f32_tensors(&cuda.join(file)), load_f32_tensors(&cpu.join(file)));
    assert_eq!(gpu.keys().collect::<Vec<_>>(), cpu.keys().collect::<Vec<_>>(), "{what}: tensor names");
    for (name, (_, b)) in &cpu {
        let e = rel_err(&gpu[name].1, b);
        assert!(e <= 10.0 * tol, "{what}: {name} differs by {e:e} (relative)");
    }
}

#[test]
fn lora_training_with_dropout_on_the_device_equals_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let lora = ["--lora-r", "8", "--lora-targets", "all-linear", "--lora-dropout", "0.1"];
    for d in ["cpu", "cuda"] {
        train(&dir.path().join(d), "tiny-llama", d, &lora);
    }
    let (cuda, cpu) = (dir.path().join("cuda"), dir.path().join("cpu"));
    runs_agree(&cuda, &cpu, "adapter/adapter_model.safetensors", "LoRA, tiny Llama", 1e-4);
}

/// `--compute bf16` on both. With the device's attention and MLP activations in f32 as the CPU's
/// (`CONDLM_CUDA_MMA_ATTENTION=0`, `CONDLM_CUDA_BF16_ACTIVATIONS=0`): the device's bf16 weight copies and operand
/// rounding against the CPU's, 1e-3. With its MLP's activations kept in bf16 (LoRA's dropout on, then off), and
/// then its attention on the tensor cores too (the default: q, k, v, P and dS in bf16): the acceptance's bf16
/// tolerance, 1e-2 (the adapter within 10 times that: three Adam steps from a zero B magnify rounding
/// differences) — and not the CPU's bits, so the bf16 path was taken. Without dropout the adapters are not
/// compared: some of v_proj's B elements get gradients near zero whose sign is rounding noise, so Adam moves them
/// ±lr either way (7.9e-2 relative between the CPU and the device in f32 activations, whose path this change
/// leaves alone); the losses and eval NLLs still are.
#[test]
fn bf16_lora_training_on_the_device_equals_the_cpu_in_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--lora-r", "8", "--lora-targets", "all-linear", "--compute", "bf16"];
    let no_dropout = [&args[..], &["--lora-dropout", "0"]].concat();
    let f32_attention = ("CONDLM_CUDA_MMA_ATTENTION", "0");
    let f32_everything = [f32_attention, ("CONDLM_CUDA_BF16_ACTIVATIONS", "0")];
    let adapter = "adapter/adapter_model.safetensors";
    for (what, args, dropout) in [("dropout 0.05", &args[..], true), ("no dropout", &no_dropout[..], false)] {
        let (cpu, cuda, acts) = (dir.path().join("cpu"), dir.path().join("cuda"), dir.path().join("acts"));
        train(&cpu, "tiny-mistral", "cpu", args);
        train_with(&cuda, "tiny-mistral", "cuda", args, &f32_everything);
        train_with(&acts, "tiny-mistral", "cuda", args, &[f32_attention]);
        let agree = |run: &Path, what: &str, tol: f64| match dropout {
            true => runs_agree(run, &cpu, adapter, what, tol),
            false => losses_agree(run, &cpu, what, tol),
        };
        agree(&cuda, &format!("bf16 LoRA, {what}, tiny Mistral, f32 attention and MLP"), 1e-3);
        agree(&acts, &format!("bf16 LoRA, {what}, tiny Mistral, bf16 MLP activations"), 1e-2);
        assert_ne!(curves(&acts).0, curves(&cuda).0, "{what}: the bf16 MLP activations changed nothing");
        if dropout {
            train(&dir.path().join("mma"), "tiny-mistral", "cuda", args);
            let what = format!("bf16 LoRA, {what}, tiny Mistral, tensor-core attention, bf16 MLP activations");
            runs_agree(&dir.path().join("mma"), &cpu, adapter, &what, 1e-2);
        }
        for d in [cpu, cuda, acts] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}

/// Full fine-tuning under `--compute bf16` (the weights' gradients from the MLP's bf16 activations and
/// gradients): the acceptance's bf16 tolerance against the CPU.
#[test]
fn bf16_full_fine_tuning_on_the_device_equals_the_cpu_in_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--full", "--lr", "1e-3", "--compute", "bf16"];
    for d in ["cpu", "cuda"] {
        train(&dir.path().join(d), "tiny-qwen2", d, &args);
    }
    let (cuda, cpu) = (dir.path().join("cuda"), dir.path().join("cpu"));
    runs_agree(&cuda, &cpu, "model/model.safetensors", "bf16 full fine-tuning, tiny Qwen2", 1e-2);
}

#[test]
fn full_fine_tuning_on_the_device_equals_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    for d in ["cpu", "cuda"] {
        train(&dir.path().join(d), "tiny-qwen2", d, &["--full", "--lr", "1e-3"]);
    }
    let (cuda, cpu) = (dir.path().join("cuda"), dir.path().join("cpu"));
    runs_agree(&cuda, &cpu, "model/model.safetensors", "full fine-tuning, tiny Qwen2", 1e-4);
}

/// Qwen3.5 (Gated DeltaNet layers and gated attention): LoRA with dropout on every linear layer, and full
/// fine-tuning — the convolution's, A_log's, dt_bias's and the gated norm's gradients through their kernels.
#[test]
fn qwen35_training_on_the_device_equals_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let lora = ["--lora-r", "8", "--lora-targets", "all-linear", "--lora-dropout", "0.1"];
    for (what, args, file) in [
        ("LoRA", &lora[..], "adapter/adapter_model.safetensors"),
        ("full", &["--full", "--lr", "1e-3"][..], "model/model.safetensors"),
    ] {
        for d in ["cpu", "cuda"] {
            train(&dir.path().join(format!("{what}-{d}")), "tiny-qwen35", d, args);
        }
        let (cuda, cpu) = (dir.path().join(format!("{what}-cuda")), dir.path().join(format!("{what}-cpu")));
        runs_agree(&cuda, &cpu, file, &format!("{what}, tiny Qwen3.5"), 1e-4);
    }
}

#[test]
fn greedy_and_beam_generation_on_the_device_equal_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    for m in ["tiny-llama", "tiny-gemma3", "tiny-phi3", "tiny-olmo3", "tiny-qwen35"] {
        for beams in ["1", "3"] {
            let outs: Vec<Vec<Value>> = ["cpu", "cuda"]
                .iter()
                .map(|d| {
                    let out = dir.path().join(format!("{m}-{d}-{beams}.jsonl"));
                    let model = fixture(m);
                    condlm(&[
                        "generate",
                        "--model",
                        model.to_str().unwrap(),
                        "--data",
                        fixture("score_rows.jsonl").to_str().unwrap(),
                        "--max-new-tokens",
                        "12",
                        "--num-beams",
                        beams,
                        "--batch",
                        "2",
                        "--device",
                        d,
                        "--out",
                        out.to_str().unwrap(),
                    ]);
                    jsonl(&out)
                })
                .collect();
            let texts = |rows: &[Value]| {
                rows.iter().map(|r| (r["generation"].clone(), r["finish_reason"].clone())).collect::<Vec<_>>()
            };
            assert!(!outs[0].is_empty());
            assert_eq!(texts(&outs[1]), texts(&outs[0]), "{m}, {beams} beam(s): generations differ");
        }
    }
}

/// Not a check: builds the emulator and prints its folder, for running a command on it by hand, e.g. a dry run of
/// scripts/gpu_check.sh with `--device cuda` (see its header):
/// `cargo test --release --features cuda --test cuda_emulated -- --ignored --nocapture emulator_folder`.
#[test]
#[ignore]
fn emulator_folder() {
    println!("CUDA emulator: {}", common::cuda_emulator::lib_dir().display());
}

/// Decoding steps are recorded as CUDA graphs and replayed (a step's launches as one), with the generations of
/// decoding without them (`CONDLM_CUDA_GRAPHS=0`), bit for bit: the same kernels on the same buffers. Under
/// `--compute bf16`, one prompt at a time, a longer prompt's prefill grows the bf16 scratch that earlier graphs
/// name, so they must be recorded again rather than replayed onto freed memory (the emulator faults on that).
#[test]
fn decoding_steps_replay_as_cuda_graphs_with_the_same_generations() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (fixture("tiny-llama"), fixture("score_rows.jsonl"));
    for (compute, batch) in [("f32", "2"), ("bf16", "1")] {
        let run = |graphs: &str| -> (Vec<Value>, String) {
            let out = dir.path().join(format!("{compute}-{graphs}.jsonl"));
            let args = [
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--max-new-tokens",
                "16",
                "--ignore-eos",
                "--batch",
                batch,
                "--compute",
                compute,
                "--device",
                "cuda",
                "--out",
                out.to_str().unwrap(),
            ];
            let text = condlm_with(&args, &[("CUDA_EMULATOR_STATS", "1"), ("CONDLM_CUDA_GRAPHS", graphs)]);
            (jsonl(&out), text)
        };
        let ((with, on), (without, off)) = (run("1"), run("0"));
        assert_eq!(with.len(), 4);
        assert_eq!(with, without, "{compute}: generations with and without graphs differ");
        // 4 prompts × 16 tokens: dozens of steps, all but the first two of each row count replayed.
        assert!(stat(&on, "graph launch") >= 20 && stat(&off, "graph launch") == 0, "{compute}:\n{on}\n{off}");
        assert!(!on.contains("warning"), "{compute}:\n{on}");
        let launches =
            |t: &str| stat(t, "kernel launches in all") + stat(t, "cublasGemmEx f32") + stat(t, "cublasGemmEx bf16");
        assert!(launches(&on) * 3 < launches(&off), "{compute}: launches from the host\n{on}\n{off}");
    }
    // A capture that fails midway (the emulator refuses its 5th op, as CUDA refuses an unsupported call): a
    // warning, the step run as ops, graphs off for the rest, the same generations.
    let out = dir.path().join("failed.jsonl");
    let (model, data, out_s) = (model.to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap());
    let args = ["generate", "--model", model, "--data", data, "--max-new-tokens", "16", "--ignore-eos", "--batch", "2"];
    let text = condlm_with(
        &[&args[..], &["--device", "cuda", "--out", out_s]].concat(),
        &[("CUDA_EMULATOR_STATS", "1"), ("CUDA_EMULATOR_FAIL_CAPTURE", "5")],
    );
    assert!(text.contains("warning: cuda:0") && text.contains("decoding without CUDA graphs"), "{text}");
    assert_eq!(stat(&text, "graph launch"), 0, "{text}");
    assert_eq!(jsonl(&out), jsonl(&dir.path().join("f32-0.jsonl")), "generations after a failed capture");
}

/// The count of `what` in the emulator's statistics (`CUDA_EMULATOR_STATS`) in a command's output; 0 if absent.
fn stat(output: &str, what: &str) -> u64 {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("cuda emulator:"))
        .find_map(|l| {
            let (n, name) = l.trim().split_once(' ')?;
            (name == what).then(|| n.parse().unwrap())
        })
        .unwrap_or(0)
}

/// `condlm train` on the device for `steps` steps of 2 rows (no evaluation, no checkpoints) with the emulator's
/// statistics (`CUDA_EMULATOR_STATS`); returns the output, which ends with them.
fn counted_train(model: &Path, data: &Path, out: &Path, steps: &str, extra: &[&str]) -> String {
    let (model, data, out) = (model.to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap());
    let args = ["train", "--model", model, "--data", data, "--output-dir", out, "--max-steps", steps];
    let fixed = ["--batch-size", "2", "--eval-fraction", "0", "--save-every", "0", "--device", "cuda"];
    condlm_with(&[&args[..], &fixed, extra].concat(), &[("CUDA_EMULATOR_STATS", "1")])
}

/// The optimizer step is a fixed number of launches however many tensors train: one AdamW launch (clipping
/// included) and one pair for the gradient norm per step, not one or more per tensor — counted by the emulator
/// (`CUDA_EMULATOR_STATS`).
#[test]
fn an_optimizer_step_is_three_launches_whatever_the_tensor_count() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (fixture("tiny-llama"), fixture("train_rows.jsonl"));
    let run = |max_norm: &str| -> String {
        let extra = ["--lora-targets", "all-linear", "--max-grad-norm", max_norm];
        counted_train(&model, &data, &dir.path().join(max_norm), "2", &extra)
    };
    // 2 layers × 7 linear layers × (A, B): 28 tensors, stepped twice; a max norm of 1e-3 clips every step.
    let (clipped, unclipped) = (run("1e-3"), run("0"));
    for what in ["launch adamw_tensors", "launch sum_squares_partial", "launch sum_partials"] {
        assert_eq!(stat(&clipped, what), 2, "{what}:\n{clipped}");
    }
    let all = |err: &str| stat(err, "kernel launches in all");
    assert_eq!(all(&clipped), all(&unclipped), "clipping must add no launches:\n{clipped}\n{unclipped}");
}

/// Frozen q, k and v, and frozen gate and up, are a stacked matrix each on the device, so their forward products
/// are one GEMM each (their input gradients stay one product per layer, so that dh sums in the CPU's order): a
/// LoRA step (every linear layer, no dropout, f32) of the 2-layer tiny Llama makes 108 GEMMs — per layer 18
/// forward (4 base products: q|k|v, o, gate|up, down; A and B of 7 adapters) and 35 backward (7 base products for
/// dx; dB, du, dA and the dx term of 7 adapters), and the LM head's 2 — where unstacked products would make 114.
#[test]
fn frozen_projections_of_one_input_are_one_forward_gemm() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (fixture("tiny-llama"), fixture("train_rows.jsonl"));
    let extra = ["--lora-targets", "all-linear", "--lora-dropout", "0"];
    let gemms = |steps: &str| {
        let out = counted_train(&model, &data, &dir.path().join(steps), steps, &extra);
        stat(&out, "cublasGemmEx f32")
    };
    assert_eq!(gemms("4") - gemms("2"), 2 * 108, "GEMMs in 2 LoRA steps");
}

/// A training step after the first allocates nothing on the device (every buffer is sized for the largest batch
/// so far and reused: issue 15's caching arena) and waits for the device at most twice (the step's loss and its
/// gradient norm): steps 3 to 6 add no allocation and ≤ 2 synchronizations and read-backs each — counted by the
/// emulator, for LoRA with dropout in bf16 and for full fine-tuning in f32. Every row the same, so every batch has
/// the first one's shape.
#[test]
fn training_steps_after_the_first_allocate_nothing_and_wait_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rows.jsonl");
    let row = r#"{"prompt": "name: Blue Spice, area: riverside", "completion": "Blue Spice is by the river."}"#;
    std::fs::write(&data, format!("{row}\n").repeat(8)).unwrap();
    let model = fixture("tiny-llama");
    let run = |what: &str, steps: &str, extra: &[&str]| -> String {
        counted_train(&model, &data, &dir.path().join(format!("{what}-{steps}")), steps, extra)
    };
    let lora = ["--lora-targets", "all-linear", "--lora-dropout", "0.1", "--compute", "bf16"];
    for (what, extra) in [("lora-bf16", &lora[..]), ("full-f32", &["--full"][..])] {
        let (two, six) = (run(what, "2", extra), run(what, "6", extra));
        assert!(stat(&two, "allocate") > 0 && stat(&two, "launch adamw_tensors") == 2, "{what}:\n{two}");
        assert_eq!(stat(&six, "allocate"), stat(&two, "allocate"), "{what}: allocations after step 2\n{two}\n{six}");
        for wait in ["synchronize", "copy device to host"] {
            let more = stat(&six, wait) - stat(&two, wait);
            assert!(more <= 2 * 4, "{what}: {more} × {wait} in 4 steps\n{two}\n{six}");
        }
    }
}

/// metrics.jsonl's `device_wait_s`: the seconds a step's host waited for the device in its reads. The emulator runs
/// work as it is queued, so its waits are near 0 (as a GPU's when the host's launches bound a step); with each
/// synchronize made to take 50 ms (a GPU still busy), a step's two reads (loss, gradient norm) wait ≥ 0.1 s of the
/// step's time. The CPU path writes no such field.
#[test]
fn a_step_tells_how_long_the_host_waited_for_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let waits = |d: &Path| -> Vec<(f64, f64)> {
        let rows = jsonl(&d.join("metrics.jsonl"));
        let steps = rows.iter().filter(|r| r["step_s"].is_f64());
        steps.map(|r| (r["device_wait_s"].as_f64().unwrap_or(f64::NAN), r["step_s"].as_f64().unwrap())).collect()
    };
    let (idle, busy, cpu) = (dir.path().join("idle"), dir.path().join("busy"), dir.path().join("cpu"));
    train(&idle, "tiny-llama", "cuda", &["--eval-fraction", "0"]);
    train_with(&busy, "tiny-llama", "cuda", &["--eval-fraction", "0"], &[("CUDA_EMULATOR_SYNC_MS", "50")]);
    train(&cpu, "tiny-llama", "cpu", &["--eval-fraction", "0"]);
    let (idle, busy) = (waits(&idle), waits(&busy));
    assert_eq!((idle.len(), busy.len()), (3, 3), "{idle:?} {busy:?}");
    assert!(idle.iter().all(|&(w, s)| (0.0..0.05).contains(&w) && w < s), "{idle:?}");
    assert!(busy.iter().all(|&(w, s)| w >= 0.1 && w <= s), "{busy:?}");
    let cpu_rows = jsonl(&cpu.join("metrics.jsonl"));
    assert!(cpu_rows.iter().any(|r| r["step_s"].is_f64()) && cpu_rows.iter().all(|r| r.get("device_wait_s").is_none()));
}

/// A run's device buffers are sized before its first step for the largest micro-batch it will form, so a run too
/// large for the device fails at once, saying why, not at the step that first forms that batch: rows of 4 to 70
/// tokens in shuffled order, an emulated GPU with memory between the peaks of a 1-step run and of a 6-step one; the
/// 6-step run then stops before any step and writes nothing. For Llama, and for Qwen3.5, whose recurrence also keeps
/// states per 16-row chunk of each row.
#[test]
fn a_run_too_large_for_the_device_fails_before_its_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rows.jsonl");
    common::rows_of_growing_length(&data);
    for m in ["tiny-llama", "tiny-qwen35"] {
        let out = |steps: &str| dir.path().join(format!("{m}-{steps}"));
        let peak = |steps: &str| stat(&counted_train(&fixture(m), &data, &out(steps), steps, &[]), "peak bytes in use");
        let (one, six) = (peak("1"), peak("6"));
        assert!(six > one, "{m}: the 6-step run's largest micro-batch needs no more than its first ({six} ≤ {one})");
        let (model, data, to) = (fixture(m), data.to_str().unwrap(), out("6-short"));
        let args = ["train", "--model", model.to_str().unwrap(), "--data", data, "--output-dir", to.to_str().unwrap()];
        let fixed = ["--max-steps", "6", "--batch-size", "2", "--eval-fraction", "0", "--device", "cuda"];
        let o = Command::new(env!("CARGO_BIN_EXE_condlm"))
            .args([&args[..], &fixed].concat())
            .env("LD_LIBRARY_PATH", common::cuda_emulator::lib_dir())
            .env("CUDA_EMULATOR_MEMORY", ((one + six) / 2).to_string())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{m}: the run fitted in {} bytes:\n{err}", (one + six) / 2);
        assert!(err.contains("largest batch") && err.contains("--batch-size"), "{m}:\n{err}");
        assert!(!to.exists(), "{m}: the failed run wrote {}", to.display());
    }
}

/// That reservation ends with a forward and backward pass of the run's largest micro-batch, every token's weight 0
/// (gradients += 0), which grows the backend's scratch (column sums, bf16 operands) to what the run needs: no step
/// allocates on the device after it. A 6-step run allocates as often as the same run stopped after its first step,
/// over rows of growing length, for LoRA with dropout under --compute bf16 and full fine-tuning in f32, on Llama and
/// Qwen3.5; and its losses are the CPU's.
#[test]
fn no_training_step_allocates_after_the_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rows.jsonl");
    common::rows_of_growing_length(&data);
    let lora = ["--lora-targets", "all-linear", "--lora-dropout", "0.1", "--compute", "bf16"];
    for m in ["tiny-llama", "tiny-qwen35"] {
        for (what, extra) in [("lora-bf16", &lora[..]), ("full-f32", &["--full"][..])] {
            let out = |k: &str| dir.path().join(format!("{m}-{what}-{k}"));
            let run = |k: &str, more: &[&str]| counted_train(&fixture(m), &data, &out(k), "6", &[extra, more].concat());
            let (one, six) = (run("one", &["--stop-after-steps", "1"]), run("six", &[]));
            assert_eq!(
                stat(&six, "allocate"),
                stat(&one, "allocate"),
                "{m} {what}: allocations after step 1\n{one}\n{six}"
            );
            if what == "full-f32" {
                let (cpu, model) = (dir.path().join(format!("{m}-cpu")), fixture(m));
                let args = ["train", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()];
                let rest = ["--output-dir", cpu.to_str().unwrap(), "--max-steps", "6", "--batch-size", "2"];
                condlm(&[&args[..], &rest, &["--eval-fraction", "0", "--save-every", "0", "--full"]].concat());
                let (gpu, cpu) = (curves(&out("six")).0, curves(&cpu).0);
                assert!(worst(&gpu, &cpu) <= 1e-4, "{m}: losses {gpu:?} vs the CPU's {cpu:?}");
            }
        }
    }
}

/// A resumed run's first evaluation comes after steps (a fresh run's comes before them): the reservation scores the
/// run's largest evaluation batch once, so that no evaluation allocates either. Evaluation rows longer than any
/// training row, under --compute bf16: a resumed invocation that evaluates after its second step allocates as often
/// as one that stops after its first, before any evaluation.
#[test]
fn a_resumed_run_evaluates_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let eval = dir.path().join("eval.jsonl");
    common::rows_of_growing_length(&eval);
    let (model, data) = (fixture("tiny-llama"), fixture("train_rows.jsonl"));
    let stats = [("CUDA_EMULATOR_STATS", "1")];
    let resumed = |k: &str, steps: &str| -> String {
        let out = dir.path().join(k);
        let extra = ["--eval-data", eval.to_str().unwrap(), "--eval-every", "3", "--compute", "bf16"];
        counted_train(&model, &data, &out, "6", &[&extra[..], &["--stop-after-steps", "1"]].concat());
        condlm_with(&["train", "--resume", out.to_str().unwrap(), "--stop-after-steps", steps], &stats)
    };
    let (quiet, evaluating) = (resumed("quiet", "1"), resumed("evaluating", "2"));
    assert!(evaluating.contains("step 3: eval NLL"), "{evaluating}");
    assert_eq!(
        stat(&evaluating, "allocate"),
        stat(&quiet, "allocate"),
        "the evaluation allocated\n{quiet}\n{evaluating}"
    );
}

/// `CONDLM_CUDA_PROFILE=1` prints where the GPU time went when the command ends: a row per op (the kernels', the
/// GEMMs', the copies'), their calls, and shares that add up to the whole; the results are the same.
#[test]
fn a_profiled_run_tells_where_the_gpu_time_went() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (fixture("tiny-llama"), fixture("score_rows.jsonl"));
    let run = |profile: &str| -> (Vec<Value>, String) {
        let out = dir.path().join(format!("{profile}.jsonl"));
        let (model, data, out_s) = (model.to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap());
        let args = ["score", "--model", model, "--data", data, "--device", "cuda", "--out", out_s];
        let text = condlm_with(&args, &[("CONDLM_CUDA_PROFILE", profile)]);
        (jsonl(&out), text)
    };
    let ((plain, quiet), (profiled, text)) = (run("0"), run("1"));
    assert_eq!(plain, profiled, "scores with and without the profile");
    assert!(!quiet.contains("cuda profile"), "{quiet}");
    let lines = text.lines().skip_while(|l| !l.starts_with("cuda profile")).skip(2);
    let table: Vec<&str> = lines.take_while(|l| l.starts_with("  ")).collect();
    let row = |op: &str| -> (u64, f64) {
        let l = table
            .iter()
            .find(|l| l.trim_start().starts_with(&format!("{op} ")))
            .unwrap_or_else(|| panic!("{op}:\n{text}"));
        let f: Vec<&str> = l.split_whitespace().collect();
        (f[f.len() - 3].parse().unwrap(), f[f.len() - 1].parse().unwrap())
    };
    for op in ["gemm f32", "rmsnorm_forward", "attention_forward", "cross_entropy_rows"] {
        assert!(row(op).0 > 0, "{op}:\n{text}");
    }
    let shares: f64 = table.iter().map(|l| l.split_whitespace().last().unwrap().parse::<f64>().unwrap()).sum();
    assert!((shares - 100.0).abs() < 0.1 * table.len() as f64, "shares add up to {shares}:\n{text}");
}

/// A quantized base stays in its GGML blocks on the device (`Backend::keeps_packed`), each product decoding its
/// matrix into scratch first (dequant.cu): per-token scores and a 3-step LoRA run on a Q4_0 export of tiny Llama as
/// the CPU's on the same file, in f32 and under `--compute bf16` — and the decoding kernel ran; decoding steps'
/// products read the blocks themselves (packed_gemv), with the CPU's greedy generations.
#[test]
fn a_quantized_base_stays_in_its_blocks_on_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny-llama-q4_0.gguf");
    let (model, data) = (gguf.to_str().unwrap(), fixture("train_rows.jsonl"));
    condlm(&["export-gguf", "--model", fixture("tiny-llama").to_str().unwrap(), "--out", model, "--type", "q4_0"]);
    let stats = [("CUDA_EMULATOR_STATS", "1")];
    for compute in ["f32", "bf16"] {
        let run = |device: &str| -> (Vec<f64>, u64) {
            let out = dir.path().join(format!("{device}-{compute}"));
            let args = ["train", "--model", model, "--data", data.to_str().unwrap(), "--output-dir"];
            let fixed = ["--max-steps", "3", "--batch-size", "2", "--eval-fraction", "0", "--save-every", "0"];
            let rest = ["--device", device, "--compute", compute];
            let text = condlm_with(&[&args[..], &[out.to_str().unwrap()], &fixed, &rest].concat(), &stats);
            (curves(&out).0, stat(&text, &format!("launch dequantize_{compute}")))
        };
        let ((gpu, decoded), (cpu, _)) = (run("cuda"), run("cpu"));
        assert!(decoded > 0, "{compute}: the device decoded no packed matrix");
        let w = worst(&gpu, &cpu);
        assert!(w <= if compute == "f32" { 1e-4 } else { 1e-2 }, "{compute}: losses {gpu:?} vs {cpu:?} ({w:e})");
    }
    // Decoding steps of 2 and 12 rows multiply straight from the blocks (12: two groups of 8 rows); steps of 40
    // decode each matrix into scratch inside their CUDA graphs, and the LM head after them (Qwen2's own, not the
    // embeddings: Q4_0 too) must not take what the scratch then holds for its own matrix: greedy generations as the
    // CPU's every time.
    let (rows, qwen2) = (fixture("train_rows.jsonl"), dir.path().join("tiny-qwen2-q4_0.gguf"));
    let model = qwen2.to_str().unwrap();
    condlm(&["export-gguf", "--model", fixture("tiny-qwen2").to_str().unwrap(), "--out", model, "--type", "q4_0"]);
    let generate = |device: &str, batch: &str| -> (Vec<Value>, String) {
        let out = dir.path().join(format!("generate-{device}-{batch}.jsonl"));
        let args =
            ["generate", "--model", model, "--data", rows.to_str().unwrap(), "--max-new-tokens", "8", "--ignore-eos"];
        let rest = ["--batch", batch, "--device", device, "--out", out.to_str().unwrap()];
        let text = condlm_with(&[&args[..], &rest].concat(), &stats);
        (jsonl(&out).iter().map(|r| r["generation"].clone()).collect(), text)
    };
    for batch in ["2", "12", "40"] {
        let ((gpu, text), (cpu, _)) = (generate("cuda", batch), generate("cpu", batch));
        let direct = stat(&text, "launch packed_gemv_f32_f32") + stat(&text, "captured launch packed_gemv_f32_f32");
        assert!(batch == "40" || direct > 0, "decoding steps read no blocks directly:\n{text}");
        assert!(batch != "40" || stat(&text, "graph launch") > 0, "no decoding step replayed a graph:\n{text}");
        assert!(!cpu.is_empty());
        assert_eq!(gpu, cpu, "batches of {batch}: generations on the Q4_0 base differ");
    }
}
