"""LoRA with condlm vs PyTorch + PEFT on a real GGUF model, the same recipe in both, compared by the final
held-out NLL per y token (outside CI: needs the model file and torch). The acceptance of the model-family issue:
within 2 % of PEFT's on Gemma 3 270M.

E2E rows are split by prompt (every 10th distinct prompt held out, so no eval prompt is seen in training); both
train one epoch over the same `--train-rows` training rows (batch `--batch`, constant lr, no warmup, no weight
decay, gradient norm clipped to 1, LoRA r 16 / alpha 32 / no dropout on every linear layer of the blocks), on
[BOS] + x + y + [EOS] with the loss on y + EOS only. Both start from the same adapter and see the same batches:
condlm's LoRA init (A from its counter-based uniform stream per module, B = 0) and its row order (a SplitMix64 key
per row) are pure functions of the seed, so this script recomputes both in numpy and loads them into PEFT — then the
two runs differ only by floating-point arithmetic, which the per-step training losses show side by side. (With
independent inits and orders, 40 steps of 270M leave a seed spread of a few percent in the final NLL, larger than the
2 % tolerance, so that comparison could not tell an engine bug from luck.) Then both score the same held-out rows.
transformers loads the same GGUF (dequantized to f32, eager attention), so both train the same f32 model.

Usage: python3 scripts/lora_vs_peft.py --gguf PATH [--name NAME] [--train-rows 480] [--eval-rows 200] [--batch 8]
       [--lr 5e-4] [--threads 2] [--seed 42] [--out scripts/lora_vs_peft_gemma3.md]
Needs: pip install torch transformers peft gguf; cargo build --release
"""
import argparse, json, math, os, platform, subprocess, sys, tempfile, time
import numpy as np
import torch, torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
p = argparse.ArgumentParser()
p.add_argument("--gguf", required=True)
p.add_argument("--name", default="Gemma 3 270M (Q4_K_M GGUF)")
p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "e2e_nlg.jsonl"))
p.add_argument("--train-rows", type=int, default=480)
p.add_argument("--eval-rows", type=int, default=200)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--lr", type=float, default=5e-4)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=42)
p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "condlm"))
p.add_argument("--out", default=os.path.join(ROOT, "scripts", "lora_vs_peft_gemma3.md"))
a = p.parse_args()
torch.manual_seed(0)
torch.set_num_threads(a.threads)

rows = [json.loads(l) for l in open(a.data) if l.strip()]
prompts = list(dict.fromkeys(r["prompt"] for r in rows))
held = set(prompts[9::10])
train = [r for r in rows if r["prompt"] not in held][: a.train_rows]
evals = [r for r in rows if r["prompt"] in held][: a.eval_rows]
work = tempfile.mkdtemp(prefix="condlm-lora-vs-peft-")


