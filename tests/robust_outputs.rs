//! `score`, `eval` and `generate` never lose work and never report a broken result as success: outputs are
//! checked before any work, grow in FILE.partial (kept on interruption, continued by --resume-output, renamed
//! when complete), an existing file is replaced only with --overwrite, non-finite results fail naming the row,
//! eval never scores part of a completion, and every numeric flag's range is checked before the model loads.
mod common;
use common::{copy_fixture, fixture};
use condlm::formats::load::load_model;
use condlm::generate::{GenerateOptions, NonFiniteLogits, generate_from};
use condlm::score::{NonFiniteScore, OnCpu, load_rows, score_batches};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the binary; returns (success, stdout, stderr).
fn condlm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_condlm")).args(args).args(["--threads", "1"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8_lossy(&out.stderr).to_string());
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.success(), stdout, stderr)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn partial(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.partial", out.display()))
}

/// What the partial's rows depend on, recorded beside it.
fn fingerprint(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.partial.json", out.display()))
}

/// Simulates a run killed at byte `cut` of its output: the finished file's first `cut` bytes left as the partial
/// (mid-line unless `cut` falls on a line end), the file itself absent.
fn interrupt(out: &Path, full: &str, cut: usize) {
    std::fs::write(partial(out), &full.as_bytes()[..cut]).unwrap();
    let _ = std::fs::remove_file(out);
}

/// Runs `args` (with `--out out --overwrite`) as a crash stops it: killed (SIGXFSZ) as it writes past 8 KiB of
/// a file, after its fingerprint (written before the first row) and the first rows. So that it gets that far
/// whatever the size of its rows, its --data file has 100 more rows during the run (rows past those a resumed run
/// keeps may differ). Returns stderr.
fn killed(args: &[&str], out: &Path) -> String {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    // The data with rows added after it, in a copy beside the output (the input, maybe a shared fixture, is
    // left alone: other tests read it meanwhile).
    let at = args.iter().position(|&a| a == "--data").unwrap() + 1;
    let text = std::fs::read_to_string(args[at]).unwrap();
    let more = "{\"prompt\": \"name: The Wrestlers\", \"completion\": \"The Wrestlers.\"}\n".repeat(100);
    let longer = out.with_extension("longer-data.jsonl");
    std::fs::write(&longer, format!("{text}{more}")).unwrap();
    let mut args = args.to_vec();
    args[at] = s(&longer);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_condlm"));
    cmd.args(&args).args(["--out", s(out), "--overwrite", "--threads", "1"]);
    let limit: libc::rlim_t = 8192;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let (core, size) =
                (libc::rlimit { rlim_cur: 0, rlim_max: 0 }, libc::rlimit { rlim_cur: limit, rlim_max: limit });
            if libc::setrlimit(libc::RLIMIT_CORE, &core) != 0 || libc::setrlimit(libc::RLIMIT_FSIZE, &size) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _ = std::fs::remove_file(out);
    let o = cmd.output().unwrap();
    std::fs::remove_file(&longer).unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.signal(), Some(libc::SIGXFSZ), "not killed at {limit} bytes: {stderr}");
    assert!(!out.exists() && partial(out).exists(), "{stderr}");
    assert!(fingerprint(out).exists(), "the fingerprint was not written before the rows: {stderr}");
    stderr
}

/// As [`interrupt`], for a real run of `args` (whose complete output is `full`): the partial left by a crash
/// of that run, cut at byte `cut`, with the fingerprint it recorded.
fn interrupt_run(args: &[&str], out: &Path, full: &str, cut: usize) {
    killed(args, out);
    interrupt(out, full, cut);
}

/// Six rows of which two repeat an earlier prompt (greedy decodes a repeated prompt once).
fn prompt_rows(dir: &Path) -> PathBuf {
    let rows = dir.join("rows.jsonl");
    let text: String =
        (0..6).map(|i| format!("{{\"prompt\": \"name: The Eagle {}\", \"id\": {i}}}\n", i % 4)).collect();
    std::fs::write(&rows, text).unwrap();
    rows
}

