//! `condlm train` as a hostile or unlucky user meets it: --overwrite never destroys an earlier run before the new
//! one has its result, divergence and collapse fail loudly, signals leave a checkpoint, resume refuses changed
//! data and drops stale metrics, and every flag is checked with its allowed range. Tiny fixtures throughout.
mod common;
use common::{copy_fixture, fixture};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Run {
    code: Option<i32>,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Asserts a failure whose message holds every one of `words`.
    fn fails_with(&self, words: &[&str]) {
        assert!(!self.ok(), "expected a failure, got success:\n{}", self.stderr);
        for w in words {
            assert!(self.stderr.contains(w), "missing {w:?} in:\n{}", self.stderr);
        }
    }
}

fn finish(out: Output) -> Run {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    Run { code: out.status.code(), stderr }
}

fn condlm(args: &[&str]) -> Run {
    finish(Command::new(env!("CARGO_BIN_EXE_condlm")).args(args).args(["--threads", "1"]).output().unwrap())
}

/// [`condlm`] run from the folder `dir`.
fn condlm_in(dir: &Path, args: &[&str]) -> Run {
    finish(
        Command::new(env!("CARGO_BIN_EXE_condlm"))
            .current_dir(dir)
            .args(args)
            .args(["--threads", "1"])
            .output()
            .unwrap(),
    )
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `train` on tiny-llama with small, fast settings; `extra` flags come last (and win).
fn train_cmd(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "train",
        "--model",
        &s(&fixture("tiny-llama")),
        "--data",
        &s(&fixture("train_rows.jsonl")),
        "--output-dir",
        &s(out),
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--lr",
        "5e-3",
        "--lora-r",
        "2",
        "--save-every",
        "0",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

fn train(out: &Path, extra: &[&str]) -> Run {
    let args = train_cmd(out, extra);
    condlm(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The steps of metrics.jsonl's training rows and of its eval rows.
fn metric_steps(out: &Path) -> (Vec<u64>, Vec<u64>) {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps = |key: &str| rows.iter().filter(|v| v.get(key).is_some()).map(|v| v["step"].as_u64().unwrap()).collect();
    (steps("loss"), steps("eval_nll"))
}

/// A finished run in `out`; returns the bytes of its adapter and metrics, to check they survive.
fn finished_run(out: &Path) -> (Vec<u8>, Vec<u8>) {
    let r = train(out, &[]);
    assert!(r.ok(), "{}", r.stderr);
    (read(&out.join("adapter/adapter_model.safetensors")), read(&out.join("metrics.jsonl")))
}

fn assert_kept(out: &Path, before: &(Vec<u8>, Vec<u8>)) {
    assert_eq!(read(&out.join("adapter/adapter_model.safetensors")), before.0, "the earlier adapter changed");
    assert_eq!(read(&out.join("metrics.jsonl")), before.1, "the earlier metrics changed");
    let leftovers: Vec<_> = std::fs::read_dir(out).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.iter().all(|n| !n.to_string_lossy().starts_with(".condlm")), "{leftovers:?}");
}

#[test]
fn overwrite_with_bad_input_keeps_the_earlier_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let before = finished_run(&out);
    train(&out, &["--overwrite", "--data", "/nonexistent/typo.jsonl"]).fails_with(&["typo.jsonl"]);
    assert_kept(&out, &before);
    train(&out, &["--overwrite", "--lora-dropout", "1.5"]).fails_with(&["--lora-dropout", "[0, 1)"]);
    assert_kept(&out, &before);
    // A divergence before the new run's first checkpoint puts the earlier run back.
    train(&out, &["--overwrite", "--lr", "1e6", "--max-steps", "8"]).fails_with(&["collapsed", "is back"]);
    assert_kept(&out, &before);
}

/// A new run that fails after checkpoints of its own (here a NaN at step 2, after step 1's checkpoint) still puts
/// the earlier run back; its checkpoints move to a failed-run folder the error names.
#[test]
fn overwrite_that_fails_after_a_checkpoint_puts_the_earlier_run_back() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let before = finished_run(&out);
    let r = train(&out, &["--overwrite", "--lr", "1e30", "--save-every", "1", "--max-steps", "5"]);
    r.fails_with(&["is back", "failed-run-"]);
    assert_kept(&out, &before);
    let failed: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("failed-run-"))
        .collect();
    assert_eq!(failed.len(), 1, "{}", r.stderr);
    assert!(failed[0].join("checkpoints/step-0000001").is_dir(), "the failed run's checkpoint is kept");
}

