//! `condlm train` end to end on the tiny fixtures: exact resume, outputs, metrics, bad input.
mod common;
use common::fixture;
use std::path::Path;
use std::process::Command;

fn condlm(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_condlm")).args(args).args(["--threads", "2"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.success(), stderr)
}

/// `condlm eval` of `data` under `model` (+ `adapter`): the token-weighted NLL from its JSON line on stdout.
fn eval_nll(model: &Path, adapter: Option<&Path>, data: &Path) -> f64 {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_condlm"));
    cmd.args(["eval", "--threads", "2", "--model"]).arg(model).arg("--data").arg(data);
    if let Some(a) = adapter {
        cmd.arg("--adapter").arg(a);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("perplexity"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nll = v["nll"].as_f64().unwrap();
    assert!(nll.is_finite() && nll > 0.0, "{v}");
    nll
}

fn train_args<'a>(out: &'a str, lr: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let model = Box::leak(fixture("tiny-llama").to_str().unwrap().to_string().into_boxed_str());
    let data = Box::leak(fixture("train_rows.jsonl").to_str().unwrap().to_string().into_boxed_str());
    let mut v = vec![
        "train",
        "--model",
        model,
        "--data",
        data,
        "--output-dir",
        out,
        "--max-steps",
        "6",
        "--batch-size",
        "4",
        "--grad-accum",
        "2",
        "--lr",
        lr,
        "--lora-r",
        "4",
        "--lora-dropout",
        "0.1",
        "--eval-fraction",
        "0.2",
        "--eval-every",
        "2",
        "--save-every",
        "0",
    ];
    v.extend_from_slice(extra);
    v
}

/// (step, f64 bits) points.
type Bits = Vec<(u64, u64)>;

/// (step, loss) of every train line, and (step, eval_nll) of every eval line, as exact f64 bits.
fn curves(dir: &Path) -> (Bits, Bits) {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let (mut train, mut eval) = (vec![], vec![]);
    for v in text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()) {
        let step = v["step"].as_u64().unwrap();
        if let Some(l) = v["loss"].as_f64() {
            train.push((step, l.to_bits()));
        }
        if let Some(e) = v["eval_nll"].as_f64() {
            eval.push((step, e.to_bits()));
        }
    }
    (train, eval)
}

#[test]
fn resume_reproduces_an_uninterrupted_run_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    let (ok, err) = condlm(&train_args(straight.to_str().unwrap(), "5e-3", &[]));
    assert!(ok, "{err}");
    let resumed = tmp.path().join("resumed");
    let (ok, err) = condlm(&train_args(resumed.to_str().unwrap(), "5e-3", &["--stop-after-steps", "3"]));
    assert!(ok, "{err}");
    assert!(err.contains("stopped at step 3"), "{err}");
    assert!(!resumed.join("adapter").exists(), "an interrupted run must not write the final adapter");
    let (ok, err) = condlm(&["train", "--resume", resumed.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (a, b) = (curves(&straight), curves(&resumed));
    assert_eq!(a.0.len(), 6);
    assert_eq!(a, b, "losses after resume differ from the uninterrupted run");
    // Final adapters are identical too.
    let read = |d: &Path| std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(read(&straight), read(&resumed));
}

/// `--compute` is saved with the run's settings: a bare `--resume` of a bf16 run goes on in bf16 (bit for bit),
/// and `--compute f32` given on resume switches (the later steps' losses move).
#[test]
fn resume_keeps_the_runs_compute_unless_given_again() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let dir = tmp.path().join(name);
        let mut args = train_args(Box::leak(dir.to_str().unwrap().to_string().into_boxed_str()), "5e-3", extra);
        args.extend(["--compute", "bf16"]);
        let (ok, err) = condlm(&args);
        assert!(ok, "{err}");
        dir
    };
    let straight = run("straight", &[]);
    let resume = |name: &str, extra: &[&str]| {
        let dir = run(name, &["--stop-after-steps", "3"]);
        let mut args = vec!["train", "--resume", dir.to_str().unwrap()];
        args.extend(extra);
        let (ok, err) = condlm(&args);
        assert!(ok, "{err}");
        curves(&dir)
    };
    assert_eq!(resume("bare", &[]), curves(&straight), "a bare --resume left bf16");
    let (f32_after, bf16) = (resume("to-f32", &["--compute", "f32"]), curves(&straight));
    assert_eq!(f32_after.0[..3], bf16.0[..3]);
    assert_ne!(f32_after.0[3..], bf16.0[3..], "--compute f32 on --resume did not switch");
}

