"""Per-step losses of the f32 and bf16 runs of bench/bf16_compute.sh side by side, as markdown.
Usage: python3 bench/bf16_compute_report.py [OUT_DIR]"""
import json
import statistics
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/bf16_bench"
runs = {}
for c in ("f32", "bf16"):
    with open(f"{out}/{c}/metrics.jsonl") as f:
        runs[c] = [json.loads(line) for line in f if line.strip()]
steps = {c: {m["step"]: m for m in r if "loss" in m} for c, r in runs.items()}
evals = {c: [(m["step"], m["eval_nll"]) for m in r if "eval_nll" in m] for c, r in runs.items()}
common = sorted(set(steps["f32"]) & set(steps["bf16"]))
print("| step | loss f32 | loss bf16 | relative difference |\n|---:|---:|---:|---:|")
worst = 0.0
for s in common:
    a, b = steps["f32"][s]["loss"], steps["bf16"][s]["loss"]
    worst = max(worst, abs(a - b) / abs(a))
    print(f"| {s} | {a:.6f} | {b:.6f} | {abs(a - b) / abs(a):.2e} |")
print(f"\n{len(common)} steps in both runs; max relative difference of the step losses: {worst:.2e}")
for c in ("f32", "bf16"):
    tps = [steps[c][s]["tokens_per_s"] for s in sorted(steps[c])[1:]]
    print(f"- {c}: eval NLL (step, value) {evals[c]}; tokens/s median of steps 2..: "
          f"{statistics.median(tps) if tps else float('nan'):.1f}")