/// A new run stopped to be resumed leaves the earlier run set aside (its `--resume` carries it on); the earlier run
/// goes only when the resumed run writes its result.
#[test]
fn overwrite_keeps_the_earlier_run_aside_until_a_resumed_run_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let before = finished_run(&out);
    let r = train(&out, &["--overwrite", "--seed", "7", "--stop-after-steps", "2"]);
    assert!(r.ok() && r.stderr.contains("stays in"), "{}", r.stderr);
    let aside = |out: &Path| -> Vec<PathBuf> {
        let names = std::fs::read_dir(out).unwrap().flatten().map(|e| e.path());
        names.filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".condlm-replaced-")).collect()
    };
    let kept = aside(&out);
    assert_eq!(kept.len(), 1);
    assert_eq!(read(&kept[0].join("adapter/adapter_model.safetensors")), before.0, "the earlier adapter is intact");
    // A fresh start is refused and says both ways out; the resume finishes and only then drops the earlier run.
    train(&out, &["--overwrite"]).fails_with(&["--resume", "move its contents back"]);
    let r = condlm(&["train", "--resume", &s(&out)]);
    assert!(r.ok(), "{}", r.stderr);
    assert!(aside(&out).is_empty() && out.join("adapter/adapter_model.safetensors").is_file());
    assert_ne!(read(&out.join("adapter/adapter_model.safetensors")), before.0);
}

/// `--dry-run` loads no weights, yet refuses a config whose layer count or vocabulary the tensors contradict (from
/// the headers), as the real run would.
#[test]
fn a_dry_run_checks_the_config_against_the_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    for (key, value, words) in [
        ("num_hidden_layers", 3, &["no tensor of layer 2", "config.json"][..]),
        ("num_hidden_layers", 1, &["\"model.layers.1.", "is of layer 1"][..]),
        ("vocab_size", 500, &["embedding has 384 rows", "500"][..]),
    ] {
        let model = copy_fixture("tiny-llama", &tmp.path().join(format!("{key}-{value}")));
        let cfg_path = model.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
        cfg[key] = value.into();
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let out = tmp.path().join("run");
        train(&out, &["--model", &s(&model), "--dry-run"]).fails_with(words);
        assert!(!out.exists());
    }
}

/// A prompt field equal to the completion field (y given y) is refused before anything loads.
#[test]
fn the_same_field_for_x_and_y_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    train(&out, &["--prompt-field", "completion"]).fails_with(&["--prompt-field", "--completion-field"]);
    assert!(!out.exists(), "nothing is written for a refused run");
}

#[test]
fn overwrite_replaces_the_run_once_the_new_one_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let before = finished_run(&out);
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let r = train(&out, &["--overwrite", "--seed", "7"]);
    assert!(r.ok(), "{}", r.stderr);
    assert_ne!(read(&out.join("adapter/adapter_model.safetensors")), before.0, "a new seed gives a new adapter");
    assert_eq!(metric_steps(&out).0, vec![1, 2, 3, 4], "the metrics are the new run's alone");
    assert_eq!(read(&out.join("notes.txt")), b"mine", "files that are not the run's stay");
    let names: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(names.iter().all(|n| !n.to_string_lossy().starts_with(".condlm")), "{names:?}");
}

