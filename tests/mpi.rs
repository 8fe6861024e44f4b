//! Data-parallel training under `mpirun` (feature `mpi`; needs Open MPI's `mpirun` on PATH): 2 ranks compute
//! the single-process run up to summation order (per-step losses and final weights within 1e-6 relative, LoRA
//! and full fine-tuning), with the gradient sums overlapped with the backward pass or not (the same bits), resume
//! across rank counts, and a rank that dies or fails ends the whole job at once; the same on the device path.
//! Ranks given different jobs (settings, data, model) or a rank that cannot load refuse to start, every rank with
//! an error naming the rank and what differs, and rank 0 touches nothing; a signal to any one rank stops them all
//! with a checkpoint.
#![cfg(feature = "mpi")]
mod common;
use common::{copy_dir, fixture, load_f32_tensors, rel_err};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `condlm --threads 1 ARGS` as `ranks` MPI ranks (1: a plain process, no launcher).
fn launch(ranks: usize, args: &[&str]) -> Command {
    let bin = env!("CARGO_BIN_EXE_condlm");
    let mut cmd = if ranks == 1 {
        Command::new(bin)
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--oversubscribe", "--allow-run-as-root", "-np", &ranks.to_string(), bin]);
        // Containers often forbid the cross-process memory copies (CMA) Open MPI's shared-memory transport tries
        // first; copying through shared buffers works everywhere.
        c.env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
        c
    };
    cmd.args(["--threads", "1"]).args(args);
    cmd
}