/// An --out that is an input (the data file, a file of the model folder) is refused even with --overwrite, before
/// anything is written: the input stays as it was.
#[test]
fn an_out_that_is_an_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    std::fs::copy(fixture("score_rows.jsonl"), &data).unwrap();
    let model = copy_fixture("tiny-llama", &tmp.path().join("model"));
    let before = std::fs::read(&data).unwrap();
    let (ok, _, err) = condlm(&["score", "--model", s(&model), "--data", s(&data), "--out", s(&data), "--overwrite"]);
    assert!(!ok && err.contains("an input of this command"), "{err}");
    assert_eq!(std::fs::read(&data).unwrap(), before);
    let tok = model.join("tokenizer.json");
    let tok_before = std::fs::read(&tok).unwrap();
    let rows = prompt_rows(tmp.path());
    let (ok, _, err) = condlm(&["generate", "--model", s(&model), "--data", s(&rows), "--out", s(&tok), "--overwrite"]);
    assert!(!ok && err.contains("an input of this command"), "{err}");
    assert_eq!(std::fs::read(&tok).unwrap(), tok_before);
    // A new file inside an input folder is refused as well, from the first run (not only once it exists).
    let (ok, _, err) =
        condlm(&["generate", "--model", s(&model), "--data", s(&rows), "--out", s(&model.join("gen.jsonl"))]);
    assert!(!ok && err.contains("lies inside") && !model.join("gen.jsonl").exists(), "{err}");
}

#[test]
fn generate_out_without_data_is_refused() {
    // --out writes the rows of --data; with --prompt it used to be ignored (exit 0, no file).
    let (ok, _, err) = condlm(&["generate", "--model", "/nonexistent/model", "--prompt", "hi", "--out", "g.jsonl"]);
    assert!(!ok && err.contains("--out writes the rows of --data"), "{err}");
    // So were --ids and --split, whose `requires = "data"` clap drops beside --prompt.
    for flag in [&["--ids"][..], &["--split", "test"]] {
        let (ok, _, err) =
            condlm(&[&["generate", "--model", "/nonexistent/model", "--prompt", "hi"][..], flag].concat());
        assert!(!ok && err.contains(&format!("{} applies to the rows of --data", flag[0])), "{err}");
    }
}