#[test]
fn overwrite_refuses_a_model_inside_the_run_it_would_replace() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let r = train(&out, &["--full"]);
    assert!(r.ok(), "{}", r.stderr);
    // train_cmd's --lora-r does not apply to --full: said, not refused.
    assert!(r.stderr.contains("warning: --lora-r shapes a LoRA adapter; --full trains every weight"), "{}", r.stderr);
    let model = out.join("model");
    let weights = read(&model.join("model.safetensors"));
    train(&out, &["--full", "--overwrite", "--model", &s(&model)]).fails_with(&["lies inside", "model"]);
    assert_eq!(read(&model.join("model.safetensors")), weights);
}

#[test]
fn a_folder_with_any_run_file_is_not_reused_without_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, is_dir) in [("adapter", true), ("metrics.jsonl", false)] {
        let out = tmp.path().join(name.replace('.', "_"));
        std::fs::create_dir_all(&out).unwrap();
        let p = out.join(name);
        if is_dir {
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("adapter_config.json"), "{}").unwrap();
        } else {
            std::fs::write(&p, "{\"step\": 1}\n").unwrap();
        }
        train(&out, &[]).fails_with(&["already holds a training run", name, "--overwrite"]);
        assert!(p.exists());
    }
}

#[test]
fn divergence_and_collapse_fail_without_writing_a_result() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lora");
    let r = train(&out, &["--lr", "1e6", "--max-steps", "8"]);
    r.fails_with(&["collapsed", "uniform distribution", "--lr=", "--no-divergence-guard"]);
    assert!(!out.join("adapter").exists());
    let out = tmp.path().join("full");
    let r = train(&out, &["--full", "--lr", "1e3", "--max-grad-norm", "0", "--max-steps", "8"]);
    r.fails_with(&["diverged", "--lr="]);
    assert!(!out.join("model").exists());
}

#[test]
fn a_finished_run_that_got_worse_exits_non_zero_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    // Training on one repeated word makes the model sure of it, so held-out completions of other words get a
    // clearly worse NLL (observed 5.94 → 8.60) while the training loss falls: a run that did what it was told
    // and made the model worse on what the user evaluates.
    let rows = |completion: &str, n: usize| -> String {
        (0..n).map(|i| format!("{{\"prompt\": \"Question {i}:\", \"completion\": \"{completion}\"}}\n")).collect()
    };
    let (data, eval) = (tmp.path().join("train.jsonl"), tmp.path().join("eval.jsonl"));
    std::fs::write(&data, rows(" the the the the the the the the", 16)).unwrap();
    std::fs::write(&eval, rows(" zzzz qqqq zzzz qqqq", 8)).unwrap();
    let args = ["--data", &s(&data), "--eval-data", &s(&eval), "--lr", "5e-2", "--max-steps", "6"];
    let out = tmp.path().join("worse");
    train(&out, &args).fails_with(&["eval NLL got worse", "--allow-worse"]);
    assert!(out.join("adapter/adapter_model.safetensors").is_file(), "the result is still written");
    let out = tmp.path().join("allowed");
    let r = train(&out, &[&args[..], &["--allow-worse"]].concat());
    assert!(r.ok() && r.stderr.contains("accepted"), "{}", r.stderr);
}

