"""The PyTorch+PEFT side of bench/bench.py's training rows (one process per run, so peak RSS is its own):
N AdamW steps (torch defaults: betas 0.9/0.999, eps 1e-8, weight decay 0.01; constant lr, no clipping) on the
batches peft_bench.py uses (rows (s·B + k) mod len), loss on y only. With --targets it trains a fresh PEFT LoRA
(no dropout) and first saves that init to --save-init, so condlm can start from the very same weights; without,
it fine-tunes every weight. Prints one JSON line per step, then {"tokens_per_s", "peak_rss_mib"}; tokens/s counts
the non-pad tokens of steps 1..N-1 (step 0 is warm-up), forward + backward + optimizer step.

Usage: torch_train.py GGUF DATA.jsonl --steps N --batch B --lr LR --threads T [--targets q_proj,v_proj|all-linear
       --rank R --alpha A --save-init DIR]
"""
import argparse, json, resource, time
import torch, torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
import os

p = argparse.ArgumentParser()
p.add_argument("gguf"); p.add_argument("data")
p.add_argument("--steps", type=int, required=True); p.add_argument("--batch", type=int, required=True)
p.add_argument("--lr", type=float, required=True); p.add_argument("--threads", type=int, required=True)
p.add_argument("--targets"); p.add_argument("--rank", type=int); p.add_argument("--alpha", type=float)
p.add_argument("--save-init")
a = p.parse_args()
torch.manual_seed(0)
torch.set_num_threads(a.threads)
gdir, gfile = os.path.dirname(os.path.abspath(a.gguf)), os.path.basename(a.gguf)
tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gfile, dtype=torch.float32)
if a.targets:
    from peft import LoraConfig, get_peft_model
    targets = a.targets if a.targets == "all-linear" else a.targets.split(",")
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=targets,
                                             task_type="CAUSAL_LM"))
    model.save_pretrained(a.save_init)
rows = [json.loads(l) for l in open(a.data)]
eos = tok.eos_token_id


def encode(r):
    x = tok.encode(r["prompt"], add_special_tokens=False)
    y = tok.encode(r["completion"], add_special_tokens=False) + [eos]
    return x + y, [-100] * len(x) + y


opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=a.lr)
model.train()
toks, secs = 0, 0.0
for s in range(a.steps):
    enc = [encode(rows[(s * a.batch + k) % len(rows)]) for k in range(a.batch)]
    L = max(len(i) for i, _ in enc)
    ids = torch.full((len(enc), L), eos); lab = torch.full((len(enc), L), -100)
    att = torch.zeros((len(enc), L), dtype=torch.long)
    for k, (i, l) in enumerate(enc):
        ids[k, : len(i)] = torch.tensor(i); lab[k, : len(l)] = torch.tensor(l); att[k, : len(i)] = 1
    t0 = time.perf_counter()
    logits = model(input_ids=ids, attention_mask=att).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), lab[:, 1:].reshape(-1), ignore_index=-100)
    loss.backward(); opt.step(); opt.zero_grad()
    dt = time.perf_counter() - t0
    if s > 0:
        toks += int(att.sum()); secs += dt
    print(json.dumps({"step": s, "loss": loss.item(), "tokens": int(att.sum()), "secs": dt}), flush=True)
print(json.dumps({"tokens_per_s": toks / secs, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