/// `mpirun` of 2 ranks given different arguments (MPMD): rank 0 `condlm --threads 1 A`, rank 1 `… B`.
fn launch_two(a: &[&str], b: &[&str]) -> Command {
    let bin = env!("CARGO_BIN_EXE_condlm");
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--allow-run-as-root", "-np", "1", bin, "--threads", "1"]).args(a);
    c.args([":", "-np", "1", bin, "--threads", "1"]).args(b);
    c.env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

fn run(ranks: usize, args: &[&str]) -> Output {
    let out = launch(ranks, args).output().expect("cannot start mpirun: install Open MPI (openmpi-bin)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "panic: {err}");
    out
}

fn ok(ranks: usize, args: &[&str]) -> String {
    let out = run(ranks, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{ranks} ranks failed: {err}");
    err
}

/// A 10-step run of the tiny model: micro-batches of 4 rows (2 per rank on 2 ranks), 2 per step.
fn train_args(out: &Path, full: bool, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "train",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--data",
        fixture("train_rows.jsonl").to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--max-steps",
        "10",
        "--batch-size",
        "4",
        "--grad-accum",
        "2",
        "--lr",
        "1e-3",
        "--lora-r",
        "4",
        "--lora-dropout",
        "0",
        "--eval-fraction",
        "0.2",
        "--eval-every",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if full {
        v.push("--full".into());
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(|s| s.as_str()).collect()
}

/// (step, value) points.
type Curve = Vec<(u64, f64)>;

/// (step, loss) of every train line and (step, eval NLL) of every eval line of metrics.jsonl.
fn curves(dir: &Path) -> (Curve, Curve) {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let (mut train, mut eval) = (vec![], vec![]);
    for v in text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()) {
        let step = v["step"].as_u64().unwrap();
        if let Some(l) = v["loss"].as_f64() {
            train.push((step, l));
        }
        if let Some(e) = v["eval_nll"].as_f64() {
            eval.push((step, e));
        }
    }
    (train, eval)
}

fn assert_close_curves(a: &[(u64, f64)], b: &[(u64, f64)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.0, y.0);
        assert!((x.1 - y.1).abs() <= 1e-6 * y.1.abs(), "{what} at step {}: {} vs {}", x.0, x.1, y.1);
    }
}

/// The trained weights a finished run wrote (adapter or full model).
fn weights(dir: &Path, full: bool) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let file = if full { "model/model.safetensors" } else { "adapter/adapter_model.safetensors" };
    load_f32_tensors(&dir.join(file))
}

fn assert_close_weights(a: &Path, b: &Path, full: bool) {
    let (wa, wb) = (weights(a, full), weights(b, full));
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    let mut worst = 0.0f64;
    for (name, (shape, x)) in &wa {
        assert_eq!(shape, &wb[name].0, "{name}");
        let e = rel_err(x, &wb[name].1);
        assert!(e <= 1e-6, "{name}: relative difference {e:e}");
        worst = worst.max(e);
    }
    eprintln!("largest relative difference of a tensor ({}): {worst:e}", if full { "full" } else { "LoRA" });
}

#[test]
fn two_ranks_train_as_one_process_lora_and_full() {
    let tmp = tempfile::tempdir().unwrap();
    for full in [false, true] {
        let (one, two) = (tmp.path().join(format!("one-{full}")), tmp.path().join(format!("two-{full}")));
        ok(1, &strs(&train_args(&one, full, &[])));
        let err = ok(2, &strs(&train_args(&two, full, &[])));
        assert!(err.contains("trained 10 steps") && err.matches("trained 10 steps").count() == 1, "{err}");
        let (a, b) = (curves(&two), curves(&one));
        assert_eq!(a.0.len(), 10);
        assert_close_curves(&a.0, &b.0, "train loss");
        assert_close_curves(&a.1, &b.1, "eval NLL");
        // The runs really differ in how the work was split: not the same bits everywhere.
        assert!(a.0.iter().zip(&b.0).any(|(x, y)| x.1 != y.1), "2 ranks gave the exact bits of 1 process");
        assert_close_weights(&two, &one, full);
    }
}

/// Data-parallel on devices (`--device reference`: the device path on the CPU kernels, its gradients summed over
/// the ranks by `network::device::rank_sums` through host memory — what `--device cuda` does where NCCL is
/// missing): 2 ranks train as one process on the device, LoRA and full fine-tuning, with buckets of 512 values
/// (small tensors packed, larger ones summed in place).
#[test]
fn two_ranks_on_a_device_train_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    for full in [false, true] {
        let (one, two) = (tmp.path().join(format!("one-{full}")), tmp.path().join(format!("two-{full}")));
        let device = ["--device", "reference", "--grad-bucket-mib", "0.001953125"];
        ok(1, &strs(&train_args(&one, full, &device)));
        let err = ok(2, &strs(&train_args(&two, full, &device)));
        assert!(err.matches("trained 10 steps").count() == 1, "{err}");
        let (a, b) = (curves(&two), curves(&one));
        assert_eq!(a.0.len(), 10);
        assert_close_curves(&a.0, &b.0, "train loss");
        assert_close_curves(&a.1, &b.1, "eval NLL");
        assert!(a.0.iter().zip(&b.0).any(|(x, y)| x.1 != y.1), "2 ranks gave the exact bits of 1 process");
        assert_close_weights(&two, &one, full);
    }
}

/// Summing the gradients bucket by bucket during the backward pass (buckets of 512 values: several per block, so
/// sums start while earlier blocks compute) or after it gives the same bits, on 2 and on 3 ranks.
#[test]
fn gradient_sums_overlapped_with_the_backward_pass_give_the_same_bits() {
    let tmp = tempfile::tempdir().unwrap();
    for (ranks, full) in [(2, false), (2, true), (3, true)] {
        let run = |name: &str, extra: &[&str]| {
            let dir = tmp.path().join(format!("{name}-{ranks}-{full}"));
            ok(ranks, &strs(&train_args(&dir, full, &[&["--grad-bucket-mib", "0.001953125"], extra].concat())));
            dir
        };
        let (on, off) = (run("on", &["--overlap-grad-sum"]), run("off", &[]));
        assert_eq!(curves(&on), curves(&off), "{ranks} ranks, full {full}");
        let file = if full { "model/model.safetensors" } else { "adapter/adapter_model.safetensors" };
        assert!(std::fs::read(on.join(file)).unwrap() == std::fs::read(off.join(file)).unwrap(), "{file}");
    }
}