#[test]
fn a_missing_output_folder_fails_before_the_model_loads() {
    // The model does not exist either: an error about the folder shows the output was checked first.
    let (ok, _, err) =
        condlm(&["score", "--model", "/nonexistent/model", "--data", "x.jsonl", "--out", "/missing-dir/s.jsonl"]);
    assert!(!ok && err.contains("/missing-dir") && err.contains("does not exist"), "{err}");
    let (ok, _, err) =
        condlm(&["generate", "--model", "/nonexistent/model", "--data", "x.jsonl", "--out", "/missing-dir/g.jsonl"]);
    assert!(!ok && err.contains("/missing-dir") && err.contains("does not exist"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, err) = condlm(&["score", "--model", "/nonexistent/model", "--data", "x.jsonl", "--out", s(tmp.path())]);
    assert!(!ok && err.contains("is a folder"), "{err}");
}

#[test]
fn score_resumed_after_an_interruption_writes_the_uninterrupted_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("scores.jsonl");
    let (model, data) = (fixture("tiny-llama"), fixture("score_rows.jsonl"));
    let args = ["score", "--model", s(&model), "--data", s(&data), "--per-token"];
    let (ok, _, err) = condlm(&[&args[..], &["--out", s(&out), "--batch", "2"]].concat());
    assert!(ok, "{err}");
    assert!(!partial(&out).exists() && !fingerprint(&out).exists());
    let full = std::fs::read_to_string(&out).unwrap();
    assert_eq!(full.lines().count(), 4);
    let first_line = full.find('\n').unwrap() + 1;
    // Killed inside row 1, exactly after row 0, and inside row 0: each resumes to the same bytes (whatever the
    // batch size) and the same totals; the fingerprint goes with the partial.
    for cut in [first_line + 30, first_line, 5] {
        interrupt_run(&args, &out, &full, cut);
        let (ok, _, err) = condlm(&[&args[..], &["--out", s(&out), "--batch", "3", "--resume-output"]].concat());
        assert!(ok, "cut at {cut}: {err}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), full, "cut at {cut}");
        assert!(!partial(&out).exists() && !fingerprint(&out).exists() && err.contains("NLL/token 8.6483"), "{err}");
    }
    // Without --per-token the partial's rows are of other settings: refused before the model loads, saying
    // what differs, the partial left as it was.
    interrupt_run(&args, &out, &full, first_line);
    let (ok, _, err) =
        condlm(&["score", "--model", s(&model), "--data", s(&data), "--out", s(&out), "--resume-output"]);
    assert!(!ok && err.contains("scores.jsonl.partial was written with other settings"), "{err}");
    assert!(err.contains("--per-token: true then, false now") && err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read_to_string(partial(&out)).unwrap(), &full[..first_line]);
}

/// The rows of score_rows.jsonl, the second one's prompt edited (its completion, and so its token count, kept).
fn edited_score_rows(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(fixture("score_rows.jsonl")).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[1] = lines[1].replacen("Blue Spice", "Green Spice", 1);
    let edited = dir.join("score_rows.jsonl");
    std::fs::write(&edited, lines.join("\n") + "\n").unwrap();
    edited
}

#[test]
fn score_refuses_a_partial_of_another_model_adapter_or_edited_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("scores.jsonl");
    let model = fixture("tiny-llama");
    let data = tmp.path().join("data").join("score_rows.jsonl");
    std::fs::create_dir_all(data.parent().unwrap()).unwrap();
    std::fs::copy(fixture("score_rows.jsonl"), &data).unwrap();
    let adapter = fixture("interop/tiny-llama-condlm-adapter");
    let args = ["score", "--model", s(&model), "--data", s(&data)];
    let (ok, _, err) = condlm(&[&args[..], &["--out", s(&out)]].concat());
    assert!(ok, "{err}");
    let full = std::fs::read_to_string(&out).unwrap();
    let three_rows = full.match_indices('\n').nth(2).unwrap().0 + 1;
    let resume = |extra: &[&str]| condlm(&[&args[..], extra, &["--out", s(&out), "--resume-output"]].concat());
    // Scored with an adapter, resumed without: refused before the model loads (no memory plan, no load).
    interrupt_run(&[&args[..], &["--adapter", s(&adapter)]].concat(), &out, &full, three_rows);
    let (ok, _, err) = resume(&[]);
    assert!(!ok && err.contains("--adapter: ") && err.contains("tiny-llama-condlm-adapter then, none now"), "{err}");
    // Scored with another model (a copy elsewhere), resumed with this one.
    let copy = copy_model(&tmp.path().join("copy"));
    interrupt_run(&["score", "--model", s(&copy), "--data", s(&data)], &out, &full, three_rows);
    let (ok, _, err) = resume(&[]);
    assert!(!ok && err.contains("--model path: ") && err.contains("copy/tiny-llama then, "), "{err}");
    // The same folder, its weights replaced since (a model trained again in place).
    let copy_args = ["score", "--model", s(&copy), "--data", s(&data)];
    interrupt_run(&copy_args, &out, &full, three_rows);
    let other = nan_llama(tmp.path());
    std::fs::copy(other.join("model.safetensors"), copy.join("model.safetensors")).unwrap();
    let (ok, _, err) = condlm(&[&copy_args[..], &["--out", s(&out), "--resume-output"]].concat());
    assert!(!ok && err.contains("--model files model.safetensors: sha256 "), "{err}");
    // A kept row whose prompt was edited since (same completion, same token count): its stale score is refused,
    // naming the line and the row.
    interrupt_run(&args, &out, &full, three_rows);
    edited_score_rows(data.parent().unwrap());
    let (ok, _, err) = resume(&[]);
    assert!(!ok && err.contains("scores.jsonl.partial:2") && err.contains("score_rows.jsonl:2 of the input"), "{err}");
    assert!(err.contains("edited"), "{err}");
    // A partial of an older condlm (no fingerprint) is refused before the model loads.
    interrupt(&out, &full, three_rows);
    std::fs::remove_file(fingerprint(&out)).unwrap();
    let (ok, _, err) =
        condlm(&["score", "--model", "/nonexistent/model", "--data", s(&data), "--out", s(&out), "--resume-output"]);
    assert!(!ok && err.contains("older condlm") && err.contains("scores.jsonl.partial.json"), "{err}");
    assert!(err.contains("--overwrite") && !err.contains("nonexistent"), "{err}");
}