/// Starts a long run, sends `signal` once it has taken a step, and returns the ended process's result.
/// A `train` of `max_steps` steps into `out`, started and returned once it has logged a step.
fn running(out: &Path, max_steps: &str) -> std::process::Child {
    let args = train_cmd(out, &["--max-steps", max_steps]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_condlm"))
        .args(&args)
        .args(["--threads", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !std::fs::read_to_string(out.join("metrics.jsonl")).is_ok_and(|t| t.contains("\"loss\"")) {
        assert!(start.elapsed() < Duration::from_secs(120), "the run never took a step");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be interrupted");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn interrupted_run(out: &Path, signal: &str) -> Run {
    let child = running(out, "400");
    let status = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    finish(child.wait_with_output().unwrap())
}

/// A second `train` in the folder of a running one is refused before it touches anything, whatever its flags.
#[cfg(unix)]
#[test]
fn a_run_folder_in_use_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut child = running(&out, "100000");
    let second = train(&out, &["--overwrite"]);
    let resumed = condlm(&["train", "--resume", &s(&out)]);
    child.kill().unwrap();
    child.wait().unwrap();
    second.fails_with(&["in use by another condlm train"]);
    resumed.fails_with(&["in use by another condlm train"]);
}

/// A second Ctrl-C ends the run at once, still saying how to continue it.
#[cfg(unix)]
#[test]
fn a_second_sigint_stops_at_once_and_says_how_to_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let child = running(&out, "100000");
    for _ in 0..2 {
        assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    }
    let r = finish(child.wait_with_output().unwrap());
    assert_eq!(r.code, Some(130), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("condlm train --resume {}", out.display())), "{}", r.stderr);
}

#[test]
fn sigint_and_sigterm_write_a_checkpoint_and_the_run_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    let r = train(&straight, &["--max-steps", "400"]);
    assert!(r.ok(), "{}", r.stderr);
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let out = tmp.path().join(&signal[1..]);
        let r = interrupted_run(&out, signal);
        assert_eq!(r.code, Some(code), "{}", r.stderr);
        assert!(r.stderr.contains(&format!("condlm train --resume {}", out.display())), "{}", r.stderr);
        assert!(!out.join("adapter").exists());
        let ckpts: Vec<PathBuf> =
            std::fs::read_dir(out.join("checkpoints")).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(ckpts.len(), 1, "{ckpts:?}");
        let r = condlm(&["train", "--resume", &s(&out)]);
        assert!(r.ok(), "{}", r.stderr);
        assert_eq!(
            read(&out.join("adapter/adapter_model.safetensors")),
            read(&straight.join("adapter/adapter_model.safetensors")),
            "resumed after {signal} differs from the uninterrupted run"
        );
        assert_eq!(metric_steps(&out).0, (1..=400).collect::<Vec<u64>>());
    }
}

#[test]
fn resume_drops_metrics_rows_past_the_checkpoint_and_knows_a_finished_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let r = train(&out, &["--max-steps", "6", "--stop-after-steps", "3"]);
    assert!(r.ok() && r.stderr.contains("stopped at step 3"), "{}", r.stderr);
    // An invocation killed after its checkpoint logs steps the checkpoint does not hold.
    let mut f = std::fs::OpenOptions::new().append(true).open(out.join("metrics.jsonl")).unwrap();
    std::io::Write::write_all(&mut f, b"{\"step\":4,\"loss\":9.9}\n{\"step\":5,\"loss\":9.9}\n").unwrap();
    let r = condlm(&["train", "--resume", &s(&out)]);
    assert!(r.ok(), "{}", r.stderr);
    assert_eq!(metric_steps(&out).0, vec![1, 2, 3, 4, 5, 6]);
    let adapter = read(&out.join("adapter/adapter_model.safetensors"));
    // A kill after the result but before the plot: the finished run's --resume draws it.
    std::fs::remove_file(out.join("loss.png")).unwrap();
    let r = condlm(&["train", "--resume", &s(&out)]);
    assert!(r.ok() && r.stderr.contains("already finished"), "{}", r.stderr);
    assert!(!r.stderr.contains("NaN"), "{}", r.stderr);
    assert_eq!(read(&out.join("adapter/adapter_model.safetensors")), adapter);
    assert!(out.join("loss.png").is_file());
}

