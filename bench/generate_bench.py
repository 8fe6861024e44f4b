"""Benchmark (not a test): single-stream generation speed of `condlm generate` vs transformers' `generate` on the
same machine, same prompt, same thread count, model loading excluded, greedy decoding, batch 1.

- prefill tokens/s: prompt tokens / time to the first generated token, on a long prompt (E2E rows joined);
- decode tokens/s: (new tokens − 1) / time from the first to the last generated token, on a short E2E prompt
  with a fixed number of new tokens (condlm: --ignore-eos; transformers: min_new_tokens).

condlm reports both in its stderr line; transformers is timed with a streamer (its first `put` is the prompt, the
second the first new token). Runs alternate between the engines so machine noise hits both alike; medians.

Usage: python3 bench/generate_bench.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf [--threads 2[,1]] [--reps 5]
       [--new-tokens 128] [--prefill-rows 12] [--bin target/release/condlm]
Needs: pip install torch transformers gguf; cargo build --release
"""
import argparse, json, os, re, statistics, subprocess, time
import machine  # bench/machine.py: the machine line of the report
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser()
p.add_argument("--gguf", required=True)
p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "e2e_nlg.jsonl"))
p.add_argument("--threads", default="2", help="thread count, or a comma list (one table each), e.g. 2,1")
p.add_argument("--reps", type=int, default=5)
p.add_argument("--new-tokens", type=int, default=128)
p.add_argument("--prefill-rows", type=int, default=12, help="E2E rows (prompt + completion) joined into the long prompt")
p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "condlm"))
p.add_argument("--out", default=os.path.join(ROOT, "bench", "generate_bench.md"))
a = p.parse_args()
gdir, gfile = os.path.dirname(os.path.abspath(a.gguf)), os.path.basename(a.gguf)
rows = [json.loads(l) for l in open(a.data)]
short_prompt = rows[0]["prompt"]
long_prompt = " ".join(r["prompt"] + " " + r["completion"] for r in rows[: a.prefill_rows])

tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gfile, dtype=torch.float32).eval()


class Clock(BaseStreamer):
    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        self.times.append(time.perf_counter())


def torch_run(prompt, new_tokens):
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
    clock = Clock()
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, streamer=clock,
                             pad_token_id=tok.eos_token_id)
    first, last = clock.times[1], clock.times[-2]
    n_new = out.shape[1] - ids.shape[1]
    return ids.shape[1] / (first - start), (n_new - 1) / (last - first), ids.shape[1], n_new


def condlm_run(prompt, new_tokens, threads):
    r = subprocess.run([a.bin, "--threads", str(threads), "generate", "--model", a.gguf, "--prompt", prompt,
                        "--max-new-tokens", str(new_tokens), "--ignore-eos"], capture_output=True, text=True, check=True)
    m = re.search(r"(\d+) prompt \+ (\d+) new tokens.*\(([\d.]+) tokens/s\), decode ([\d.]+) tokens/s", r.stderr)
    return float(m.group(3)), float(m.group(4)), int(m.group(1)), int(m.group(2))


def measure(threads):
    torch.set_num_threads(threads)
    torch_run(short_prompt, 8)  # warm-up
    res = {k: [] for k in ["t_prefill", "t_decode", "c_prefill", "c_decode"]}
    lens = {}
    for _ in range(a.reps):
        tp, _, lens["t_long"], _ = torch_run(long_prompt, 4)
        cp, _, lens["c_long"], _ = condlm_run(long_prompt, 4, threads)
        _, td, lens["t_short"], lens["t_new"] = torch_run(short_prompt, a.new_tokens)
        _, cd, lens["c_short"], lens["c_new"] = condlm_run(short_prompt, a.new_tokens, threads)
        for k, v in zip(res, [tp, td, cp, cd]):
            res[k].append(v)
        print(threads, {k: round(v[-1], 1) for k, v in res.items()}, flush=True)
    assert lens["t_long"] == lens["c_long"] and lens["t_short"] == lens["c_short"], lens
    med = {k: statistics.median(v) for k, v in res.items()}
    runs = {k: ", ".join(f"{x:.1f}" for x in v) for k, v in res.items()}
    load = os.getloadavg()
    return f"""## {threads} thread{"s" if threads > 1 else ""} each

| measure | transformers (median) | condlm (median) | condlm / transformers | runs (transformers; condlm) |
|---|---|---|---|---|
| prefill tokens/s ({lens['c_long']}-token prompt) | {med['t_prefill']:.0f} | {med['c_prefill']:.0f} | **{med['c_prefill'] / med['t_prefill']:.2f}×** | {runs['t_prefill']}; {runs['c_prefill']} |
| decode tokens/s ({lens['c_short']}-token prompt, {lens['c_new']} new tokens) | {med['t_decode']:.1f} | {med['c_decode']:.1f} | **{med['c_decode'] / med['t_decode']:.2f}×** | {runs['t_decode']}; {runs['c_decode']} |

Load average after these runs: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.
"""


tables = [measure(int(t)) for t in a.threads.split(",")]
text = f"""# `condlm generate` vs transformers `generate`: single-stream speed

Command: `python3 bench/generate_bench.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --threads {a.threads} --reps {a.reps} --new-tokens {a.new_tokens} --prefill-rows {a.prefill_rows}`
Machine: {machine.describe()}; torch {torch.__version__}, transformers
{__import__('transformers').__version__} (its default sdpa attention). Other jobs may share the machine (load averages below):
the runs alternate between the engines so such noise hits both alike, and the ratios are the meaningful part.
Model: SmolLM2-135M-Instruct Q4_1 GGUF, dequantized to f32 by both (≈ 540 MB of weights read per decode step).
Greedy, batch 1, KV cache in both; model loading excluded.

""" + "\n".join(tables)
open(a.out, "w").write(text)
print(text)