/// tiny-llama copied into `dir` (as `dir/tiny-llama`, so an adapter for it still names its base).
fn copy_model(dir: &Path) -> PathBuf {
    copy_fixture("tiny-llama", &dir.join("tiny-llama"))
}

/// Equal rows, except that a beam score may differ by float rounding: the resumed run decodes fewer prompts
/// at once, and a batch of prompts may take another kernel (GEMM instead of matrix-vector) than a lone one.
fn assert_same_generations(got: &str, want: &str) {
    let parse = |t: &str| t.lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<serde_json::Value>>();
    let (mut got, mut want) = (parse(got), parse(want));
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter_mut().zip(&mut want) {
        if let (Some(a), Some(b)) =
            (g.as_object_mut().unwrap().remove("score"), w.as_object_mut().unwrap().remove("score"))
        {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= 1e-5 * b.abs(), "beam score {a} vs {b}");
        }
        assert_eq!(g, w);
    }
}

#[test]
fn generate_resumed_after_an_interruption_writes_the_uninterrupted_file() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = prompt_rows(tmp.path());
    let out = tmp.path().join("gen.jsonl");
    let model = fixture("tiny-llama");
    for decoding in [&["--num-beams", "2"][..], &["--temperature", "0.8", "--seed", "3"][..], &[][..]] {
        let args =
            [&["generate", "--model", s(&model), "--data", s(&rows), "--max-new-tokens", "6", "--ids"][..], decoding]
                .concat();
        // Without --out the rows go to stdout; with it, the same rows to the file.
        let (ok, stdout, err) = condlm(&args);
        assert!(ok, "{err}");
        assert_eq!(stdout.lines().count(), 6, "{stdout}");
        let with_out = [&args[..], &["--out", s(&out), "--overwrite"]].concat();
        let (ok, _, err) = condlm(&with_out);
        assert!(ok, "{err}");
        // 6 rows of 4 prompts: sampled once per row, else each prompt decoded once.
        let how = if decoding.contains(&"--temperature") { "one sample per row" } else { "each distinct prompt" };
        assert!(err.contains("for 6 rows (4 distinct prompts)") && err.contains(how), "{err}");
        let full = std::fs::read_to_string(&out).unwrap();
        assert_eq!(full, stdout, "{decoding:?}");
        assert!(!fingerprint(&out).exists());
        // Killed in the middle of row 3 (rows 0..=2 kept): the rest is generated, sampled rows draw what the
        // uninterrupted run drew, and repeated prompts of the kept rows are decoded again.
        let cut = full.match_indices('\n').nth(2).unwrap().0 + 10;
        interrupt_run(&args, &out, &full, cut);
        let (ok, _, err) = condlm(&[&args[..], &["--out", s(&out), "--resume-output"]].concat());
        assert!(ok && err.contains("3 rows already done"), "{decoding:?}: {err}");
        assert_same_generations(&std::fs::read_to_string(&out).unwrap(), &full);
        assert!(!partial(&out).exists() && !fingerprint(&out).exists());
    }
    // A partial of other rows is refused, naming its line.
    let other = tmp.path().join("other.jsonl");
    std::fs::write(&other, "{\"prompt\": \"name: The Eagle 0\", \"id\": 7}\n").unwrap();
    let args = ["generate", "--model", s(&model), "--max-new-tokens", "6"];
    let (ok, full, err) = condlm(&[&args[..], &["--data", s(&rows)]].concat());
    assert!(ok, "{err}");
    interrupt_run(&[&args[..], &["--data", s(&rows)]].concat(), &out, &full, full.find('\n').unwrap() + 1);
    let (ok, _, err) = condlm(&[&args[..], &["--data", s(&other), "--out", s(&out), "--resume-output"]].concat());
    assert!(!ok && err.contains("gen.jsonl.partial:1") && err.contains("other.jsonl:1 of --data"), "{err}");
}