#[test]
fn resume_refuses_changed_data_unless_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    std::fs::copy(fixture("train_rows.jsonl"), &data).unwrap();
    let out = tmp.path().join("run");
    let r = train(&out, &["--data", &s(&data), "--max-steps", "6", "--stop-after-steps", "2"]);
    assert!(r.ok(), "{}", r.stderr);
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("{\"prompt\": \"a new row\", \"completion\": \" appended later\"}\n");
    std::fs::write(&data, text).unwrap();
    condlm(&["train", "--resume", &s(&out)]).fails_with(&["data changed", "--accept-changed-data"]);
    let r = condlm(&["train", "--resume", &s(&out), "--accept-changed-data"]);
    assert!(r.ok(), "{}", r.stderr);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"event\":\"data_changed\""), "{metrics}");
}

#[test]
fn a_damaged_latest_checkpoint_names_the_intact_earlier_one() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let r = train(&out, &["--max-steps", "6", "--save-every", "2", "--keep-last", "3", "--stop-after-steps", "6"]);
    assert!(r.ok(), "{}", r.stderr);
    let latest = out.join("checkpoints/step-0000006/state.safetensors");
    let latest_bytes = read(&latest);
    std::fs::write(&latest, &latest_bytes[..latest_bytes.len() / 2]).unwrap();
    condlm(&["train", "--resume", &s(&out)]).fails_with(&["step-0000006", "damaged", "--resume", "step-0000004"]);

    // A non-finite value in a checkpoint tensor is named.
    let earlier = out.join("checkpoints/step-0000004/state.safetensors");
    let bytes = read(&earlier);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
    tensors.sort();
    tensors[0].2[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, sh, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, sh.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(&earlier, safetensors::serialize(views, None).unwrap()).unwrap();
    let r = condlm(&["train", "--resume", &s(earlier.parent().unwrap())]);
    r.fails_with(&["non-finite", &tensors[0].0]);

    // A checkpoint folder without its state.json (a kill while an older pruner deleted it) is named as damaged.
    std::fs::remove_file(out.join("checkpoints/step-0000002/state.json")).unwrap();
    condlm(&["train", "--resume", &s(&out.join("checkpoints/step-0000002"))]).fails_with(&[
        "step-0000002",
        "damaged checkpoint",
        "state.json is missing",
    ]);
    // From inside the checkpoints folder, the run folder named is the real one.
    let r = condlm_in(&out.join("checkpoints"), &["train", "--resume", "step-0000002"]);
    r.fails_with(&["damaged checkpoint", &format!("no checkpoint of {} is intact", out.display())]);
    // With an intact one, that one is named.
    std::fs::write(&latest, &latest_bytes).unwrap();
    let r = condlm_in(&out.join("checkpoints"), &["train", "--resume", "step-0000002"]);
    r.fails_with(&["damaged checkpoint", &format!("--resume {}", out.join("checkpoints/step-0000006").display())]);
}

#[test]
fn pruning_leaves_only_the_checkpoints_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let r = train(&out, &["--max-steps", "5", "--save-every", "1", "--keep-last", "2"]);
    assert!(r.ok(), "{}", r.stderr);
    let mut names: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // 4 and 5 are the last two; the best by eval loss is kept too, when it is another.
    assert!(names.ends_with(&["step-0000004".into(), "step-0000005".into()]) && names.len() <= 3, "{names:?}");
}

/// `--resume` of a folder that has a run's files but no checkpoint (stopped before its first) or only a run set
/// aside by an interrupted `--overwrite` says what the folder holds and what to do, not "no checkpoints".
#[test]
fn resume_without_a_checkpoint_says_what_the_folder_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "{\"step\":1}\n").unwrap();
    condlm(&["train", "--resume", &s(&out)]).fails_with(&["already holds a training run", "--overwrite"]);
    std::fs::create_dir_all(out.join(".condlm-replaced-1")).unwrap();
    std::fs::rename(out.join("metrics.jsonl"), out.join(".condlm-replaced-1/metrics.jsonl")).unwrap();
    condlm(&["train", "--resume", &s(&out)]).fails_with(&[".condlm-replaced-1", "move its contents back"]);
}

