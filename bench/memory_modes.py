"""Peak RSS and speed of `condlm train` as users run it, per way of keeping the base, against the memory plan.

    python3 bench/memory_modes.py --condlm target/release/condlm --model M.gguf --data rows.jsonl [--threads 2]

Runs each mode in its own process (whole-process peak RSS from wait4, checkpoint and adapter writing included),
and writes a Markdown table (--out, default bench/memory_modes.md) with the machine, CPU flags and load average.
Standard library only.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import machine  # bench/machine.py: the machine line of the report

MODES = [
    ("LoRA, base stored (default)", ["--base-dtype", "stored"]),
    ("LoRA, base stored + --checkpoint-activations", ["--base-dtype", "stored", "--checkpoint-activations"]),
    ("LoRA, base f32", ["--base-dtype", "f32"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--condlm", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--full", action="store_true", help="also a --full fine-tuning run")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "memory_modes.md"))
    a = ap.parse_args()
    modes = MODES + ([("full fine-tuning", ["--full", "--lr", "2e-5"])] if a.full else [])
    rows = []
    for label, flags in modes:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [a.condlm, "--threads", str(a.threads), "train", "--model", a.model, "--data", a.data,
                   "--output-dir", os.path.join(tmp, "run"), "--max-steps", str(a.steps), "--batch-size",
                   str(a.batch_size), "--lora-r", "16", "--lora-targets", "all-linear", "--save-every", "1",
                   "--allow-worse"] + flags
            start = time.time()
            p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
            err = p.stderr.read()
            _, status, usage = os.wait4(p.pid, 0)
            wall = time.time() - start
            metrics = os.path.join(tmp, "run", "metrics.jsonl")
            losses = [m["loss"] for m in map(json.loads, open(metrics)) if "loss" in m] if status == 0 else []
        if status != 0:
            sys.exit(f"{label}: condlm failed:\n{err}")
        plan = re.search(r"memory: ≈ ([\d.]+) GiB \(([^)]*)\)", err)
        loss = re.search(r"train loss ([\d.]+) → ([\d.]+).*?(\d+) tokens/s", err)
        rss = usage.ru_maxrss * 1024  # KiB → bytes
        plan_b = float(plan.group(1)) * 2**30
        rows.append((label, rss / 1e9, plan_b / 1e9, (plan_b - rss) / rss * 100, loss.group(1), loss.group(2),
                     loss.group(3), wall, plan.group(2), losses))
        print(rows[-1], flush=True)
    size = os.path.getsize(a.model) / 1e9
    lines = [
        "# condlm train: peak RSS by way of keeping the base, against the memory plan",
        "",
        f"Machine: {machine.describe()}; {a.threads} threads; load average "
        f"{os.getloadavg()[0]:.2f} at the end.",
        f"Model: {os.path.basename(a.model)} ({size:.2f} GB file); data: {os.path.basename(a.data)}; {a.steps} steps, "
        f"batch {a.batch_size}, LoRA r 16 on all linear layers, a checkpoint every step and the adapter written.",
        "",
        f"Command: `python3 bench/memory_modes.py --condlm {a.condlm} --model {a.model} --data {a.data} --threads "
        f"{a.threads} --steps {a.steps} --batch-size {a.batch_size}{' --full' if a.full else ''}`",
        "",
        "| mode | peak RSS (GB) | plan (GB) | plan error | loss step 1 → last | tokens/s | wall (s) | plan parts (GiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, rss, plan, err, l0, l1, tps, wall, parts, _ in rows:
        lines.append(f"| {label} | {rss:.2f} | {plan:.2f} | {err:+.0f} % | {l0} → {l1} | {tps} | {wall:.0f} | {parts} |")
    # The LoRA modes keep the same numbers in other forms, so their per-step losses agree up to summation order.
    first = rows[0]
    lines += ["", f"Per-step training loss of each mode against {first[0]} ({len(first[-1])} steps):", "",
              "| mode | largest relative difference of a step's loss | steps compared |", "|---|---|---|"]
    for row in rows[1:]:
        if not row[0].startswith("LoRA"):
            continue  # full fine-tuning: another recipe
        rel = [abs(x - y) / abs(y) for x, y in zip(row[-1], first[-1])]
        lines.append(f"| {row[0]} | {max(rel):.1e} | {len(rel)} |")
    open(a.out, "w").write("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
