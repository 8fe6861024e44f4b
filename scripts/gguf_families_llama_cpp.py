"""GGUF files of Llama 3.1+ and Gemma 3 run by llama.cpp itself (outside CI: needs llama-cpp-python 0.3.36 — the
llama.cpp of scripts/llama_cpp/build.sh — with torch, transformers and safetensors; the Gemma 3 270M GGUF from
`bash ../shared/models/fetch.sh gemma3`). Writes scripts/gguf_families_llama_cpp.md.

1. tiny-llama31 (Llama 3.1's RoPE scaling): llama.cpp's logits on llama.cpp's own converter's GGUF and on condlm's
   export, against transformers on the HF folder; the same file without rope_freqs.weight shows what the tensor
   changes.
2. tiny-gemma3 with query_pre_attn_scalar 32 (sliding layers 0, 1, 3; global layer 2), tiny-gemma3-linear (Gemma 3
   4B+'s linear RoPE scaling on the global layer), tiny-phi3, tiny-phi4, tiny-qwen3-yarn (YaRN), tiny-olmo2,
   tiny-olmo3, tiny-qwen35 (with a LoRA adapter GGUF on it, against PEFT) and
   tiny-smollm3 with RoPE skipped in layer 3 only: transformers on the HF folder against llama.cpp on condlm's export
   (and, for Gemma 3, on the converter's, which writes no layer pattern: llama.cpp then takes every layer as
   sliding).
3. The real Gemma 3 270M (Q4_K_M): a short condlm LoRA run on E2E; the merged model exported to F16 and Q8_0, and
   the adapter alone (llama.cpp's --lora on the base file); llama.cpp's log P(y token) on held-out rows against
   condlm's `score --per-token` of base + adapter, on the same ids.
4. A 2-step full fine-tune of it: the run's HF folder exported (F32, and F16) with `--vocab-from` the base GGUF,
   against condlm on the folder.

Usage: python scripts/gguf_families_llama_cpp.py target/release/condlm [--gemma3 PATH] [--rows 20]
"""
import argparse, json, os, platform, shutil, subprocess, sys, tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
p = argparse.ArgumentParser()
p.add_argument("condlm")
p.add_argument("--gemma3", default=os.path.expanduser("~/.cache/condlm/models/gemma-3-270m-q4_k_m.gguf"))
p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "e2e_nlg.jsonl"))
p.add_argument("--rows", type=int, default=20, help="held-out E2E rows compared in part 3")
p.add_argument("--train-rows", type=int, default=200)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--out", default=os.path.join(ROOT, "scripts", "gguf_families_llama_cpp.md"))
a = p.parse_args()

import llama_cpp  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

WORK = tempfile.mkdtemp(prefix="condlm-gguf-families-")
report = []
failed = []


