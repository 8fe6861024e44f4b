"""Side-by-side benchmark (not a test), one run on one machine: LoRA fine-tuning of a Qwen3.5-shaped model, the
command users run (`condlm train`) against PyTorch + PEFT (../shared/reference/peft_bench.py, unchanged, given the
HF folder instead of a GGUF). No Qwen3.5 checkpoint can be fetched here, so the model is random, made by
transformers with Qwen3.5-0.8B's widths (hidden 1024, MLP 3584, 8 query / 2 key-value heads of 256, Gated DeltaNet
16 + 16 heads of 128, convolution 4) and --layers layers (three of four linear attention), with tiny-qwen2's
384-token vocabulary (the real 248k-token head would add the same work to both sides).

Both: LoRA r=16 (α=32, no dropout) on every linear layer of the text model, AdamW lr 2e-4, batches of 8 E2E rows,
--steps steps after one warm-up step, --threads threads. Tokens/s counts the rows' real tokens over the timed
steps; peak RSS is each process's own. Writes bench/qwen35_train.md.

Usage: python3 bench/qwen35_train.py target/release/condlm [--layers 8] [--steps 10] [--threads 2]
"""
import argparse, json, os, resource, shutil, subprocess, sys, tempfile, time
import machine  # bench/machine.py: the machine line of the report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser()
p.add_argument("condlm")
p.add_argument("--layers", type=int, default=8)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "e2e_nlg.jsonl"))
p.add_argument("--out", default=os.path.join(ROOT, "bench", "qwen35_train.md"))
a = p.parse_args()

import torch  # noqa: E402
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig  # noqa: E402

work = tempfile.mkdtemp(prefix="condlm-qwen35-bench-")
model_dir = os.path.join(work, "model")
torch.manual_seed(0)
cfg = Qwen3_5TextConfig(
    vocab_size=384, hidden_size=1024, intermediate_size=3584, num_hidden_layers=a.layers, num_attention_heads=8,
    num_key_value_heads=2, head_dim=256, linear_num_key_heads=16, linear_num_value_heads=16, linear_key_head_dim=128,
    linear_value_head_dim=128, linear_conv_kernel_dim=4, max_position_embeddings=4096, tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                     "mrope_section": [11, 11, 10], "mrope_interleaved": True},
    eos_token_id=2, pad_token_id=0, bos_token_id=None)
Qwen3_5ForCausalLM(cfg).save_pretrained(model_dir)
for f in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(os.path.join(ROOT, "tests", "fixtures", "tiny-qwen2", f), model_dir)
# the first (steps + 1) × batch rows: both sides train on the same rows, one epoch
rows = [json.loads(l) for l in open(a.data)][: (a.steps + 1) * a.batch]
data = os.path.join(work, "train.jsonl")
with open(data, "w") as f:
    f.writelines(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) + "\n" for r in rows)
targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,in_proj_qkv,in_proj_z,in_proj_b,in_proj_a,out_proj"


def run(cmd, env=None):
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return r.stdout, time.time() - t0, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


# condlm first: RUSAGE_CHILDREN's peak is then its own
# condlm: the user's command; its metrics.jsonl has each step's tokens and time
run_dir = os.path.join(work, "condlm-run")
_, c_wall, c_rss = run([a.condlm, "train", "--model", model_dir, "--data", data, "--output-dir", run_dir,
                        "--max-steps", str(a.steps + 1), "--batch-size", str(a.batch), "--lora-r", "16",
                        "--lora-alpha", "32", "--lora-dropout", "0", "--lora-targets", "all-linear", "--lr", "2e-4",
                        "--epochs", "1", "--threads", str(a.threads)])
# PyTorch + PEFT: the reference script, loading the folder (it passes gguf_file, which must then be None)
peft_bench = os.path.join(ROOT, "..", "shared", "reference", "peft_bench.py")
shim = ("import runpy, sys, transformers\n"
        "for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):\n"
        "    f = cls.from_pretrained.__func__\n"
        "    cls.from_pretrained = classmethod(lambda c, d, *x, gguf_file=None, _f=f, **k: _f(c, d, *x, **k))\n"
        f"sys.argv = sys.argv[1:]\nrunpy.run_path({peft_bench!r}, run_name='__main__')\n")
out, t_wall, _ = run([sys.executable, "-c", shim, "peft_bench.py", model_dir, "", data, "--steps", str(a.steps),
                      "--batch", str(a.batch), "--rank", "16", "--alpha", "32", "--targets", targets,
                      "--threads", str(a.threads)])
torch_sum = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])

steps = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if '"step_s"' in l]
timed = steps[1:]
c_tps = sum(s["tokens"] for s in timed) / sum(s["step_s"] for s in timed)

ratio = c_tps / torch_sum["tokens_per_s"]
lines = [
    "# Qwen3.5-shaped LoRA fine-tuning: condlm vs PyTorch + PEFT (CPU)", "",
    f"`python3 bench/qwen35_train.py {' '.join(sys.argv[1:])}` — {a.layers} layers ({sum(1 for i in range(a.layers) if (i + 1) % 4)} "
    f"Gated DeltaNet, {a.layers // 4} attention), Qwen3.5-0.8B's widths, random weights; LoRA r=16 on every linear "
    f"layer; {a.steps} timed steps of {a.batch} E2E rows after one warm-up; {a.threads} threads.", "",
    f"CPU: {machine.describe()}", f"torch {torch.__version__}", "",
    "| | tokens/s | peak RSS (MiB) | process wall (s) |", "|---|---|---|---|",
    f"| PyTorch + PEFT (peft_bench.py) | {torch_sum['tokens_per_s']:.0f} | {torch_sum['peak_rss_mib']:.0f} | {t_wall:.1f} |",
    f"| condlm train | {c_tps:.0f} | {c_rss:.0f} | {c_wall:.1f} |", "",
    f"condlm / PyTorch tokens/s: **{ratio:.2f}×**; peak RSS {c_rss / torch_sum['peak_rss_mib']:.2f}×.",
    "condlm's wall time includes writing its run folder (adapter, checkpoint, metrics, plot).",
]
open(a.out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
shutil.rmtree(work)