#[test]
fn every_flag_is_checked_with_its_range() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cases: [(&[&str], &[&str]); 12] = [
        (&["--lr", "-1"], &["--lr must be a positive number"]),
        (&["--lr=nan"], &["--lr must be a positive number"]),
        (&["--weight-decay=-1"], &["--weight-decay", "≥ 0"]),
        (&["--max-grad-norm", "-1"], &["--max-grad-norm", "≥ 0"]),
        (&["--max-grad-norm", "nan"], &["--max-grad-norm", "≥ 0"]),
        (&["--lora-alpha", "nan"], &["--lora-alpha must be a positive number"]),
        (&["--lora-dropout", "1"], &["--lora-dropout must be in [0, 1)"]),
        (&["--lora-r", "0"], &["--lora-r must be at least 1"]),
        (&["--max-steps", "0"], &["--max-steps must be at least 1"]),
        (&["--eval-fraction", "1"], &["--eval-fraction must be in [0, 1)"]),
        // 0 used to publish the untrained adapter as the finished result.
        (&["--stop-after-steps", "0"], &["--stop-after-steps", "0 is not in 1.."]),
        (&["--freeze-embeddings"], &["--freeze-embeddings applies to --full"]),
    ];
    for (flags, words) in cases {
        train(&out, flags).fails_with(words);
        assert!(!out.exists(), "{flags:?} created the output folder");
    }
}

#[test]
fn eval_every_evaluates_on_its_steps_and_the_last_only() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // 40 rows minus the held-out prompts: about 7 steps per epoch of 4 rows, so step 12 crosses an epoch end.
    let r = train(&out, &["--max-steps", "12", "--eval-fraction", "0.2", "--eval-every", "5"]);
    assert!(r.ok(), "{}", r.stderr);
    assert_eq!(metric_steps(&out).1, vec![0, 5, 10, 12]);
}

#[test]
fn holding_out_the_only_prompt_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("one_prompt.jsonl");
    let rows: String =
        (0..6).map(|i| format!("{{\"prompt\": \"Same question\", \"completion\": \" answer {i}\"}}\n")).collect();
    std::fs::write(&data, rows).unwrap();
    let out = tmp.path().join("run");
    train(&out, &["--data", &s(&data), "--eval-fraction", "0.5"]).fails_with(&["--eval-fraction", "--eval-data"]);
}

#[test]
fn a_model_with_a_nan_weight_is_named_before_training_blames_the_learning_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_fixture("tiny-llama", &tmp.path().join("nan-llama"));
    let w = model.join("model.safetensors");
    let bytes = read(&w);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let nan: Vec<u8> = std::iter::repeat_n(f32::NAN.to_le_bytes(), 64).flatten().collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| match n.as_str() {
            "model.norm.weight" => {
                let t = safetensors::tensor::TensorView::new(v.dtype(), v.shape().to_vec(), &nan[..v.data().len()]);
                (n, t.unwrap())
            }
            _ => (n, v),
        })
        .collect();
    std::fs::write(&w, safetensors::serialize(views, None).unwrap()).unwrap();
    let out = tmp.path().join("run");
    let r = train(&out, &["--model", &s(&model)]);
    r.fails_with(&["model.norm.weight", "non-finite"]);
    assert!(!r.stderr.contains("learning rate"), "{}", r.stderr);
    assert!(!out.exists(), "nothing is written for a model that cannot train");
}

#[test]
fn a_config_that_is_not_a_regular_file_is_refused() {
    condlm(&["train", "--config", "/dev/zero"]).fails_with(&["/dev/zero", "not a regular file"]);
}