#[test]
fn a_run_writes_its_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let (ok, err) = condlm(&train_args(out.to_str().unwrap(), "5e-3", &[]));
    assert!(ok, "{err}");
    assert!(err.contains("trained 6 steps") && err.contains("eval NLL"), "{err}");
    for f in ["metrics.jsonl", "loss.png", "adapter/adapter_model.safetensors", "adapter/adapter_config.json"] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!((cfg["peft_type"].as_str(), cfg["r"].as_u64()), (Some("LORA"), Some(4)));
    // The adapter scores through --adapter and fits the rows it was trained on: their NLL is clearly below the
    // base model's (an adapter that changed nothing would score the same; observed 8.86 → 6.28 nats/token).
    let (model, data) = (fixture("tiny-llama"), fixture("train_rows.jsonl"));
    let base = eval_nll(&model, None, &data);
    let tuned = eval_nll(&model, Some(&out.join("adapter")), &data);
    assert!(tuned < base - 1.0, "adapter NLL {tuned} is not clearly below the base model's {base}");
    // A second run into the same folder is refused rather than mixed with the first.
    let (ok, err) = condlm(&train_args(out.to_str().unwrap(), "5e-3", &[]));
    assert!(!ok && err.contains("--resume"), "{err}");
}

#[test]
fn full_finetuning_writes_an_hf_folder_that_scores_as_the_run_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("full");
    // Evaluate on the training rows themselves, so `condlm eval` of the same file reproduces the run's numbers.
    let data = fixture("train_rows.jsonl");
    let (ok, err) = condlm(&train_args(
        out.to_str().unwrap(),
        "1e-3",
        &["--full", "--eval-data", data.to_str().unwrap(), "--eval-fraction", "0"],
    ));
    assert!(ok, "{err}");
    let (_, eval) = curves(&out);
    let (first, last) = (eval.first().unwrap(), eval.last().unwrap());
    let (before, after) = (f64::from_bits(first.1), f64::from_bits(last.1));
    assert_eq!((first.0, last.0), (0, 6), "eval before training and after the last step");
    assert!(err.contains(&format!("eval NLL {before:.4} → {after:.4}")), "{err}");
    // The saved folder is the model the run ended with: it scores what the run reported, within 1e-4 relative
    // (observed: equal to the last digit) …
    let saved = eval_nll(&out.join("model"), None, &data);
    assert!((saved - after).abs() <= 1e-4 * after, "saved model NLL {saved} vs {after} reported by the run");
    // … which is the base model's score before training, lowered by training (observed 8.86 → 6.54).
    let base = eval_nll(&fixture("tiny-llama"), None, &data);
    assert!((base - before).abs() <= 1e-4 * before, "base model NLL {base} vs {before} reported at step 0");
    assert!(saved < base - 1.0, "saved model NLL {saved} is not clearly below the base model's {base}");
}

#[test]
fn bad_training_input_is_a_clear_error_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = fixture("train_rows.jsonl");
    let model = fixture("tiny-llama");
    let base = |out: &Path| -> Vec<String> {
        [
            "train",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--output-dir",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        condlm(&refs)
    };
    // Every row truncated away: max_len 1 leaves no token to predict y from.
    let out = tmp.path().join("tiny-len");
    let (ok, err) = run([base(&out), vec!["--max-len".into(), "1".into()]].concat());
    assert!(!ok && err.contains("after truncation to max_len 1") && err.contains("train_rows.jsonl:1"), "{err}");
    assert!(!out.join("adapter").exists() && !out.join("checkpoints").exists());
    // Output folder that cannot be created.
    let (ok, err) = run(base(Path::new("/proc/condlm-cannot-write")));
    assert!(!ok && err.contains("/proc/condlm-cannot-write"), "{err}");
    // A malformed data line names file and line.
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"prompt\": 3}\n").unwrap();
    let out = tmp.path().join("bad-out");
    let mut args = base(&out);
    args[4] = bad.to_str().unwrap().to_string();
    let (ok, err) = run(args);
    assert!(!ok && err.contains("bad.jsonl:2"), "{err}");
    assert!(!out.join("checkpoints").exists());
    // Unknown TOML keys are refused, by name.
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, "lora_rank = 8\n").unwrap();
    let (ok, err) =
        run([base(&tmp.path().join("cfg-out")), vec!["--config".into(), cfg.to_str().unwrap().into()]].concat());
    assert!(!ok && err.contains("lora_rank"), "{err}");
    // Resuming with other settings is refused: the run continues with its saved ones.
    let (ok, err) = condlm(&["train", "--resume", tmp.path().to_str().unwrap(), "--lr", "1"]);
    assert!(!ok && err.contains("--resume continues"), "{err}");
}