#[test]
fn resume_under_two_ranks_continues_the_run_and_any_rank_count_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    ok(2, &strs(&train_args(&straight, false, &[])));
    for ranks in [2, 1, 3] {
        let dir = tmp.path().join(format!("resumed-on-{ranks}"));
        let err = ok(2, &strs(&train_args(&dir, false, &["--stop-after-steps", "4"])));
        assert!(err.contains("stopped at step 4"), "{err}");
        ok(ranks, &["train", "--resume", dir.to_str().unwrap()]);
        if ranks == 2 {
            // The same rank count does the same operations: the same bits.
            assert_eq!(curves(&dir), curves(&straight));
            let read = |d: &Path| std::fs::read(d.join("adapter/adapter_model.safetensors")).unwrap();
            assert_eq!(read(&dir), read(&straight));
        } else {
            assert_close_curves(&curves(&dir).0, &curves(&straight).0, &format!("train loss resumed on {ranks} ranks"));
            assert_close_weights(&dir, &straight, false);
        }
    }
}

/// Pids of the processes `mpirun` started for rank `rank`.
fn rank_pids(mpirun: &Child, rank: usize) -> Vec<u32> {
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", mpirun.id())).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|env| {
                env.split(|&b| b == 0).any(|kv| kv == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes())
            })
        })
        .collect()
}

/// Waits up to `limit` for the job to end; its output.
fn ends_within(mut child: Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            child.kill().unwrap();
            panic!("the job still runs {limit:?} after a rank ended: it hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_killed_rank_ends_the_job_within_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let args = train_args(&out, false, &["--max-steps", "1000000"]);
    let mut cmd = launch(2, &strs(&args));
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Kill rank 1 once the job is training (metrics.jsonl has steps).
    let t0 = Instant::now();
    while std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().count()) < 5 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the run did not start training");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pids = rank_pids(&child, 1);
    assert_eq!(pids.len(), 1, "rank 1 among mpirun's children");
    Command::new("kill").args(["-KILL", &pids[0].to_string()]).status().unwrap();
    let killed = Instant::now();
    let o = ends_within(child, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("rank 1") && err.contains("signal 9"), "{err}");
    eprintln!("job ended {:?} after rank 1 was killed", killed.elapsed());
}

#[test]
fn an_error_on_one_rank_ends_every_rank_with_its_message() {
    // Only rank 0 checks the output folder: an earlier run there fails rank 0 alone, while rank 1 goes on to
    // the first collective, which tells it that rank 0 failed.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    ok(1, &strs(&train_args(&out, false, &["--max-steps", "1"])));
    let child =
        launch(2, &strs(&train_args(&out, false, &[]))).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let o = ends_within(child, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("error (rank 0 of 2)") && err.contains("--overwrite"), "{err}");
}

#[test]
fn zero1_gives_the_bits_of_unsharded_moments_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain, sharded, resumed) = (tmp.path().join("plain"), tmp.path().join("zero1"), tmp.path().join("resumed"));
    ok(2, &strs(&train_args(&plain, true, &[])));
    ok(2, &strs(&train_args(&sharded, true, &["--zero1"])));
    ok(2, &strs(&train_args(&resumed, true, &["--zero1", "--stop-after-steps", "4"])));
    // The checkpoint of a sharded run holds whole moments: a plain 2-rank run resumes it.
    ok(2, &["train", "--resume", resumed.to_str().unwrap()]);
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    let state = "checkpoints/step-0000010/state.safetensors";
    for dir in [&sharded, &resumed] {
        assert_eq!(curves(dir), curves(&plain));
        assert!(read(dir, "model/model.safetensors") == read(&plain, "model/model.safetensors"));
        assert!(read(dir, state) == read(&plain, state), "moments and weights of the last checkpoint");
    }
}

#[test]
fn interrupting_mpirun_stops_every_rank_after_the_same_step_with_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let args = train_args(&out, false, &["--max-steps", "1000000", "--save-every", "0"]);
    let child = launch(2, &strs(&args)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    while std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().count()) < 5 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the run did not start training");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Open MPI's mpirun passes Ctrl-C on to every rank as SIGTERM.
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let o = ends_within(child, Duration::from_secs(20));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("interrupted by") && err.contains("--resume"), "{err}");
    let (train, _) = curves(&out);
    let last = train.last().unwrap().0;
    assert!(out.join(format!("checkpoints/step-{last:07}")).is_dir(), "no checkpoint of step {last}: {err}");
}

