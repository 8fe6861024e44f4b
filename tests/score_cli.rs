//! `condlm score` reads every file `condlm eval` reads (prompt/completion, Alpaca, chat; JSONL or a JSON array)
//! and agrees with it on the total NLL per token.
mod common;
use common::{fixture, long_context_llama};
use std::path::Path;
use std::process::Command;

/// Runs the binary on `model` and `data`; returns (stdout, stderr).
fn condlm(command: &str, model: &Path, data: &Path, extra: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_condlm"))
        .args([command, "--threads", "2", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8_lossy(&out.stderr).to_string());
    assert!(out.status.success() && !stderr.contains("panicked"), "{command} {}: {stderr}", data.display());
    (stdout, stderr)
}

/// `score`'s rows, and its NLL per token from them: −Σ logprob / Σ tokens.
fn score(model: &Path, data: &Path) -> (Vec<serde_json::Value>, f64) {
    let (stdout, stderr) = condlm("score", model, data, &[]);
    assert!(stderr.contains("perplexity"), "{stderr}");
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let nll: f64 = -rows.iter().map(|r| r["logprob"].as_f64().unwrap()).sum::<f64>();
    let tokens: u64 = rows.iter().map(|r| r["tokens"].as_u64().unwrap()).sum();
    (rows, nll / tokens as f64)
}

/// `eval`'s JSON line.
fn eval(model: &Path, data: &Path) -> serde_json::Value {
    serde_json::from_str(&condlm("eval", model, data, &[]).0).unwrap()
}

#[test]
fn score_reads_what_eval_reads_and_agrees_on_nll() {
    let tmp = tempfile::tempdir().unwrap();
    let model = long_context_llama(tmp.path());
    for (file, first_source) in [
        ("data/alpaca.json", "alpaca.json:2 (element 0)"),
        ("data/chats.jsonl", "chats.jsonl:1"),
        ("score_rows.jsonl", "score_rows.jsonl:1"),
    ] {
        let data = fixture(file);
        let (rows, nll) = score(&model, &data);
        let e = eval(&model, &data);
        assert_eq!(rows.len() as u64, e["rows"].as_u64().unwrap(), "{file}");
        let tokens: u64 = rows.iter().map(|r| r["tokens"].as_u64().unwrap()).sum();
        assert_eq!(tokens, e["tokens"].as_u64().unwrap(), "{file}: eval cut rows that score kept whole");
        let want = e["nll"].as_f64().unwrap();
        assert!((nll - want).abs() <= 1e-6 * want.abs(), "{file}: score {nll} vs eval {want}");
        // Each output row names its source row.
        assert_eq!(rows[0]["row"], 0);
        assert!(rows[0]["source"].as_str().unwrap().ends_with(first_source), "{file}: {}", rows[0]);
    }
}

#[test]
fn score_takes_the_field_flags_and_per_token_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    std::fs::write(&data, "{\"q\": \"name: Blue Spice\", \"a\": \"A coffee shop.\"}\n").unwrap();
    let (stdout, _) = condlm(
        "score",
        &fixture("tiny-llama"),
        &data,
        &["--prompt-field", "q", "--completion-field", "a", "--per-token"],
    );
    let row: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let (ids, lps) = (row["ids"].as_array().unwrap(), row["token_logprobs"].as_array().unwrap());
    let y_start = row["y_start"].as_u64().unwrap() as usize;
    assert_eq!((ids.len() - y_start, lps.len()), (lps.len(), row["tokens"].as_u64().unwrap() as usize));
    let sum: f64 = lps.iter().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - row["logprob"].as_f64().unwrap()).abs() < 1e-3, "{row}");
}

#[test]
fn score_refuses_a_row_longer_than_the_context_window() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("long.jsonl");
    let long = "word ".repeat(5000);
    std::fs::write(
        &data,
        format!("{{\"prompt\": \"a\", \"completion\": \"b\"}}\n{{\"prompt\": \"{long}\", \"completion\": \"b\"}}\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_condlm"))
        .args(["score", "--threads", "1", "--model"])
        .arg(fixture("tiny-llama"))
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("long.jsonl:2") && stderr.contains("context window"), "{stderr}");
}

/// `--device`: `cpu` is the default path; `cuda` without a GPU (or without the `cuda` feature) is an error that
/// says what to do, never a panic or a silent CPU run; a bad name lists the choices.
#[test]
fn score_and_eval_take_a_device() {
    let (model, data) = (fixture("tiny-llama"), fixture("score_rows.jsonl"));
    let (default, _) = condlm("eval", &model, &data, &[]);
    let (cpu, _) = condlm("eval", &model, &data, &["--device", "cpu"]);
    assert_eq!(default, cpu);
    for (device, want) in [("cuda", "CUDA"), ("tpu", "cuda:N or reference")] {
        for command in ["score", "eval"] {
            let out = Command::new(env!("CARGO_BIN_EXE_condlm"))
                .args([command, "--threads", "1", "--device", device, "--model"])
                .arg(&model)
                .arg("--data")
                .arg(&data)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && !stderr.contains("panicked"), "{command} --device {device}: {stderr}");
            assert!(stderr.contains(want), "{command} --device {device}: {stderr}");
        }
    }
}

#[test]
fn per_token_output_names_the_position_of_every_scored_token() {
    // A chat's targets are its assistant turns, with context (the next user turn, the newline after each
    // end-of-turn token) between them: y_start alone cannot place its log-probs.
    let tmp = tempfile::tempdir().unwrap();
    let chats = tmp.path().join("chats.jsonl");
    let text = std::fs::read_to_string(fixture("data/chats.jsonl")).unwrap();
    // Line 3 is longer than tiny-llama's context (score refuses it).
    let fitting: Vec<&str> = text.lines().enumerate().filter(|(i, _)| *i != 2).map(|(_, l)| l).collect();
    std::fs::write(&chats, fitting.join("\n") + "\n").unwrap();
    let (stdout, _) = condlm("score", &fixture("tiny-llama"), &chats, &["--per-token"]);
    for line in stdout.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let positions: Vec<usize> =
            row["target_positions"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let lps = row["token_logprobs"].as_array().unwrap();
        assert_eq!(positions.len(), lps.len(), "{row}");
        assert_eq!(positions.len(), row["tokens"].as_u64().unwrap() as usize);
        assert_eq!(positions[0], row["y_start"].as_u64().unwrap() as usize);
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]) && positions.last() < Some(&row["ids"].as_array().unwrap().len())
        );
    }
    assert!(
        stdout.lines().any(|l| {
            let row: serde_json::Value = serde_json::from_str(l).unwrap();
            let p = row["target_positions"].as_array().unwrap();
            p.windows(2).any(|w| w[1].as_u64().unwrap() > w[0].as_u64().unwrap() + 1)
        }),
        "no chat with context between its targets"
    );
}

/// `--compute int8` says when it cannot change a score: weights that are not block-quantized take f32 products.
#[test]
fn int8_on_weights_it_cannot_use_says_so() {
    let data = fixture("score_rows.jsonl");
    let (f32_rows, _) = condlm("score", &fixture("tiny-llama"), &data, &[]);
    let (int8_rows, stderr) = condlm("score", &fixture("tiny-llama"), &data, &["--compute", "int8"]);
    assert!(stderr.contains("note: --compute int8 changes nothing here"), "{stderr}");
    assert_eq!(int8_rows, f32_rows);
}
