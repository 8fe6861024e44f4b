//! `condlm demo --quick` end to end through the binary: the same pipeline as the README's first command
//! (task, tokenizer and model built in code, training, held-out NLL, greedy generation, run folder), with a
//! tiny model and a few steps. Whether the full demo reaches ≥ 90 % exact match is measured by hand, not here.
use std::path::Path;
use std::process::{Command, Output};

fn condlm(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_condlm")).args(["--threads", "2"]).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    out
}

fn demo(dir: &Path) -> Output {
    condlm(&["demo", "--quick", "--output-dir", dir.to_str().unwrap()])
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn quick_demo_runs_end_to_end_and_writes_its_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo-run");
    let out = demo(&dir);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "demo failed:\n{stderr}");
    assert!(stdout.starts_with("demo: exact match "), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "one summary line on stdout: {stdout}");
    assert!(stderr.contains("four thousand eight hundred twenty-one"), "{stderr}");

    for f in ["metrics.jsonl", "loss.png", "samples.jsonl", "demo.json", "data/train.jsonl", "data/heldout.jsonl"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(dir.join("init-model").join(f).is_file(), "init-model/{f} missing");
        assert!(dir.join("model").join(f).is_file(), "model/{f} missing");
    }
    assert!(std::fs::read_dir(dir.join("checkpoints")).unwrap().next().is_some(), "no checkpoint");
    let png = std::fs::read(dir.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    let r = json(&dir.join("demo.json"));
    assert_eq!(r["state"], "done");
    let (before, after) = (r["eval"]["nll_before"].as_f64().unwrap(), r["eval"]["nll_after"].as_f64().unwrap());
    assert!(before.is_finite() && after.is_finite() && after < before, "held-out NLL {before} → {after}");
    // A random model over 97 tokens starts near ln 97.
    assert!((before - 97f64.ln()).abs() < 0.5, "held-out NLL before training {before}");
    let heldout = r["task"]["heldout_pairs"].as_u64().unwrap() as usize;
    assert_eq!(r["generation"]["total"].as_u64().unwrap() as usize, heldout);
    assert_eq!(r["training"]["steps"], 12);
    assert_eq!(r["model"]["architecture"], "LlamaForCausalLM");

    // Held-out rows are disjoint from training rows (split by x); samples cover every held-out row.
    let read_prompts = |f: &str| -> Vec<String> {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"].as_str().unwrap().into())
            .collect()
    };
    let (train, held) = (read_prompts("data/train.jsonl"), read_prompts("data/heldout.jsonl"));
    assert_eq!(held.len(), heldout);
    assert!(held.iter().all(|p| !train.contains(p)));
    assert_eq!(read_prompts("samples.jsonl"), held);

    // metrics.jsonl: a train line per step, eval lines at 0 and the end.
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(metrics.iter().filter(|m| m["loss"].is_f64()).count(), 12);
    let evals: Vec<(u64, f64)> =
        metrics.iter().filter_map(|m| Some((m["step"].as_u64()?, m["eval_nll"].as_f64()?))).collect();
    assert_eq!(evals.first().map(|e| e.0), Some(0));
    assert_eq!(evals.last().map(|e| e.0), Some(12));
    assert!((evals.last().unwrap().1 - after).abs() < 1e-9);

    // The trained model folder is an ordinary checkpoint: `condlm score` loads it and gets the same held-out NLL.
    let model = dir.join("model");
    let data = dir.join("data/heldout.jsonl");
    let s = condlm(&["score", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    let serr = String::from_utf8_lossy(&s.stderr);
    assert!(s.status.success(), "score failed: {serr}");
    assert!(
        serr.contains(&format!("NLL/token {after:.4}")),
        "score disagrees with the demo's eval NLL {after}: {serr}"
    );
}

#[test]
fn demo_replaces_its_own_earlier_run_but_no_other_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo-run");
    assert!(demo(&dir).status.success());
    let first = std::fs::read(dir.join("samples.jsonl")).unwrap();
    let again = demo(&dir);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("replacing the earlier demo run"));
    // Same seed, same thread count: the same run.
    assert_eq!(std::fs::read(dir.join("samples.jsonl")).unwrap(), first);

    // A file the user added to the earlier run's folder is not deleted with it: the demo refuses, naming it.
    std::fs::write(dir.join("my-notes.txt"), "keep me").unwrap();
    let refused = demo(&dir);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("my-notes.txt") && err.contains("--output-dir"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("my-notes.txt")).unwrap(), "keep me");
    assert_eq!(std::fs::read(dir.join("samples.jsonl")).unwrap(), first);

    let other = tmp.path().join("precious");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep me").unwrap();
    let refused = demo(&other);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("not empty") && err.contains("--output-dir"), "{err}");
    assert_eq!(std::fs::read_to_string(other.join("notes.txt")).unwrap(), "keep me");
}