/// Ranks `a` and `b` as one job, which must end (not hang) within a minute; its exit status and stderr.
fn two(a: &[String], b: &[String]) -> (bool, String) {
    let child = launch_two(&strs(a), &strs(b)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let o = ends_within(child, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "panic: {err}");
    (o.status.success(), err)
}

/// Arguments of `train_args` with `--flag value` replaced.
fn with(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    let at = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} in {args:?}"));
    args[at + 1] = value.into();
    args
}

#[test]
fn ranks_given_different_jobs_refuse_to_start_naming_the_rank_and_what_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let base = train_args(&out, false, &[]);
    let refused = |b: Vec<String>, expect: &[&str]| {
        let (ok, err) = two(&base, &b);
        assert!(!ok, "{err}");
        for e in expect {
            assert!(err.contains(e), "expected {e:?} in: {err}");
        }
        assert!(err.contains("no rank started training; nothing was written"), "{err}");
        // Reported once, by rank 0; no rank aborted the job.
        assert_eq!(err.matches("not given the same job").count(), 1, "{err}");
        assert!(!err.contains("MPI_ABORT"), "{err}");
        assert!(!out.exists(), "rank 0 made the output folder: {err}");
    };
    // Settings that change the numbers, and ones that change which collectives the ranks call (they hung).
    refused(with(base.clone(), "--lr", "5e-2"), &["rank 1 has other settings than rank 0: lr 0.05 vs 0.001"]);
    refused(with(base.clone(), "--max-steps", "12"), &["rank 1 has other settings than rank 0: max_steps 12 vs 10"]);
    refused(with(base.clone(), "--eval-every", "3"), &["eval_every 3 vs 5"]);
    let mut zero1 = base.clone();
    zero1.push("--zero1".into());
    refused(zero1, &["zero1 true vs false"]);
    // The same path on both ranks may hold other data (another machine); here another file with one row less.
    let rows = std::fs::read_to_string(fixture("train_rows.jsonl")).unwrap();
    let fewer = tmp.path().join("fewer.jsonl");
    std::fs::write(&fewer, rows.lines().skip(1).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    refused(
        with(base.clone(), "--data", fewer.to_str().unwrap()),
        &["rank 1's training data differs from rank 0's (SHA-256 "],
    );
    // Another architecture (it ended in MPI_ERR_TRUNCATE), and the same one with another value in its weights.
    refused(
        with(base.clone(), "--model", fixture("tiny-qwen2").to_str().unwrap()),
        &["rank 1's model has another configuration than rank 0's"],
    );
    let other = tmp.path().join("other-weights");
    copy_dir(&fixture("tiny-llama"), &other);
    let mut bytes = std::fs::read(other.join("model.safetensors")).unwrap();
    let n = bytes.len();
    bytes[n - 4] ^= 1; // the last mantissa bit of a weight: still finite
    std::fs::write(other.join("model.safetensors"), bytes).unwrap();
    refused(with(base.clone(), "--model", other.to_str().unwrap()), &["rank 1's model weights differ from rank 0's"]);
    // Paths may differ: the same model and data elsewhere train as one job.
    let (model, data) = (tmp.path().join("same-model"), tmp.path().join("same.jsonl"));
    copy_dir(&fixture("tiny-llama"), &model);
    std::fs::write(&data, &rows).unwrap();
    let b = with(
        with(with(base.clone(), "--model", model.to_str().unwrap()), "--data", data.to_str().unwrap()),
        "--max-steps",
        "2",
    );
    let (ok, err) = two(&with(base.clone(), "--max-steps", "2"), &b);
    assert!(ok && err.contains("trained 2 steps"), "{err}");
}