/// The audit's case: a partial of sampled rows resumed by a greedy run (which copies a kept row's output to the
/// later rows of its prompt) was accepted. Other decoding flags, another seed, model or adapter, and an edited
/// prompt are refused too, before the model loads; the partial is left as it was.
#[test]
fn generate_refuses_a_partial_of_other_settings_model_or_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = prompt_rows(tmp.path());
    let out = tmp.path().join("gen.jsonl");
    let model = fixture("tiny-llama");
    // The first run: sampled, one prompt at a time (so that a resumed run writes its bytes exactly).
    let base = ["generate", "--model", s(&model), "--data", s(&rows), "--ids", "--batch", "1"];
    let sampled = [&base[..], &["--max-new-tokens", "8", "--temperature", "0.8", "--seed", "7"]].concat();
    let (ok, full, err) = condlm(&sampled);
    assert!(ok, "{err}");
    let cut = full.match_indices('\n').nth(2).unwrap().0 + 1;
    interrupt_run(&sampled, &out, &full, cut);
    let kept = std::fs::read(partial(&out)).unwrap();
    let resume = |args: &[&str]| condlm(&[args, &["--out", s(&out), "--resume-output"]].concat());
    let adapter = fixture("interop/tiny-llama-condlm-adapter");
    let copy = copy_model(&tmp.path().join("copy"));
    // The first run's flags with `changed` (and --max-new-tokens 8 unless `changed` has its own).
    let with = |changed: &[&'static str]| {
        let mut args = base.to_vec();
        if !changed.contains(&"--max-new-tokens") {
            args.extend(["--max-new-tokens", "8"]);
        }
        args.extend(changed);
        args
    };
    let sampling = |more: &[&'static str]| with(&[&["--temperature", "0.8", "--seed", "7"][..], more].concat());
    let mut other_model = sampling(&[]);
    other_model[2] = s(&copy);
    let adapter_args = [&sampling(&[])[..], &["--adapter", s(&adapter)]].concat();
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (with(&[]), &["--temperature: 0.8 then, 0 now", "--seed: 7 then, none now"]),
        (with(&["--temperature", "0.8", "--seed", "8"]), &["--seed: 7 then, 8 now"]),
        (sampling(&["--top-k", "5"]), &["--top-k: 0 then, 5 now"]),
        (with(&["--temperature", "0.8", "--seed", "7", "--max-new-tokens", "5"]), &["--max-new-tokens: 8 then, 5 now"]),
        (sampling(&["--stop", "x"]), &["--stop: [] then, [\"x\"] now"]),
        (sampling(&["--chat"]), &["--chat: false then, true now"]),
        (sampling(&["--base-dtype", "bf16"]), &["--base-dtype: stored then, bf16 now"]),
        (adapter_args, &["--adapter: none then, ", "tiny-llama-condlm-adapter now"]),
        (other_model, &["--model path: ", "copy/tiny-llama now"]),
    ];
    for (args, want) in &cases {
        let (ok, _, err) = resume(args);
        assert!(!ok && err.contains("gen.jsonl.partial was written with other settings"), "{args:?}: {err}");
        assert!(want.iter().all(|w| err.contains(w)) && !err.contains("memory:"), "{args:?}: {err}");
        assert_eq!(std::fs::read(partial(&out)).unwrap(), kept, "{args:?}: the partial is kept");
    }
    // A kept row whose prompt was edited since is refused, naming it.
    let text = std::fs::read_to_string(&rows).unwrap().replacen("The Eagle 1", "The Eagle 9", 1);
    std::fs::write(&rows, text).unwrap();
    let (ok, _, err) = resume(&sampled);
    assert!(!ok && err.contains("gen.jsonl.partial:2") && err.contains("rows.jsonl:2"), "{err}");
    // Resumed with its own settings (and rows), it writes the uninterrupted run's file byte for byte.
    prompt_rows(tmp.path());
    let (ok, _, err) = resume(&sampled);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), full);
}

