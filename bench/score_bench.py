"""Benchmark (not a test): `condlm score` throughput vs transformers' forward on the same rows,
same thread count, same machine, one run. Both count every token of every row (x + y + EOS) per
second of scoring, model loading excluded; both batch B rows (transformers pads, condlm packs).

Usage: python3 bench/score_bench.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf [--rows 100] [--batch 8] [--threads 2] [--reps 3]
Needs: pip install torch transformers gguf; cargo build --release
"""
import argparse, json, os, re, subprocess, tempfile, time, statistics
import machine  # bench/machine.py: the machine line of the report
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser()
p.add_argument("--gguf", required=True)
p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "e2e_nlg.jsonl"))
p.add_argument("--rows", type=int, default=100)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--reps", type=int, default=3)
p.add_argument("--out", default=os.path.join(ROOT, "bench", "score_bench.md"))
a = p.parse_args()
torch.set_num_threads(a.threads)
gdir, gfile = os.path.dirname(os.path.abspath(a.gguf)), os.path.basename(a.gguf)
rows = [json.loads(l) for l in open(a.data)][: a.rows]
data = os.path.join(tempfile.mkdtemp(), "rows.jsonl")
with open(data, "w") as f:
    f.writelines(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n" for r in rows)

tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gfile, dtype=torch.float32).eval()
seqs = [tok.encode(r["prompt"], add_special_tokens=False) + tok.encode(r["completion"], add_special_tokens=False)
        + [tok.eos_token_id] for r in rows]
n_tokens = sum(map(len, seqs))


def torch_pass():
    start = time.time()
    with torch.no_grad():
        for i in range(0, len(seqs), a.batch):
            chunk = seqs[i : i + a.batch]
            L = max(map(len, chunk))
            ids = torch.tensor([s + [tok.eos_token_id] * (L - len(s)) for s in chunk])
            att = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in chunk])
            logits = model(input_ids=ids, attention_mask=att).logits
            torch.log_softmax(logits.float(), -1)
    return n_tokens / (time.time() - start)


def condlm_pass():
    r = subprocess.run([os.path.join(ROOT, "target", "release", "condlm"), "score", "--model", a.gguf, "--data", data,
                        "--out", os.devnull, "--batch", str(a.batch), "--threads", str(a.threads)],
                       capture_output=True, text=True, check=True)
    return float(re.search(r"\(([\d.]+) tokens/s\)", r.stderr).group(1))


torch_pass()  # warm-up
t, c = [], []
for _ in range(a.reps):  # interleaved so machine noise hits both alike
    t.append(torch_pass())
    c.append(condlm_pass())
tm, cm = statistics.median(t), statistics.median(c)
text = f"""# `condlm score` vs transformers forward

Command: `python3 bench/score_bench.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --rows {a.rows} --batch {a.batch} --threads {a.threads} --reps {a.reps}`
Machine: {machine.describe()}; torch {torch.__version__}; {a.threads} threads each.
Model: SmolLM2-135M-Instruct Q4_1 GGUF (dequantized to f32 by both). Rows: first {a.rows} of e2e_nlg.jsonl, {n_tokens} tokens, batches of {a.batch}.

| engine | tokens/s (median of {a.reps}) | runs |
|---|---|---|
| transformers (padded batch, full-vocab logits + log_softmax) | {tm:.0f} | {', '.join(f'{x:.0f}' for x in t)} |
| condlm score (packed batch, head on y positions only) | {cm:.0f} | {', '.join(f'{x:.0f}' for x in c)} |

**Ratio condlm / transformers: {cm / tm:.2f}×**
"""
open(a.out, "w").write(text)
print(text)