/// A rank that cannot load (here its data is missing) stops every rank before rank 0 touches the output folder:
/// the earlier run an --overwrite would replace stays as it was, and nothing is left behind.
#[test]
fn a_rank_that_cannot_load_leaves_the_output_folder_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    ok(1, &strs(&train_args(&out, false, &["--max-steps", "2"])));
    let before = snapshot(&out);
    let good = train_args(&out, false, &["--overwrite"]);
    let missing = tmp.path().join("missing.jsonl");
    let bad = with(good.clone(), "--data", missing.to_str().unwrap());
    for (a, b, failing) in [(&good, &bad, 1), (&bad, &good, 0)] {
        let (ok, err) = two(a, b);
        assert!(!ok, "{err}");
        assert!(err.contains(&format!("error (rank {failing} of 2)")) && err.contains("missing.jsonl"), "{err}");
        assert!(err.contains("nothing was written") && !err.contains("MPI_ABORT"), "{err}");
        assert!(snapshot(&out) == before, "the earlier run changed: {err}");
    }
    // Once every rank loads, --overwrite replaces it and leaves nothing of it behind.
    ok(2, &strs(&train_args(&out, false, &["--overwrite"])));
    assert!(std::fs::read_dir(&out).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".condlm")));
    assert_eq!(curves(&out).0.len(), 10);
}

/// Every file and folder under `dir` (hidden ones included) with a file's bytes, in path order.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut all = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all.extend(snapshot(&p));
            all.push((p, vec![]));
        } else {
            all.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    all.sort();
    all
}

/// A SIGTERM that reaches one rank only (here rank 1: a scheduler ending one machine's process) stops every rank
/// after the same step with a checkpoint, and the run resumes to the bits of an uninterrupted one.
#[test]
fn a_signal_to_one_rank_stops_every_rank_with_a_checkpoint_and_the_run_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, straight) = (tmp.path().join("run"), tmp.path().join("straight"));
    let args = train_args(&out, false, &["--max-steps", "300", "--save-every", "0"]);
    let child = launch(2, &strs(&args)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    while std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().count()) < 5 {
        assert!(t0.elapsed() < Duration::from_secs(60), "the run did not start training");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = rank_pids(&child, 1);
    assert_eq!(pids.len(), 1, "rank 1 among mpirun's children");
    Command::new("kill").args(["-TERM", &pids[0].to_string()]).status().unwrap();
    let o = ends_within(child, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("interrupted by SIGTERM") && err.contains("--resume"), "{err}");
    let last = curves(&out).0.last().unwrap().0;
    assert!(last < 300, "the run ended before the signal: {err}");
    assert!(out.join(format!("checkpoints/step-{last:07}")).is_dir(), "no checkpoint of step {last}: {err}");
    ok(2, &["train", "--resume", out.to_str().unwrap()]);
    ok(2, &strs(&train_args(&straight, false, &["--max-steps", "300", "--save-every", "0"])));
    assert_eq!(curves(&out), curves(&straight));
    // The tensors' bits (the file's metadata is a HashMap, written in any order).
    let bits = |d: &Path| -> Vec<(String, Vec<usize>, Vec<u32>)> {
        weights(d, false).into_iter().map(|(n, (s, v))| (n, s, v.iter().map(|x| x.to_bits()).collect())).collect()
    };
    assert!(bits(&out) == bits(&straight), "the resumed run's adapter differs from the straight run's");
}

/// A divergence every rank sees at the same step (the summed loss): rank 0 alone puts back the earlier run that
/// --overwrite set aside and reports, once; the other rank waits for it rather than aborting the job.
#[test]
fn a_run_that_diverges_on_every_rank_puts_the_earlier_run_back_and_says_so_once() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    ok(1, &strs(&train_args(&out, false, &["--max-steps", "2"])));
    let before = snapshot(&out);
    let args =
        with(train_args(&out, false, &["--overwrite", "--lr", "1e6", "--max-steps", "8"]), "--eval-fraction", "0");
    let o = run(2, &strs(&args));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert_eq!(err.matches("collapsed").count(), 1, "{err}");
    assert!(err.contains("is back") && !err.contains("MPI_ABORT") && !err.contains("error (rank"), "{err}");
    assert!(snapshot(&out) == before, "the earlier run changed: {err}");
}