#[test]
fn a_partial_needs_resume_output_and_a_finished_file_needs_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = prompt_rows(tmp.path());
    let model = fixture("tiny-llama");
    for (command, data) in [("score", fixture("score_rows.jsonl")), ("generate", rows)] {
        let out = tmp.path().join(format!("{command}.jsonl"));
        let mut args = vec![command, "--model", s(&model), "--data", s(&data), "--out", s(&out)];
        if command == "generate" {
            args.extend(["--max-new-tokens", "4"]);
        }
        let (ok, _, err) = condlm(&args);
        assert!(ok, "{err}");
        let full = std::fs::read_to_string(&out).unwrap();
        // A finished file is not replaced without --overwrite, and stays as it was.
        std::fs::write(&out, "keep me\n").unwrap();
        let (ok, _, err) = condlm(&args);
        assert!(
            !ok && err.contains(&format!("{command}.jsonl already exists")) && err.contains("--overwrite"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me\n");
        let (ok, _, err) = condlm(&[&args[..], &["--overwrite"]].concat());
        assert!(ok, "{err}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), full);
        // A partial is neither ignored nor overwritten without being asked.
        interrupt(&out, &full, 20);
        let (ok, _, err) = condlm(&args);
        assert!(!ok && err.contains(&format!("{command}.jsonl.partial")) && err.contains("--resume-output"), "{err}");
        assert_eq!(std::fs::read(partial(&out)).unwrap(), &full.as_bytes()[..20]);
        // --overwrite starts over.
        let (ok, _, err) = condlm(&[&args[..], &["--overwrite"]].concat());
        assert!(ok, "{err}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), full);
        assert!(!partial(&out).exists());
    }
}

/// tiny-llama copied into `dir/name` with its final norm's gains (f32) changed by `edit`.
fn llama_with_final_norm(dir: &Path, name: &str, edit: impl Fn(&mut [f32])) -> PathBuf {
    let model = copy_fixture("tiny-llama", &dir.join(name));
    let w = model.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut gains: Vec<f32> = st
        .tensor("model.norm.weight")
        .unwrap()
        .data()
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    edit(&mut gains);
    let norm: Vec<u8> = gains.iter().flat_map(|g| g.to_le_bytes()).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            if n == "model.norm.weight" {
                (n, safetensors::tensor::TensorView::new(v.dtype(), v.shape().to_vec(), &norm).unwrap())
            } else {
                (n, v)
            }
        })
        .collect();
    std::fs::write(&w, safetensors::serialize(views, None).unwrap()).unwrap();
    model
}

/// tiny-llama with one NaN in its final norm's gain, so that every logit is NaN.
fn nan_llama(dir: &Path) -> PathBuf {
    llama_with_final_norm(dir, "nan-llama", |g| g[0] = f32::NAN)
}

/// A model whose log-probs are all finite but so low (final norm gains ×1e5: NLL/token in the hundreds of
/// thousands) that the perplexity overflows: score and eval fail rather than report "perplexity inf" with exit 0.
#[test]
fn a_perplexity_that_overflows_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = llama_with_final_norm(tmp.path(), "huge-norm", |g| g.iter_mut().for_each(|v| *v *= 1e5));
    let data = fixture("score_rows.jsonl");
    let (ok, stdout, err) = condlm(&["eval", "--model", s(&model), "--data", s(&data)]);
    assert!(!ok && err.contains("perplexity exp(NLL/token) overflows") && stdout.is_empty(), "{err}");
    let out = tmp.path().join("scores.jsonl");
    let (ok, _, err) = condlm(&["score", "--model", s(&model), "--data", s(&data), "--out", s(&out)]);
    assert!(!ok && err.contains("overflows"), "{err}");
}

#[test]
fn non_finite_weights_fail_score_eval_and_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let model = nan_llama(tmp.path());
    let data = fixture("score_rows.jsonl");
    let rows = prompt_rows(tmp.path());
    let out = tmp.path().join("scores.jsonl");
    // Either a check at load (naming the tensor) or the result guard (naming the first row) stops each command.
    let refused = |err: &str, row: &str| {
        err.contains("non-finite") && (err.contains(row) || err.contains("model.norm.weight")) && !err.contains("NLL")
    };
    let (ok, stdout, err) = condlm(&["score", "--model", s(&model), "--data", s(&data), "--out", s(&out)]);
    assert!(!ok && refused(&err, "score_rows.jsonl:1") && stdout.is_empty(), "{err}");
    assert!(!out.exists());
    let (ok, stdout, err) = condlm(&["eval", "--model", s(&model), "--data", s(&data)]);
    assert!(!ok && refused(&err, "score_rows.jsonl:1") && stdout.is_empty(), "{err}");
    let (ok, stdout, err) = condlm(&["generate", "--model", s(&model), "--data", s(&rows)]);
    assert!(!ok && refused(&err, "rows.jsonl:1") && stdout.is_empty(), "{err}");
    let (ok, stdout, err) = condlm(&["generate", "--model", s(&model), "--prompt", "name: The Eagle"]);
    assert!(!ok && refused(&err, "--prompt") && stdout.is_empty(), "{err}");
}