def run(*args):
    r = subprocess.run([a.condlm, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"condlm {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def llama_logits(path, ids, lora=None):
    # an F32 KV cache: llama.cpp's default F16 one alone moves the tiny fixtures' logits by up to 1e-2
    kw = dict(model_path=path, n_ctx=max(256, len(ids) + 8), logits_all=True, verbose=False, n_threads=a.threads,
              type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    if lora:
        kw["lora_path"] = lora
    m = llama_cpp.Llama(**kw)
    m.reset()
    m.eval(ids)
    return np.array(m.scores[: len(ids)], dtype=np.float64)


def check(what, value, tol):
    ok = value <= tol
    if not ok:
        failed.append(what)
    return f"| {what} | {value:.3g} | ≤ {tol:g} | {'yes' if ok else '**NO**'} |"


def table_head():
    return ["| comparison | value | tolerance | within |", "|---|---|---|---|"]


# 1. tiny-llama31
exp = load_file(os.path.join(FIX, "tiny-llama31", "expected.safetensors"))
rows = [([int(x) for x in exp[f"input_ids.{i}"]], exp[f"logits.{i}"]) for i in range(3)]
ours = os.path.join(WORK, "tiny-llama31.gguf")
run("export-gguf", "--model", os.path.join(FIX, "tiny-llama31"), "--out", ours, "--type", "f32")
import gguf  # noqa: E402

no_freqs = os.path.join(WORK, "tiny-llama31-no-rope-freqs.gguf")
r = gguf.GGUFReader(ours)
w = gguf.GGUFWriter(no_freqs, "llama")
for k, f in r.fields.items():
    if k.startswith("GGUF.") or k == "general.architecture":
        continue
    w.add_key_value(k, f.contents(), f.types[0] if f.types[0] != gguf.GGUFValueType.ARRAY else gguf.GGUFValueType.ARRAY,
                    sub_type=f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None)
for t in r.tensors:
    if t.name != "rope_freqs.weight":
        w.add_tensor(t.name, np.array(t.data), raw_shape=list(reversed([int(d) for d in t.shape])))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def worst(path, rows):
    return max(float(np.abs(llama_logits(path, ids) - want).max()) for ids, want in rows)


report += ["## 1. Llama 3.1 RoPE scaling (tests/fixtures/tiny-llama31)", "",
           "max |Δ logit| over the fixture's 3 rows (12, 9 and 20 tokens), llama.cpp against transformers:", ""]
report += table_head()
report.append(check("llama.cpp on the converter's GGUF (tests/fixtures/converter)", worst(os.path.join(FIX, "converter", "tiny-llama31.gguf"), rows), 1e-4))
with_freqs = worst(ours, rows)
report.append(check("llama.cpp on condlm's export", with_freqs, 1e-4))
without = worst(no_freqs, rows)
report.append(f"| llama.cpp on condlm's export without rope_freqs.weight (must differ) | {without:.3g} | ≥ 10 × the line above | {'yes' if without >= 10 * with_freqs else '**NO**'} |")
if without < 10 * with_freqs:
    failed.append("rope_freqs has no effect")

# 2. tiny-gemma3, tiny-phi3, tiny-phi4, tiny-smollm3 (made expressible where the fixture is not)
def variant(name, edits, copy=None):
    d = os.path.join(WORK, copy or name)
    os.makedirs(d)
    for f in os.listdir(os.path.join(FIX, name)):
        if os.path.isfile(os.path.join(FIX, name, f)):
            shutil.copy(os.path.join(FIX, name, f), d)
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg.update(edits)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    return d


def hf_rows(folder):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return [(ids, model(input_ids=torch.tensor([ids])).logits[0].numpy()) for ids, _ in rows]


report += ["", "## 2. Gemma 3, Phi-3, Phi-4-mini, SmolLM3, Qwen3 with YaRN, OLMo 2, OLMo 3 and Qwen3.5 (tiny fixtures)", "",
           "max |Δ logit| against transformers on the same HF folder, over the same 3 rows:", ""]
report += table_head()
for name, edits, note, tol in [
    # llama.cpp's GELU rounds its input to F16 and reads a table (ggml-cpu/vec.h, GGML_GELU_FP16)
    ("tiny-gemma3", {"query_pre_attn_scalar": 32}, "query_pre_attn_scalar 32; layer 2 global, window 4; "
     "llama.cpp's GELU is an F16 table", 1e-3),
    ("tiny-gemma3-linear", {}, "linear RoPE scaling × 8 on the global layer; the F16 GELU table", 1e-3),
    ("tiny-phi3", {}, "fused qkv and gate|up", 1e-4),
    ("tiny-smollm3", {"no_rope_layers": [1, 1, 1, 0]}, "no RoPE in layer 3", 1e-4),
    ("tiny-qwen3-yarn", {}, "YaRN × 4 from 4096 positions", 1e-4),
    ("tiny-olmo2", {}, "norms after the sublayers, q/k norms over all heads", 1e-4),
    ("tiny-olmo3", {}, "olmo2 with window 4 on layers 0-2, YaRN on layer 3", 1e-4),
    ("tiny-qwen35", {}, "qwen35: Gated DeltaNet on layers 0-2 (4 value heads on 2 key heads, tiled), gated "
     "attention on layer 3", 1e-4),
]:
    folder = variant(name, edits)
    out = os.path.join(WORK, f"{name}.gguf")
    # llama.cpp sets token attributes by general.name: a "phi3" needs <s>, </s> and <unk>, which the tiny
    # fixtures' vocabulary lacks
    run("export-gguf", "--model", folder, "--out", out, "--type", "f32", "--name", "tiny")
    want = hf_rows(folder)
    report.append(check(f"llama.cpp on condlm's export of {name} ({note})", worst(out, want), tol))
    if name == "tiny-gemma3":
        conv = worst(os.path.join(FIX, "converter", "tiny-gemma3.gguf"), want)
        report.append(f"| llama.cpp on the converter's GGUF of it (no pattern key: every layer slides) | {conv:.3g} | (differs) | — |")
    if name == "tiny-qwen35":
        # a condlm LoRA run on the HF folder: its adapter GGUF on condlm's export, against PEFT on the folder
        run_dir = os.path.join(WORK, "qwen35-run")
        run("train", "--model", folder, "--data", os.path.join(FIX, "data", "pairs.jsonl"), "--output-dir", run_dir,
            "--max-steps", "10", "--lr", "1e-2", "--lora-targets", "all-linear")
        lora = os.path.join(WORK, "tiny-qwen35-lora.gguf")
        run("export-gguf", "--model", folder, "--adapter", os.path.join(run_dir, "adapter"), "--lora-only",
            "--type", "f32", "--out", lora)
        import peft  # noqa: E402
        base = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        pm = peft.PeftModel.from_pretrained(base, os.path.join(run_dir, "adapter")).eval()
        with torch.no_grad():
            peft_rows = [(ids, pm(input_ids=torch.tensor([ids])).logits[0].numpy()) for ids, _ in want]
        lora_worst = max(float(np.abs(llama_logits(out, ids, lora) - w).max()) for ids, w in peft_rows)
        report.append(check("llama.cpp on that export + condlm's LoRA adapter GGUF (10 steps, every linear layer), "
                            "against PEFT", lora_worst, 1e-4))
        moved = max(float(np.abs(w - b).max()) for (_, w), (_, b) in zip(peft_rows, want))
        report.append(f"| the adapter's own effect on the logits (must be large) | {moved:.3g} | ≥ 1e-1 | "
                      f"{'yes' if moved >= 1e-1 else '**NO**'} |")
        if moved < 1e-1:
            failed.append("the Qwen3.5 adapter has no effect")
    if name == "tiny-qwen3-yarn":
        report.append(check("llama.cpp on the converter's GGUF of tiny-qwen3-yarn",
                            worst(os.path.join(FIX, "converter", "tiny-qwen3-yarn.gguf"), want), 1e-4))
        plain = variant(name, {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}, "no-yarn")
        without = worst(out, hf_rows(plain))
        report.append(f"| the same export against transformers without YaRN (must differ) | {without:.3g} | ≥ 1e-2 | "
                      f"{'yes' if without >= 1e-2 else '**NO**'} |")
        if without < 1e-2:
            failed.append("YaRN has no effect")
# Phi-4-mini's LongRoPE: llama.cpp takes the long factors when its context (-c) exceeds the original 16 positions,
# transformers when the sequence does: they agree on the 20-token row only
folder = os.path.join(FIX, "tiny-phi4")
out = os.path.join(WORK, "tiny-phi4.gguf")
run("export-gguf", "--model", folder, "--out", out, "--type", "f32", "--name", "tiny")
report.append(check("llama.cpp on condlm's export of tiny-phi4 (LongRoPE, partial rotary), the 20-token row (long "
                    "factors in both)", worst(out, hf_rows(folder)[2:]), 1e-4))

# 3. real Gemma 3 270M
lines = [json.loads(l) for l in open(a.data)][: a.train_rows + a.rows]
train = os.path.join(WORK, "train.jsonl")
held = os.path.join(WORK, "held.jsonl")
with open(train, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in lines[: a.train_rows])
with open(held, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in lines[a.train_rows:])
out = os.path.join(WORK, "run")
run("train", "--model", a.gemma3, "--data", train, "--output-dir", out, "--max-steps", str(a.steps), "--lr", "1e-3",
    "--batch-size", "8", "--lora-targets", "all-linear", "--threads", str(a.threads))
adapter = os.path.join(out, "adapter")
per = [json.loads(l) for l in run("score", "--model", a.gemma3, "--adapter", adapter, "--data", held, "--per-token").splitlines()]
base_per = [json.loads(l) for l in run("score", "--model", a.gemma3, "--data", held, "--per-token").splitlines()]


def llama_token_logprobs(path, rows, lora=None):
    diffs = []
    for row in rows:
        ids = row["ids"]
        lg = llama_logits(path, ids, lora)
        lp = lg - lg.max(1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(1, keepdims=True))
        for pos, want in zip(row["target_positions"], row["token_logprobs"]):
            diffs.append(abs(lp[pos - 1, ids[pos]] - want))
    return float(np.mean(diffs)), float(np.max(diffs)), len(diffs)


def line(what, got, tol):
    mean, mx, n = got
    ok = mean <= tol
    if not ok:
        failed.append(what)
    return f"| {what} | {mean:.2e} | {mx:.2e} | {n} | ≤ {tol:.2g}: {'yes' if ok else '**NO**'} |"


moved = np.mean([abs(x["logprob"] - y["logprob"]) / max(1, x["tokens"]) for x, y in zip(per, base_per)])
floor = llama_token_logprobs(a.gemma3, base_per)
report += ["", f"## 3. Gemma 3 270M Q4_K_M, LoRA all-linear, {a.steps} steps on {a.train_rows} E2E rows", "",
           f"|Δ log P(y token)| over {a.rows} held-out rows, llama.cpp against condlm on the same ids (the adapter "
           f"moved condlm's by {moved:.3f} nats a token on average). llama.cpp rounds activations to 8 bits against "
           "quantized weights (to F16 against F16 ones) and condlm keeps them in f32: the first row is that floor, "
           "and a quantized file is held to twice it.", "",
           "| llama.cpp runs | mean | max | tokens | mean within |", "|---|---|---|---|---|"]
report.append(f"| the Q4_K_M base file, against condlm on it (the floor) | {floor[0]:.2e} | {floor[1]:.2e} | {floor[2]} | — |")
for ty, tol in [("f16", 5e-3), ("q8_0", 2 * floor[0] + 5e-3)]:
    path = os.path.join(WORK, f"merged-{ty}.gguf")
    run("export-gguf", "--model", a.gemma3, "--adapter", adapter, "--out", path, "--type", ty)
    report.append(line(f"the merged model exported as {ty.upper()}, against condlm's base + adapter", llama_token_logprobs(path, per), tol))
lora = os.path.join(WORK, "lora.gguf")
run("export-gguf", "--model", a.gemma3, "--adapter", adapter, "--out", lora, "--lora-only", "--type", "f32")
report.append(line("the base file with the `--lora-only` adapter (llama.cpp's --lora), against condlm's base + adapter",
                   llama_token_logprobs(a.gemma3, per, lora), 2 * floor[0] + 5e-3))

# 4. a full fine-tune of Gemma 3 270M: an HF folder with a SentencePiece tokenizer, exported with --vocab-from
full = os.path.join(WORK, "full")
run("train", "--model", a.gemma3, "--data", train, "--output-dir", full, "--full", "--max-steps", "2", "--lr", "1e-5",
    "--batch-size", "4", "--threads", str(a.threads))
folder = os.path.join(full, "model")
refused = subprocess.run([a.condlm, "export-gguf", "--model", folder, "--out", os.path.join(WORK, "x.gguf")],
                         capture_output=True, text=True)
full_gguf = os.path.join(WORK, "full-f32.gguf")
run("export-gguf", "--model", folder, "--out", full_gguf, "--type", "f32", "--vocab-from", a.gemma3)
full_f16 = os.path.join(WORK, "full-f16.gguf")
run("export-gguf", "--model", folder, "--out", full_f16, "--type", "f16", "--vocab-from", a.gemma3)
full_per = [json.loads(l) for l in run("score", "--model", folder, "--data", held, "--per-token").splitlines()]
same_ids = all(r["ids"] == b["ids"] for r, b in zip(full_per, base_per))
report += ["", "## 4. Gemma 3 270M, full fine-tuning (2 steps): `export-gguf --model RUN/model --vocab-from BASE.gguf`", "",
           "The run's folder holds an HF tokenizer.json of SentencePiece kind, whose GGUF vocabulary condlm does not "
           f"build itself: without `--vocab-from` the export is refused (exit {refused.returncode}: "
           f"\"{refused.stderr.strip().splitlines()[-1][:160]}…\"). With it:", "",
           "| llama.cpp runs | mean | max | tokens | mean within |", "|---|---|---|---|---|"]
report.append(line("the F32 export with the base's vocabulary, against condlm on the run's folder",
                   llama_token_logprobs(full_gguf, full_per), 5e-3))
mean, mx, n = llama_token_logprobs(full_f16, full_per)
report.append(f"| the F16 export of the same folder (see below) | {mean:.2e} | {mx:.2e} | {n} | — |")
report.append("\nThe F16 file is another model here, not llama.cpp: condlm reading it differs from the folder as much. "
              "The base's weights are Q4_K_M blocks, many of whose values fall on the midpoints of the F16 grid; two steps "
              "of training nudge them off it along the gradient, and rounding to F16 then moves each by half an F16 step "
              "in that direction — a further training step of its own. Export full fine-tunes of quantized bases in F32 "
              "(or keep the adapter route: LoRA leaves the base's values as they are).")
report.append(f"\ncondlm tokenizes the held-out rows identically from the folder and from the base GGUF: {same_ids}.")
if not same_ids or refused.returncode == 0:
    failed.append("full fine-tune export")

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
head = ["# GGUF of Llama 3.1+, Gemma 3, Phi-3 and SmolLM3 in llama.cpp", "",
        f"Command: `python scripts/gguf_families_llama_cpp.py target/release/condlm --rows {a.rows}`. "
        f"llama-cpp-python {llama_cpp.__version__}, transformers {transformers.__version__}, torch {torch.__version__}; "
        f"{cpu}, {a.threads} threads.", "",
        "llama.cpp runs with an F32 KV cache (its default F16 cache alone moves the tiny fixtures' logits by up to "
        "1e-2), so F32 files are held to 1e-4 in the logits; an F16 file's weights add ~1e-3 nats a token.", ""]
open(a.out, "w").write("\n".join(head + report) + "\n")
print("\n".join(head + report))
shutil.rmtree(WORK)
sys.exit(1 if failed else 0)