#[test]
fn resume_continues_in_its_folder_on_its_model_wherever_it_is_run_from() {
    let tmp = tempfile::tempdir().unwrap();
    let started_in = tmp.path().join("a");
    std::fs::create_dir_all(&started_in).unwrap();
    common::copy_dir(&fixture("tiny-llama"), &started_in.join("m"));
    std::fs::copy(fixture("train_rows.jsonl"), started_in.join("rows.jsonl")).unwrap();
    // Relative paths, as typed in the folder the run started from.
    let args = ["train", "--model", "m", "--data", "rows.jsonl", "--output-dir", "run", "--max-steps", "6"];
    let run_in = |dir: &Path, args: &[&str]| {
        finish(Command::new(env!("CARGO_BIN_EXE_condlm")).current_dir(dir).args(args).output().unwrap())
    };
    let r =
        run_in(&started_in, &[&args[..], &["--batch-size", "4", "--lora-r", "2", "--stop-after-steps", "2"]].concat());
    assert!(r.ok(), "{}", r.stderr);
    let run = started_in.join("run");
    // Resumed from elsewhere, where "m" is another model and "run" another folder: the run's own files are used.
    let elsewhere = tmp.path().join("b");
    std::fs::create_dir_all(&elsewhere).unwrap();
    common::copy_dir(&fixture("tiny-qwen2"), &elsewhere.join("m"));
    let r = run_in(&elsewhere, &["train", "--resume", &s(&run), "--stop-after-steps", "2"]);
    assert!(r.ok(), "{}", r.stderr);
    assert!(!elsewhere.join("run").exists(), "the resumed run wrote into the current folder");
    assert_eq!(metric_steps(&run).0, vec![1, 2, 3, 4]);

    // Another model at the run's path (same shapes, one weight changed): refused.
    let weights = started_in.join("m/model.safetensors");
    let mut bytes = read(&weights);
    let last = bytes.len() - 2; // a mantissa byte of the last f32 value (a norm weight): still finite
    bytes[last] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    run_in(&elsewhere, &["train", "--resume", &s(&run)]).fails_with(&["base model changed", "m"]);
}

#[test]
fn resuming_from_an_earlier_checkpoint_sets_the_later_ones_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    assert!(train(&straight, &["--max-steps", "8"]).ok());
    let out = tmp.path().join("run");
    let r = train(&out, &["--max-steps", "8", "--save-every", "2", "--keep-last", "3", "--stop-after-steps", "6"]);
    assert!(r.ok(), "{}", r.stderr);
    // Back to step 2: steps 4 and 6 belong to the course abandoned; a plain --resume must not return to them.
    let r = condlm(&["train", "--resume", &s(&out.join("checkpoints/step-0000002")), "--stop-after-steps", "1"]);
    assert!(
        r.ok() && r.stderr.contains("step-0000003") && r.stderr.contains("superseded-step-0000006"),
        "{}",
        r.stderr
    );
    let mut names: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["step-0000002", "step-0000003", "superseded-step-0000004", "superseded-step-0000006"]);
    let r = condlm(&["train", "--resume", &s(&out)]);
    assert!(r.ok(), "{}", r.stderr);
    assert_eq!(metric_steps(&out).0, (1..=8).collect::<Vec<u64>>());
    assert_eq!(
        read(&out.join("adapter/adapter_model.safetensors")),
        read(&straight.join("adapter/adapter_model.safetensors"))
    );
}

#[test]
fn a_run_logged_to_a_file_gets_plain_step_and_eval_lines() {
    // stderr here is a pipe: no bar is drawn, and indicatif drops what is printed through it.
    let tmp = tempfile::tempdir().unwrap();
    let r = train(&tmp.path().join("run"), &["--eval-fraction", "0.25", "--eval-every", "2"]);
    assert!(r.ok(), "{}", r.stderr);
    for line in ["step 2: eval NLL", "step 4: eval NLL", "step 4/4 epoch", " tok/s ETA "] {
        assert!(r.stderr.contains(line), "missing {line:?} in:\n{}", r.stderr);
    }
}