/// The result-side guards themselves, on a model whose weights turn non-finite after loading (so that no load
/// check can stop it first): scoring stops at the first batch with the row, generating with the prompt.
#[test]
fn non_finite_results_are_errors_naming_the_row() {
    let mut m = load_model(s(&fixture("tiny-llama"))).unwrap();
    let opts = condlm::data::dataset::DataOptions { max_len: 128, ..Default::default() };
    let rows = load_rows(&fixture("score_rows.jsonl"), &m.tokenizer, &opts).unwrap().examples;
    // Finite weights: every batch reaches the caller.
    let mut batches = vec![];
    score_batches(&mut OnCpu::new(&m.model), &rows, 2, |first, lps| {
        batches.push((first, lps.len()));
        Ok(())
    })
    .unwrap();
    assert_eq!(batches, vec![(0, 2), (2, 2)]);
    // An infinite weight in the last block's down projection: the last row's scores go non-finite.
    m.model.blocks.last_mut().unwrap().down.w.data[0] = f32::INFINITY;
    let e = score_batches(&mut OnCpu::new(&m.model), &rows, 2, |_, _| Ok(())).unwrap_err();
    let n = e.downcast_ref::<NonFiniteScore>().unwrap_or_else(|| panic!("{e:#}"));
    assert_eq!(n.row, 0);
    assert!(e.to_string().contains("non-finite"), "{e}");
    let prompts = vec![vec![1, 5, 6], vec![1, 7]];
    let e = generate_from(&m.model, &m.tokenizer, &prompts, 4, &GenerateOptions::greedy(4, 2), |_| Ok(())).unwrap_err();
    let n = e.downcast_ref::<NonFiniteLogits>().unwrap_or_else(|| panic!("{e:#}"));
    assert_eq!(n.prompt, 0);
}

#[test]
fn eval_cuts_x_but_never_y() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny-llama");
    // A row whose prompt alone is longer than the context: x is cut, y scored whole (as many tokens as score
    // counts for the same completion after a short prompt).
    let long_x = tmp.path().join("long_x.jsonl");
    let words = "word ".repeat(300);
    std::fs::write(&long_x, format!("{{\"prompt\": \"{words}\", \"completion\": \"The Eagle\"}}\n")).unwrap();
    let short = tmp.path().join("short.jsonl");
    std::fs::write(&short, "{\"prompt\": \"word\", \"completion\": \"The Eagle\"}\n").unwrap();
    let (ok, stdout, err) = condlm(&["eval", "--model", s(&model), "--data", s(&long_x)]);
    assert!(ok, "{err}");
    let e: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let (ok, scored, err) = condlm(&["score", "--model", s(&model), "--data", s(&short)]);
    assert!(ok, "{err}");
    let row: serde_json::Value = serde_json::from_str(scored.trim()).unwrap();
    assert_eq!(e["tokens"], row["tokens"]);
    // A completion that does not fit is an error naming its row, at the context window and at --max-len.
    let long_y = tmp.path().join("long_y.jsonl");
    std::fs::write(
        &long_y,
        format!("{{\"prompt\": \"a\", \"completion\": \"b\"}}\n{{\"prompt\": \"a\", \"completion\": \"{words}\"}}\n"),
    )
    .unwrap();
    let (ok, stdout, err) = condlm(&["eval", "--model", s(&model), "--data", s(&long_y)]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(err.contains("long_y.jsonl:2") && err.contains("does not fit in 128 tokens"), "{err}");
    let (ok, _, err) =
        condlm(&["eval", "--model", s(&model), "--data", s(&fixture("score_rows.jsonl")), "--max-len", "40"]);
    assert!(!ok && err.contains("score_rows.jsonl:2") && err.contains("--max-len"), "{err}");
}

