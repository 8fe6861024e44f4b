//! `--compute bf16` end to end on the tiny fixture: LoRA and full fine-tuning train with losses within bf16's
//! rounding of the f32 run's (and not equal to them: the path is taken), the same bits for any thread count,
//! the warning where the CPU lacks AVX512-BF16, and int8 refused outside decoding.
mod common;
use common::fixture;
use std::process::Command;

/// Runs `condlm train` for 6 steps on the tiny Llama; returns (per-step losses, final eval NLL, stderr).
fn train(compute: &str, threads: &str, extra: &[&str]) -> (Vec<f64>, f64, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_condlm"))
        .args(["train", "--model"])
        .arg(fixture("tiny-llama"))
        .arg("--data")
        .arg(fixture("train_rows.jsonl"))
        .arg("--output-dir")
        .arg(dir.path())
        .args(["--max-steps", "6", "--batch-size", "4", "--lr", "1e-2", "--lora-r", "4", "--eval-fraction", "0.2"])
        .args(["--save-every", "0", "--seed", "3", "--compute", compute, "--threads", threads])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let losses: Vec<f64> = rows.iter().filter_map(|m| m["loss"].as_f64()).collect();
    let eval = rows.iter().filter_map(|m| m["eval_nll"].as_f64()).next_back().unwrap();
    assert_eq!(losses.len(), 6, "{metrics}");
    (losses, eval, stderr)
}

fn agree(f32_run: &(Vec<f64>, f64, String), bf16_run: &(Vec<f64>, f64, String), what: &str) {
    let worst = f32_run.0.iter().zip(&bf16_run.0).map(|(a, b)| ((a - b) / a).abs()).fold(0.0, f64::max);
    assert!(bf16_run.0.iter().all(|l| l.is_finite()), "{what}: {:?}", bf16_run.0);
    // bf16 keeps 8 significant bits: each product is off by up to 2⁻⁸, and those errors mostly cancel.
    assert!(worst < 5e-3, "{what}: losses differ by {worst} relative: {:?} vs {:?}", f32_run.0, bf16_run.0);
    assert!(worst > 0.0, "{what}: bf16 gave the f32 losses bit for bit: the bf16 path was not taken");
    assert!(((f32_run.1 - bf16_run.1) / f32_run.1).abs() < 5e-3, "{what}: eval NLL {} vs {}", f32_run.1, bf16_run.1);
}

#[test]
fn lora_and_full_fine_tuning_agree_with_f32() {
    for (what, extra) in [("LoRA", &[][..]), ("full", &["--full"][..])] {
        let (f, b) = (train("f32", "2", extra), train("bf16", "2", extra));
        agree(&f, &b, what);
        let native = condlm::kernels::bf16::native();
        assert_eq!(b.2.contains("no AVX512-BF16"), !native, "{}", b.2);
        assert!(!f.2.contains("AVX512-BF16"), "{}", f.2);
    }
}

#[test]
fn bf16_losses_are_the_same_bits_for_any_thread_count() {
    let one = train("bf16", "1", &[]);
    for threads in ["2", "3"] {
        let many = train("bf16", threads, &[]);
        assert_eq!(one.0, many.0, "{threads} threads");
        assert_eq!(one.1, many.1, "{threads} threads");
    }
}

/// The device path (`--device reference`: what `--device cuda` runs, on the CPU kernels) takes --compute bf16 in
/// the same products as the CPU path — from the bf16 copies of the weight matrices it keeps, made again after
/// every step of full fine-tuning — giving the same losses up to summation order, and not the f32 ones.
#[test]
fn the_device_path_computes_bf16_as_the_cpu_path() {
    // Full fine-tuning's weight gradients are summed in another order on the device path (f32 losses differ by
    // ~1e-8 after a step); a weight that moves across a bf16 rounding boundary turns that into ~1e-4 by step 6 at
    // this learning rate. LoRA's frozen base has no such boundary to cross.
    for (what, extra, tol) in [("LoRA", &[][..], 1e-5), ("full", &["--full"][..], 1e-3)] {
        let on = |compute: &str, device: &[&str]| train(compute, "2", &[extra, device].concat());
        let (cpu, dev) = (on("bf16", &[]), on("bf16", &["--device", "reference"]));
        agree(&on("f32", &["--device", "reference"]), &dev, &format!("{what}: device path, bf16 vs f32"));
        let worst = cpu.0.iter().zip(&dev.0).map(|(a, b)| ((a - b) / a).abs()).fold(0.0, f64::max);
        assert!(worst < tol, "{what}: bf16 losses: device path {:?} vs CPU {:?}", dev.0, cpu.0);
        assert!(((cpu.1 - dev.1) / cpu.1).abs() < tol, "{what}: eval NLL {} vs {}", dev.1, cpu.1);
    }
}

#[test]
fn int8_is_refused_by_train_and_taken_by_eval() {
    let dir = tempfile::tempdir().unwrap();
    let run = |command: &str| {
        let mut args = vec![command, "--model"];
        let (model, data, out) = (fixture("tiny-llama-gguf/tiny-llama.gguf"), fixture("train_rows.jsonl"), dir.path());
        args.extend([model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--compute", "int8"]);
        if command == "train" {
            args.extend(["--output-dir", out.to_str().unwrap(), "--max-steps", "1"]);
        }
        Command::new(env!("CARGO_BIN_EXE_condlm")).args(&args).output().unwrap()
    };
    let out = run("train");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--compute int8 applies to forward passes"));
    let out = run("eval");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
