"""PyTorch + PEFT LoRA with gradient checkpointing against condlm with --checkpoint-activations (issue 12's target
"≤ ⅓ of PyTorch+PEFT's (f32) peak RSS with the same activation-checkpointing setting"): same GGUF, same rows, all
linear layers at r 16, batch B, f32 weights in PyTorch (transformers dequantizes the GGUF), a few steps.

    ~/.cache/condlm/bench-venv/bin/python bench/memory_peft.py --condlm target/release/condlm \
        --model M.gguf --data rows.jsonl [--steps 3] [--batch-size 4] [--threads 2]

Each engine runs in its own process; peak RSS is the child's ru_maxrss (wait4), tokens/s counts the attended
tokens of the timed steps (PEFT: after one warm-up step; condlm: its own report).
Standard library here; the PEFT run needs torch, transformers, peft and gguf (the bench venv).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

PEFT = r'''
import json, sys, time, torch, torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import LoraConfig, get_peft_model
model_path, data, steps, bs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0); torch.set_num_threads(threads)
d, f = model_path.rsplit("/", 1)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model.config.use_cache = False
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets))
model.enable_input_require_grads()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
rows = [json.loads(l) for l in open(data)]
eos = tok.eos_token_id
def encode(r):
    x = tok.encode(r["prompt"], add_special_tokens=False)
    y = tok.encode(r["completion"], add_special_tokens=False) + [eos]
    return x + y, [-100] * len(x) + y
model.train()
toks, tt = 0, 0.0
for s in range(steps + 1):
    enc = [encode(rows[(s * bs + k) % len(rows)]) for k in range(bs)]
    L = max(len(i) for i, _ in enc)
    ids = torch.full((bs, L), eos); lab = torch.full((bs, L), -100); att = torch.zeros((bs, L), dtype=torch.long)
    for k, (i, l) in enumerate(enc):
        ids[k, :len(i)] = torch.tensor(i); lab[k, :len(l)] = torch.tensor(l); att[k, :len(i)] = 1
    st = time.time()
    logits = model(input_ids=ids, attention_mask=att).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), lab[:, 1:].reshape(-1), ignore_index=-100)
    loss.backward(); opt.step(); opt.zero_grad()
    if s > 0:
        toks += int(att.sum()); tt += time.time() - st
    print(f"step {s} loss {loss.item():.4f} time {time.time() - st:.1f}s", file=sys.stderr, flush=True)
print(f"PEFT tokens/s {toks / tt:.1f}")
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--condlm", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        engines = [
            ("condlm, base stored + --checkpoint-activations",
             [a.condlm, "--threads", str(a.threads), "train", "--model", a.model, "--data", a.data, "--output-dir",
              os.path.join(tmp, "run"), "--max-steps", str(a.steps), "--batch-size", str(a.batch_size), "--lora-r",
              "16", "--lora-targets", "all-linear", "--checkpoint-activations", "--allow-worse"]),
            ("PyTorch + PEFT f32, gradient checkpointing",
             [sys.executable, "-c", PEFT, os.path.abspath(a.model), a.data, str(a.steps), str(a.batch_size),
              str(a.threads)]),
        ]
        for label, cmd in engines:
            start = time.time()
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = p.communicate()
            rss = resource_rss(p)
            wall = time.time() - start
            if p.returncode != 0:
                sys.exit(f"{label} failed:\n{err[-3000:]}")
            speed = re.search(r"(\d+(?:\.\d+)?) tokens/s|tokens/s (\d+(?:\.\d+)?)", out + err)
            results.append((label, rss / 1e9, (speed.group(1) or speed.group(2)) if speed else "?", wall))
            print(results[-1], flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    print("| engine | peak RSS (GB) | tokens/s | wall (s) |\n|---|---|---|---|")
    for label, rss, speed, wall in results:
        print(f"| {label} | {rss:.2f} | {speed} | {wall:.0f} |")


def resource_rss(p):
    """Peak RSS of the children reaped so far (the running maximum `getrusage` keeps): the engines run smallest
    first (condlm, then PEFT), so after each run it is that run's peak."""
    import resource
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


if __name__ == "__main__":
    main()