#[test]
fn flag_ranges_are_checked_before_the_model_loads() {
    // The model does not exist: a range message shows the flag was checked first.
    let base = |command: &str| vec![command.to_string(), "--model".into(), "/nonexistent/model".into()];
    let cases: &[(&str, &[&str], &str)] = &[
        ("score", &["--data", "x.jsonl", "--batch", "0"], "--batch must be at least 1"),
        ("eval", &["--data", "x.jsonl", "--batch", "0"], "--batch must be at least 1"),
        ("eval", &["--data", "x.jsonl", "--max-len", "0"], "--max-len must be at least 1"),
        ("generate", &["--prompt", "x", "--batch", "0"], "batch must be at least 1"),
        ("generate", &["--prompt", "x", "--max-new-tokens", "0"], "max new tokens must be at least 1"),
        ("generate", &["--prompt", "x", "--temperature", "-1"], "finite and ≥ 0 (got -1)"),
        ("generate", &["--prompt", "x", "--temperature", "nan"], "finite and ≥ 0 (got NaN)"),
        ("generate", &["--prompt", "x", "--temperature", "inf"], "finite and ≥ 0 (got inf)"),
        ("generate", &["--prompt", "x", "--temperature", "1", "--top-p", "0"], "top-p must be in (0, 1] (got 0)"),
        ("generate", &["--prompt", "x", "--top-p", "1.5"], "top-p must be in (0, 1] (got 1.5)"),
        ("generate", &["--prompt", "x", "--min-p", "-0.1"], "min-p must be in [0, 1) (got -0.1)"),
        ("generate", &["--prompt", "x", "--temperature", "1", "--min-p", "1"], "min-p must be in [0, 1) (got 1)"),
        ("generate", &["--prompt", "x", "--repetition-penalty", "0"], "repetition penalty must be > 0 and finite"),
        ("generate", &["--prompt", "x", "--repetition-penalty", "nan"], "repetition penalty must be > 0 and finite"),
        ("generate", &["--prompt", "x", "--length-penalty", "nan"], "--length-penalty must be finite (got NaN)"),
        ("generate", &["--prompt", "x", "--num-beams", "2", "--length-penalty=-inf"], "must be finite (got -inf)"),
        ("generate", &["--prompt", "x", "--num-beams", "0"], "--num-beams must be at least 1"),
        ("generate", &["--prompt", "x", "--length-penalty", "2"], "shape beam search: set --num-beams > 1"),
        ("generate", &["--prompt", "x", "--early-stopping", "true"], "shape beam search: set --num-beams > 1"),
        ("generate", &["--prompt", "x", "--batch", "-1"], "invalid value '-1' for '--batch"),
    ];
    for (command, args, want) in cases {
        let mut all = base(command);
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (ok, _, err) = condlm(&all);
        assert!(!ok && err.contains(want) && !err.contains("nonexistent"), "{command} {args:?}: {err}");
    }
}

#[test]
fn help_documents_the_output_flags_with_their_defaults() {
    for command in ["score", "generate"] {
        let (ok, help, _) = condlm(&[command, "--help"]);
        assert!(ok);
        for flag in ["--out", "--overwrite", "--resume-output"] {
            let at = help.find(&format!("\n      {flag} ")).or_else(|| help.find(&format!("\n      {flag}\n")));
            let entry = &help[at.unwrap_or_else(|| panic!("{command}: {flag} missing")) + 7..];
            let end = entry[2..].find("\n      --").map_or(entry.len(), |e| e + 2);
            assert!(entry[..end].contains("[default: "), "{command} {flag}: {}", &entry[..end]);
        }
    }
}

#[test]
fn a_reader_that_closes_the_pipe_stops_the_command_without_a_panic() {
    // `condlm info MODEL | head -0`: the pipe's read end is closed before condlm prints, so its first print hits a
    // broken pipe. Unix tools die of SIGPIPE there; condlm used to panic (exit 101, a backtrace hint on stderr).
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_condlm"))
        .args(["info", s(&fixture("tiny-llama"))])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "status {:?}, stderr {stderr}", out.status);
}

#[test]
fn a_full_disk_behind_stdout_is_an_error_not_a_panic() {
    // `condlm eval … > results.txt` on a full disk: /dev/full refuses every write with ENOSPC.
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else { return };
    let model = fixture("tiny-llama");
    let data = fixture("score_rows.jsonl");
    for args in [vec!["info", s(&model)], vec!["eval", "--model", s(&model), "--data", s(&data)]] {
        let out =
            Command::new(env!("CARGO_BIN_EXE_condlm")).args(&args).stdout(full.try_clone().unwrap()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.status.code() == Some(1) && stderr.contains("cannot write the output to stdout"), "{stderr}");
    }
}