#[test]
fn toml_config_sets_values_and_flags_override_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("run.toml");
    let out = tmp.path().join("out");
    std::fs::write(
        &cfg,
        format!(
            "model = {:?}\ndata = {:?}\noutput_dir = {:?}\nmax_steps = 2\nlora_r = 2\nbatch_size = 4\n",
            fixture("tiny-llama"),
            fixture("train_rows.jsonl"),
            out
        ),
    )
    .unwrap();
    let (ok, err) = condlm(&["train", "--config", cfg.to_str().unwrap(), "--lora-r", "3"]);
    assert!(ok && err.contains("trained 2 steps"), "{err}");
    let adapter: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(adapter["r"], 3);
}

/// On a device the run's buffers are sized before its first step for the largest micro-batch it forms (so that a
/// run too large for the device fails at once: tests/cuda_emulated.rs). The size it reports is the largest of the
/// step token counts metrics.jsonl logs (a step is one micro-batch here), over rows of 4 to 70 tokens visited in
/// shuffled order — an invocation stopped after 4 steps sizes them for the whole run — and a resumed invocation
/// reports the largest of the steps it still runs; with an evaluation set of
/// 16 long rows (one evaluation batch, larger than any step), that batch's tokens as the data statistics count them.
#[test]
fn a_device_run_reports_the_largest_micro_batch_it_will_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    common::rows_of_growing_length(&data);
    let out = tmp.path().join("run");
    let (model, data, out_s) = (fixture("tiny-llama"), data.to_str().unwrap(), out.to_str().unwrap());
    let args = ["train", "--model", model.to_str().unwrap(), "--data", data, "--output-dir", out_s, "--max-steps", "9"];
    let fixed = ["--batch-size", "2", "--eval-fraction", "0", "--device", "reference"];
    let reported = |err: &str| -> usize {
        let (_, rest) = err.split_once("buffers for batches of up to ").unwrap_or_else(|| panic!("{err}"));
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let steps = || -> Vec<(u64, usize)> {
        let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let rows = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
        rows.filter_map(|v| Some((v["step"].as_u64()?, v["tokens"].as_u64()? as usize))).collect()
    };
    let (ok, first) = condlm(&[&args[..], &fixed, &["--stop-after-steps", "2"]].concat());
    assert!(ok, "{first}");
    let (ok, second) = condlm(&["train", "--resume", out_s, "--stop-after-steps", "2"]);
    assert!(ok, "{second}");
    let (ok, rest) = condlm(&["train", "--resume", out_s]);
    assert!(ok, "{rest}");
    let steps = steps();
    assert_eq!(steps.len(), 9, "{steps:?}");
    let largest = |from: u64| steps.iter().filter(|s| s.0 > from).map(|s| s.1).max().unwrap();
    let first_two = steps[..2].iter().map(|s| s.1).max().unwrap();
    assert_eq!(reported(&first), largest(0), "{first}\n{steps:?}");
    assert!(reported(&first) > first_two, "no later step is larger than the first two: {steps:?}");
    assert_eq!(reported(&rest), largest(4), "{rest}\n{steps:?}");
    assert_ne!(reported(&rest), reported(&first), "the rows' order makes no step larger than another: {steps:?}");

    let eval = tmp.path().join("eval.jsonl");
    let long = serde_json::json!({"prompt": "name: Blue Spice", "completion": vec!["river"; 40].join(" ")});
    std::fs::write(&eval, format!("{long}\n").repeat(16)).unwrap();
    let with_eval = tmp.path().join("with-eval");
    let args = ["train", "--model", model.to_str().unwrap(), "--data", data, "--max-steps", "2"];
    let more = ["--eval-data", eval.to_str().unwrap(), "--output-dir", with_eval.to_str().unwrap()];
    let (ok, err) = condlm(&[&args[..], &more, &fixed[..2], &fixed[4..]].concat());
    assert!(ok, "{err}");
    let stats = err.lines().skip_while(|l| !l.starts_with("eval")).take(3).collect::<Vec<_>>().join("\n");
    let total = |what: &str| -> usize {
        let line = stats.lines().find(|l| l.trim_start().starts_with(what)).unwrap_or_else(|| panic!("{err}"));
        line.split("): ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
    };
    assert_eq!(reported(&err), total("x tokens") + total("y tokens"), "{err}");
}

/// `--device reference` runs what `--device cuda` runs (the model on a device, its optimizer steps, the host
/// model refreshed after each, moments fetched for checkpoints) on the CPU kernels: it trains as the CPU path
/// does — the same losses, eval NLLs and adapter up to float rounding — and resumes bit for bit.
#[test]
fn the_device_path_trains_as_the_cpu_path_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name);
    let (ok, err) = condlm(&train_args(dir("cpu").to_str().unwrap(), "5e-3", &[]));
    assert!(ok, "{err}");
    let (ok, err) = condlm(&train_args(dir("dev").to_str().unwrap(), "5e-3", &["--device", "reference"]));
    assert!(ok && err.contains("training on cpu (reference backend)"), "{err}");
    let (cpu, dev) = (curves(&dir("cpu")), curves(&dir("dev")));
    assert_eq!((dev.0.len(), dev.1.len()), (cpu.0.len(), cpu.1.len()));
    for ((s, a), (_, b)) in cpu.0.iter().chain(&cpu.1).zip(dev.0.iter().chain(&dev.1)) {
        let (a, b) = (f64::from_bits(*a), f64::from_bits(*b));
        assert!((a - b).abs() <= 1e-5 * a.abs(), "step {s}: CPU {a} vs device path {b}");
    }
    let adapter = |d: &Path| common::load_f32_tensors(&d.join("adapter/adapter_model.safetensors"));
    let (a, b) = (adapter(&dir("cpu")), adapter(&dir("dev")));
    assert_eq!(a.len(), b.len());
    for (name, (_, want)) in &a {
        let e = common::rel_err(&b[name].1, want);
        assert!(e < 1e-4, "{name}: device path's adapter off the CPU's by {e:e}");
    }

    let resumed = dir("resumed");
    let args = train_args(resumed.to_str().unwrap(), "5e-3", &["--device", "reference", "--stop-after-steps", "3"]);
    let (ok, err) = condlm(&args);
    assert!(ok && err.contains("stopped at step 3"), "{err}");
    // The run's device is saved with its settings: a bare --resume continues there.
    let (ok, err) = condlm(&["train", "--resume", resumed.to_str().unwrap()]);
    assert!(ok && err.contains("training on cpu (reference backend)"), "{err}");
    assert_eq!(curves(&resumed), dev, "the device path resumed differs from its uninterrupted run");
    let read = |d: &Path| std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(read(&resumed), read(&dir("dev")));

    // Full fine-tuning: the same losses, and the written model scores as the CPU run's does.
    for (name, device) in [("full-cpu", "cpu"), ("full-dev", "reference")] {
        let args = train_args(
            Box::leak(dir(name).to_str().unwrap().to_string().into_boxed_str()),
            "1e-3",
            &["--full", "--max-steps", "3", "--device", device],
        );
        let (ok, err) = condlm(&args);
        assert!(ok, "{err}");
    }
    let (cpu, dev) = (curves(&dir("full-cpu")), curves(&dir("full-dev")));
    assert_eq!(dev.0.len(), 3);
    for ((s, a), (_, b)) in cpu.0.iter().chain(&cpu.1).zip(dev.0.iter().chain(&dev.1)) {
        let (a, b) = (f64::from_bits(*a), f64::from_bits(*b));
        assert!((a - b).abs() <= 1e-5 * a.abs(), "full, step {s}: CPU {a} vs device path {b}");
    }
    let data = fixture("train_rows.jsonl");
    let (a, b) =
        (eval_nll(&dir("full-cpu").join("model"), None, &data), eval_nll(&dir("full-dev").join("model"), None, &data));
    assert!((a - b).abs() <= 1e-5 * a, "written models score {a} (CPU) vs {b} (device path)");
}