def write(path, rs):
    with open(path, "w") as f:
        for r in rs:
            f.write(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n")


train_path, eval_path = os.path.join(work, "train.jsonl"), os.path.join(work, "eval.jsonl")
write(train_path, train)
write(eval_path, evals)
steps = math.ceil(len(train) / a.batch)


def mix(z):
    """src/rng.rs `mix` (SplitMix64's finaliser) on uint64 arrays (numpy's uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        z = np.asarray(z, dtype=np.uint64) + np.uint64(0x9E37_79B9_7F4A_7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58_476D_1CE4_E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D0_49BB_1331_11EB)
    return z ^ (z >> np.uint64(31))


def stream_id(name):
    """src/rng.rs `stream_id` (FNV-1a)."""
    h = 0xCBF2_9CE4_8422_2325
    for b in name.encode():
        h = ((h ^ b) * 0x0100_0000_01B3) & 0xFFFF_FFFF_FFFF_FFFF
    return h


def condlm_lora_a(module, r, in_dim, seed):
    """src/network/lora.rs `Lora::new`: A[i] = (2·uniform(seed, stream_id(module), i) − 1) / √in, as f32."""
    key = mix(np.uint64(seed) ^ mix(np.uint64(stream_id(module))))
    u = (mix(key ^ np.arange(r * in_dim, dtype=np.uint64)) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return ((2.0 * u - 1.0) * (1.0 / math.sqrt(in_dim))).astype(np.float32).reshape(r, in_dim)


def condlm_epoch0_order(n, seed):
    """src/train/run.rs `epoch_order` for epoch 0: rows sorted by (mix(mix(seed) ^ i), i)."""
    keys = mix(mix(np.uint64(seed)) ^ np.arange(n, dtype=np.uint64))
    return [int(i) for i in np.lexsort((np.arange(n), keys))]


def condlm_nll(extra):
    """Mean NLL per y token of the held-out rows under condlm (base + optional adapter)."""
    out = os.path.join(work, "scores.jsonl")
    subprocess.run([a.bin, "score", "--model", a.gguf, "--data", eval_path, "--out", out, "--overwrite", "--per-token",
                    "--threads", str(a.threads)] + extra, check=True, capture_output=True)
    scores = [json.loads(l) for l in open(out)]
    return -sum(s["logprob"] for s in scores) / sum(len(s["token_logprobs"]) for s in scores)


# condlm
t0 = time.time()
run_dir = os.path.join(work, "condlm-run")
subprocess.run([a.bin, "train", "--model", a.gguf, "--data", train_path, "--output-dir", run_dir, "--epochs", "1",
                "--batch-size", str(a.batch), "--lr", str(a.lr), "--schedule", "constant", "--warmup-steps", "0",
                "--weight-decay", "0", "--max-grad-norm", "1.0", "--lora-r", "16", "--lora-alpha", "32",
                "--lora-dropout", "0", "--lora-targets", ",".join(TARGETS), "--threads", str(a.threads),
                "--max-len", "512", "--seed", str(a.seed)], check=True)
condlm_losses = [m["loss"] for m in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl")))
                 if "loss" in m]
condlm_secs = time.time() - t0
condlm_base = condlm_nll([])
condlm_final = condlm_nll(["--adapter", os.path.join(run_dir, "adapter")])

# PyTorch + PEFT
from peft import LoraConfig, get_peft_model

gdir, gfile = os.path.dirname(os.path.abspath(a.gguf)), os.path.basename(a.gguf)
tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gfile, dtype=torch.float32, attn_implementation="eager")
probe = tok("a")["input_ids"]
prefix = probe[: len(probe) - len(tok("a", add_special_tokens=False)["input_ids"])]


def encode(r):
    x = prefix + tok.encode(r["prompt"], add_special_tokens=False)
    y = tok.encode(r["completion"], add_special_tokens=False) + [tok.eos_token_id]
    return x + y, [-100] * len(x) + y


def nll(m, rs):
    m.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for r in rs:
            ids, lab = encode(r)
            logits = m(input_ids=torch.tensor([ids])).logits[0].double()
            lab = torch.tensor(lab)
            total += F.cross_entropy(logits[:-1], lab[1:], ignore_index=-100, reduction="sum").item()
            n += int((lab[1:] != -100).sum())
    return total / n


peft_base = nll(model, evals)
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS))
with torch.no_grad():  # condlm's initial adapter (B is zero in both)
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            module = name.removeprefix("base_model.model.")
            w = mod.lora_A["default"].weight
            w.copy_(torch.from_numpy(condlm_lora_a(module, w.shape[0], w.shape[1], a.seed)))
trainable = [q for q in model.parameters() if q.requires_grad]
opt = torch.optim.AdamW(trainable, lr=a.lr, weight_decay=0.0)
order = condlm_epoch0_order(len(train), a.seed)
t0 = time.time()
losses = []
for s in range(steps):
    model.train()
    enc = [encode(train[i]) for i in order[s * a.batch : (s + 1) * a.batch]]
    L = max(len(i) for i, _ in enc)
    ids = torch.full((len(enc), L), tok.eos_token_id)
    lab = torch.full((len(enc), L), -100)
    att = torch.zeros((len(enc), L), dtype=torch.long)
    for k, (i, l) in enumerate(enc):
        ids[k, : len(i)], lab[k, : len(l)], att[k, : len(i)] = torch.tensor(i), torch.tensor(l), 1
    logits = model(input_ids=ids, attention_mask=att).logits.float()
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), lab[:, 1:].reshape(-1), ignore_index=-100)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    opt.zero_grad()
    losses.append(loss.item())
peft_secs = time.time() - t0
peft_final = nll(model, evals)

if len(condlm_losses) != steps:
    sys.exit(f"condlm wrote {len(condlm_losses)} step losses, expected {steps}")
step_rel = [abs(c - q) / q for c, q in zip(condlm_losses, losses)]
max_step_rel = max(step_rel)
shown = sorted({0, 1, 2, steps // 4, steps // 2, 3 * steps // 4, steps - 1})
loss_rows = "\n".join(f"| {s + 1} | {condlm_losses[s]:.5f} | {losses[s]:.5f} | {step_rel[s]:.1e} |" for s in shown)
rel = abs(condlm_final - peft_final) / peft_final
ok = rel <= 0.02
report = f"""# LoRA with condlm vs PyTorch + PEFT on {a.name}

Command: `python3 scripts/lora_vs_peft.py --gguf {os.path.basename(a.gguf)} --train-rows {a.train_rows} \\
--eval-rows {a.eval_rows} --batch {a.batch} --lr {a.lr} --threads {a.threads} --seed {a.seed}`  
Machine: {platform.machine()} {os.cpu_count()} cores; torch {torch.__version__}; transformers
{__import__('transformers').__version__}; peft {__import__('peft').__version__}

Recipe (both): E2E split by prompt (every 10th distinct prompt held out); one epoch over {len(train)} training rows,
{steps} steps of {a.batch} rows; LoRA r 16, alpha 32, no dropout, on {', '.join(TARGETS)}; AdamW lr {a.lr} constant,
no warmup, no weight decay, gradient norm clipped to 1; loss on y + EOS; [BOS] + x + y + [EOS]. Evaluated: mean NLL
per y token on {len(evals)} held-out rows.

| | base model | after LoRA | training time |
|---|---|---|---|
| condlm (`train` on the GGUF, `score --adapter`) | {condlm_base:.4f} | {condlm_final:.4f} | {condlm_secs:.0f} s (whole command) |
| PyTorch + PEFT (transformers on the same GGUF, f32) | {peft_base:.4f} | {peft_final:.4f} | {peft_secs:.0f} s (training loop only) |

Training loss per step (the same batches from the same initial adapter):

| step | condlm | PEFT | relative difference |
|---|---|---|---|
{loss_rows}

Largest relative difference of a step's training loss over all {steps} steps: {max_step_rel:.2e}.

Final held-out NLL: condlm vs PEFT differ by {100 * rel:.2f} % (acceptance ≤ 2 %): **{'PASS' if ok else 'FAIL'}**
"""
open(a.out, "w").write(report)
print(report)
sys.exit(0 if ok else 1)
