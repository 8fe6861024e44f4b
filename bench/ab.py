"""Benchmark (not a test): two condlm binaries side by side on the commands users run, alternating A and B so
both see the same machine state — for checking that a change keeps throughput. Whole processes: model loading,
output writing and all.

    python3 bench/ab.py --a OLD/condlm --b target/release/condlm --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        [--data ../shared/data/e2e_nlg.jsonl] [--threads 2] [--reps 3] [--out bench/ab_results.md]

Workloads: `train` (LoRA all-linear r16 and full fine-tuning, batch 8, 10 steps: the summary's tokens/s, which
counts optimizer steps only), `score` (100 rows: rows/s of the whole process) and `generate` (one prompt, up to 128
new tokens, greedy: the prefill and decode rates it reports). Reports the median of each and the ratio B / A.
"""
import argparse, json, os, re, statistics, subprocess, tempfile, time
import machine  # bench/machine.py: the machine line of the report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser()
p.add_argument("--a", required=True, help="baseline binary")
p.add_argument("--b", required=True, help="binary under test")
p.add_argument("--gguf", required=True)
p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "e2e_nlg.jsonl"))
p.add_argument("--threads", type=int, default=2)
p.add_argument("--reps", type=int, default=3)
p.add_argument("--out", default=os.path.join(ROOT, "bench", "ab_results.md"))
a = p.parse_args()

tmp = tempfile.mkdtemp(prefix="condlm-ab-")
rows = os.path.join(tmp, "rows.jsonl")
with open(a.data) as f, open(rows, "w") as g:
    g.writelines(f.readlines()[:100])
prompt = json.loads(open(rows).readline())["prompt"]


def run(cmd):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0, r.stdout + r.stderr


def train(bin, full):
    out = os.path.join(tmp, "run")
    mode = ["--full", "--lr", "2e-5"] if full else ["--lora-targets", "all-linear", "--lr", "2e-4"]
    _, text = run([bin, "--threads", str(a.threads), "train", "--model", a.gguf, "--data", rows, "--output-dir", out,
                   "--overwrite", "--max-steps", "10", "--batch-size", "8", "--save-every", "0"] + mode)
    return float(re.search(r"([\d.]+) tokens/s", text).group(1))


def score(bin):
    # condlm refuses to replace an earlier --out; older binaries know no --overwrite, so start each run without one.
    out = os.path.join(tmp, "scores.jsonl")
    if os.path.exists(out):
        os.remove(out)
    secs, _ = run([bin, "--threads", str(a.threads), "score", "--model", a.gguf, "--data", rows, "--out", out])
    return 100 / secs


def generate(bin, phase):
    _, text = run([bin, "--threads", str(a.threads), "generate", "--model", a.gguf, "--prompt", prompt,
                   "--max-new-tokens", "128"])
    return float(re.search(phase + r" [^,]*?\(?([\d.]+) tokens/s", text).group(1))


WORK = [("train LoRA all-linear r16, tokens/s", lambda b: train(b, False)),
        ("train full fine-tuning, tokens/s", lambda b: train(b, True)),
        ("score 100 rows, rows/s (whole process)", score),
        ("generate prefill, tokens/s", lambda b: generate(b, "prefill")),
        ("generate decode (≤ 128 tokens, greedy), tokens/s", lambda b: generate(b, "decode"))]

lines = ["# condlm A/B: two binaries side by side", "",
         f"Command: `python3 bench/ab.py --a {a.a} --b {a.b} --gguf {os.path.basename(a.gguf)} --threads {a.threads} "
         f"--reps {a.reps}`  ",
         f"Machine: {machine.describe()}; load average before: {os.getloadavg()[0]:.1f}.  ",
         "Runs alternate A, B, A, B, …; medians.", "",
         "| workload | A | B | B / A | runs A | runs B |", "|---|---|---|---|---|---|"]
for name, f in WORK:
    ra, rb = [], []
    for _ in range(a.reps):
        ra.append(f(a.a))
        rb.append(f(a.b))
    ma, mb = statistics.median(ra), statistics.median(rb)
    print(f"{name}: A {ma:.1f}, B {mb:.1f}, B/A {mb / ma:.3f}", flush=True)
    lines.append(f"| {name} | {ma:.1f} | {mb:.1f} | **{mb / ma:.2f}×** | {', '.join(f'{x:.1f}' for x in ra)} | "
                 f"{', '.join(f'{x:.1f}' for x in rb)} |")
lines += ["", f"Load average after: {os.getloadavg()[0]:.1f}.", ""]
open(a.out, "w").write("\n".join(lines))
print(f"wrote {a.out}")
