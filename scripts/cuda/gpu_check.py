"""Helpers of scripts/gpu_check.sh on the GPU machine (PyTorch, transformers and peft there; no Rust, no network).

  gpu_check.py compare-scores A.jsonl B.jsonl TOL        per-token log-probs of two `condlm score --per-token` runs
  gpu_check.py compare-runs DIR_A DIR_B TOL [losses]     losses, eval NLLs and (unless `losses`) adapters of two
                                                         `condlm train` runs
  gpu_check.py make-model DIR SHAPE TOKENIZER_DIR        a random-weight model of SHAPE (smollm2-135m, qwen2.5-1.5b,
                                                         qwen3.5-0.8b)
  gpu_check.py make-data OUT ROWS REPEAT SRC.jsonl       ROWS rows of SRC, each completion repeated REPEAT times
  gpu_check.py peft MODEL_DIR DATA STEPS BATCH RANK DTYPE [full]
                                                         PyTorch + PEFT LoRA (all linear layers) on cuda:0, or
                                                         with `full` PyTorch full fine-tuning (bf16: autocast)
  gpu_check.py throughput DIR MODEL_DIR [full]           tokens/s of a `condlm train` run (its steps after the first),
                                                         its model FLOP utilisation (GPU_CHECK_PEAKS) and the share
                                                         of its time the host waited for the GPU
  gpu_check.py compare-generations A.jsonl B.jsonl       the generations of two `condlm generate --data` runs: equal
  gpu_check.py hf-generate MODEL_DIR PROMPT NEW DTYPES   transformers' greedy `generate` on cuda:0, in each of
                                                         DTYPES (f32,bf16): prefill and decode tokens/s
  gpu_check.py summary REPORT.md                         issue 15's acceptance read off the report's sections: a
                                                         table of criterion, measured, target and verdict

Every comparison prints one line per quantity and exits 1 when one is outside its tolerance.
"""
import json, math, os, re, sys, time


def rows(path):
    return [json.loads(l) for l in open(path) if l.strip()]


def rel(a, b):
    num = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
    den = math.sqrt(sum(y * y for y in b)) or 1.0
    return num / den


def compare_scores(a, b, tol):
    ra, rb = rows(a), rows(b)
    assert len(ra) == len(rb), f"{len(ra)} vs {len(rb)} rows"
    la = [v for r in ra for v in r["token_logprobs"]]
    lb = [v for r in rb for v in r["token_logprobs"]]
    e = rel(la, lb)
    print(f"token log-probs: {len(la)} tokens of {len(ra)} rows, relative error {e:.3e} (tolerance {tol:g})")
    return e <= tol


def metrics(d):
    out = {"loss": [], "eval_nll": []}
    for r in rows(os.path.join(d, "metrics.jsonl")):
        for k in out:
            if r.get(k) is not None:
                out[k].append((r["step"], r[k]))
    return out


def compare_runs(a, b, tol, adapter=True):
    """Per-step metrics within `tol` relative and, with `adapter`, the written adapters within 10 × tol."""
    ok = True
    ma, mb = metrics(a), metrics(b)
    for k in ma:
        va, vb = ma[k], mb[k]
        if [s for s, _ in va] != [s for s, _ in vb]:
            print(f"{k}: steps differ: {va} vs {vb}")
            ok = False
            continue
        worst = max((abs(x - y) / abs(y) for (_, x), (_, y) in zip(va, vb)), default=0.0)
        print(f"{k}: {len(va)} values, first {va[0][1] if va else None} vs {vb[0][1] if vb else None}, "
              f"last {va[-1][1] if va else None} vs {vb[-1][1] if vb else None}, worst relative difference {worst:.3e} "
              f"(tolerance {tol:g})")
        ok &= worst <= tol
    from safetensors.numpy import load_file
    fa, fb = (os.path.join(d, "adapter", "adapter_model.safetensors") for d in (a, b))
    if adapter and os.path.exists(fa) and os.path.exists(fb):
        ta, tb = load_file(fa), load_file(fb)
        worst = max(rel(ta[k].ravel().tolist(), tb[k].ravel().tolist()) for k in tb)
        print(f"adapter: {len(tb)} tensors, worst relative error {worst:.3e} (tolerance {10 * tol:g})")
        ok &= worst <= 10 * tol
    return ok


SHAPES = {
    # SmolLM2-135M-Instruct and Qwen2.5-1.5B's shapes (config.json values), random weights.
    "smollm2-135m": dict(arch="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                         rope_theta=100000.0, max_position_embeddings=8192, rms_norm_eps=1e-5),
    "qwen2.5-1.5b": dict(arch="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         rope_theta=1000000.0, max_position_embeddings=32768, rms_norm_eps=1e-6),
    # Qwen3.5-0.8B's text model: 24 layers, three of four a Gated DeltaNet (16 + 16 heads of 128), the fourth
    # attention with an output gate (8 query / 2 key-value heads of 256, a quarter rotated).
    "qwen3.5-0.8b": dict(arch="qwen3_5", hidden_size=1024, intermediate_size=3584, num_hidden_layers=24,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=256, linear_num_key_heads=16,
                         linear_num_value_heads=16, linear_key_head_dim=128, linear_value_head_dim=128,
                         linear_conv_kernel_dim=4, vocab_size=248320, tie_word_embeddings=True,
                         max_position_embeddings=32768, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                                          "mrope_section": [11, 11, 10], "mrope_interleaved": True}),
}


def make_model(out, shape, tokenizer_dir, dtype="f32"):
    import shutil, torch
    import transformers
    s = dict(SHAPES[shape])
    arch = s.pop("arch")
    cfg_cls, model_cls = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
        "qwen3_5": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM"),
    }[arch]
    cfg_cls, model_cls = getattr(transformers, cfg_cls), getattr(transformers, model_cls)
    cfg = cfg_cls(**s, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    # Initialised on the GPU: random init of a 1.5B model takes ~45 s on 2 CPU cores, a second or two there. Not
    # tried there before: on failure, said, on the CPU.
    try:
        with torch.device(os.environ.get("GPU_CHECK_TORCH_DEVICE", "cuda")):
            model = model_cls(cfg)
    except Exception as e:
        print(f"make-model: init on the GPU failed ({e}); on the CPU instead")
        model = model_cls(cfg)
    if dtype == "bf16":  # half the bytes to write and read: a 1.5B model is 6 GB in f32
        model = model.to(torch.bfloat16)
    model.to("cpu").save_pretrained(out, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_dir, f), out)
    print(f"{shape}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters in {out}")
    return True


def make_data(out, n, repeat, src):
    base = rows(src)
    with open(out, "w") as f:
        for i in range(n):
            r = base[i % len(base)]
            f.write(json.dumps({"prompt": r["prompt"], "completion": " ".join([r["completion"]] * repeat)}) + "\n")
    return True


def peft(model_dir, data, steps, batch, rank, dtype, mode="lora"):
    """`mode` lora: LoRA on every linear layer (r = rank, α = 2r, dropout 0.05: gpu_check.sh's condlm runs) of the
    model loaded in `dtype`, as PEFT users run it. `mode` full: every weight trained, f32 master weights, products in bf16 under autocast for bf16 (HF
    Trainer's bf16=True). AdamW, the conditional objective on padded batches; tokens/s over the steps after the
    first, peak GPU memory as its allocator counts it (gpu_check.sh adds nvidia-smi's)."""
    import contextlib, torch, torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import LoraConfig, get_peft_model
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = os.environ.get("GPU_CHECK_TORCH_DEVICE", "cuda")  # cpu: a dry run of the script without a GPU
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    dt = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    full = mode == "full"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32 if full else dt).to(dev)
    if not full:
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules="all-linear"))
    model.train()  # from_pretrained returns eval mode, where dropout does nothing; HF's Trainer calls train() too
    autocast = (lambda: torch.autocast(device_type=dev, dtype=dt)) if full and dtype == "bf16" else contextlib.nullcontext
    # Fused on the GPU, as HF's Trainer defaults to with torch ≥ 2.8 ("adamw_torch_fused").
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=dev == "cuda")
    eos = tok.eos_token_id if tok.eos_token_id is not None else 2
    enc = []
    for r in rows(data):
        x = tok.encode(r["prompt"], add_special_tokens=False)
        y = tok.encode(r["completion"], add_special_tokens=False) + [eos]
        enc.append((x + y, [-100] * len(x) + y))
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    toks, positions, secs = 0, 0, 0.0
    for s in range(steps + 1):
        b = [enc[(s * batch + k) % len(enc)] for k in range(batch)]
        L = max(len(i) for i, _ in b)
        ids = torch.full((batch, L), eos); lab = torch.full((batch, L), -100); att = torch.zeros((batch, L), dtype=torch.long)
        for k, (i, l) in enumerate(b):
            ids[k, :len(i)] = torch.tensor(i); lab[k, :len(l)] = torch.tensor(l); att[k, :len(i)] = 1
        ids, lab, att = ids.to(dev), lab.to(dev), att.to(dev)
        sync(); t = time.time()
        with autocast():
            logits = model(input_ids=ids, attention_mask=att).logits.float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), lab[:, 1:].reshape(-1), ignore_index=-100)
        loss.backward(); opt.step(); opt.zero_grad()
        sync()
        if s > 0:
            toks += int(att.sum()); positions += batch * L; secs += time.time() - t
    engine = f"pytorch full, {'bf16 autocast' if dtype == 'bf16' else 'f32'}" if full else f"pytorch+peft {dtype}"
    # tokens/s counts real tokens, as condlm's does; the batches are padded to their longest row (condlm packs rows
    # without padding): real_token_fraction says how much of PyTorch's work that padding is.
    print(json.dumps({"engine": engine, "tokens_per_s": toks / secs, "real_token_fraction": toks / positions,
                      "torch_max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None, "last_loss": loss.item(),
                      **utilisation(model_dir, toks / secs, full)}))
    return True


def compare_generations(a, b):
    ra, rb = rows(a), rows(b)
    same = sum(x["generation"] == y["generation"] for x, y in zip(ra, rb))
    print(f"generations: {same} of {len(rb)} rows identical")
    return len(ra) == len(rb) and same == len(rb)


def hf_generate(model_dir, prompt, new, dtypes):
    """Greedy decoding with the KV cache, batch 1, as `condlm generate --prompt` runs it; prefill excluded. One JSON
    line per dtype of `dtypes` (comma-separated), in one process: importing torch and transformers costs seconds."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = os.environ.get("GPU_CHECK_TORCH_DEVICE", "cuda")
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)], device=dev)
    for dtype in dtypes.split(","):
        dt = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dt).to(dev).eval()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # warm-up
            sync(); t = time.time()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            sync(); prefill = time.time() - t
            t = time.time()
            out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            sync(); total = time.time() - t
        made = out.shape[1] - ids.shape[1]
        print(json.dumps({"engine": f"transformers generate {dtype}", "prompt_tokens": ids.shape[1],
                          "new_tokens": made, "prefill_tokens_per_s": ids.shape[1] / max(prefill, 1e-9),
                          "decode_tokens_per_s": (made - 1) / max(total - prefill, 1e-9)}), flush=True)
        del model
    return True


def matmul_params(model_dir):
    """The weights a token is multiplied by (every linear layer of every block, and the LM head), from config.json."""
    c = json.load(open(os.path.join(model_dir, "config.json")))
    d, ffn, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c["num_attention_heads"]
    hd = c.get("head_dim") or d // heads
    kv = c.get("num_key_value_heads", heads)
    gate = 2 if c.get("model_type") == "qwen3_5_text" else 1  # Qwen3.5's q_proj also yields the output gate
    attention = d * heads * hd * (1 + gate) + d * kv * hd * 2  # q (and gate), o; k, v
    mlp = 3 * d * ffn  # gate, up, down
    if "linear_attention" in (c.get("layer_types") or []):
        # Gated DeltaNet layers: in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, out_proj (transformers 5 writes
        # layer_types for other families too, Qwen2's all "full_attention")
        kd, hv = c["linear_num_key_heads"] * c["linear_key_head_dim"], c["linear_num_value_heads"]
        vd = hv * c["linear_value_head_dim"]
        delta = d * (2 * kd + vd) + 2 * d * vd + 2 * d * hv
        return sum((delta if t == "linear_attention" else attention) + mlp for t in c["layer_types"]) + vocab * d
    return layers * (attention + mlp) + vocab * d


def utilisation(model_dir, tokens_per_s, full=False):
    """Model FLOP utilisation against the GEMM peaks `condlm info --devices --check-kernels` measured (passed in
    GPU_CHECK_PEAKS="bf16=TFLOP/s f32=TFLOP/s"): the weight products' FLOPs per token — forward 2N and the input gradients
    2N for LoRA (a frozen base has no weight gradients), 6N for full fine-tuning — times tokens/s. Attention's
    scores are left out (a few % at these row lengths), as are the adapters' own small products."""
    flops = (6 if full else 4) * matmul_params(model_dir) * tokens_per_s
    out = {"model_tflops": round(flops / 1e12, 3)}
    for name, _, peak in (p.partition("=") for p in os.environ.get("GPU_CHECK_PEAKS", "").split()):
        if peak and float(peak) > 0:
            out[f"mfu_vs_{name}_peak"] = round(flops / (float(peak) * 1e12), 4)
    return out


def throughput(d, model_dir, full=False):
    m = rows(os.path.join(d, "metrics.jsonl"))
    steps = [r for r in m if r.get("tokens_per_s") is not None][1:]
    toks, secs = sum(r["tokens"] for r in steps), sum(r["step_s"] for r in steps)
    # The share of the steps' time the host waited for the GPU in its reads: near 1 the GPU bounds the steps, near 0
    # the host's launches do (the GPU idles between them).
    waited = [r.get("device_wait_s") for r in steps]
    wait_share = sum(waited) / secs if waited and None not in waited else None
    print(json.dumps({"engine": "condlm", "dir": d, "steps": len(steps), "tokens_per_s": toks / secs,
                      "host_wait_share": wait_share, **utilisation(model_dir, toks / secs, full)}))
    return True


def sections(report):
    """The report's sections as (title, body lines)."""
    out, title, body = [], None, []
    for line in open(report).read().splitlines():
        if line.startswith("## "):
            if title is not None:
                out.append((title, body))
            title, body = line[3:], []
        elif title is not None:
            body.append(line)
    if title is not None:
        out.append((title, body))
    return out


CHECK_LINE = re.compile(r"^model \S+ (.+?)\s+(max \|Δ\|/max \|cpu\||‖Δ‖/‖cpu‖|\|Δ\|/\|cpu\||differing) (\S+) "
                        r"\(tol (\S+)\) (OK|FAILED)$")
CHECK_KINDS = ["logits, f32", "logits, --compute bf16", "KV decoding", "greedy ids", "LoRA loss", "LoRA gradients",
               "full loss", "full gradients"]


def model_checks(body):
    """`info MODEL --check-device` lines: per kind of comparison, the worst error over the models, its tolerance,
    how many lines and how many failed; the models' count, and comparisons that failed to run."""
    kinds, models = {}, sum(1 for l in body if re.match(r"^tiny-\S+:$", l))
    for line in body:
        m = CHECK_LINE.match(line)
        if not m:
            continue
        kind = next((k for k in CHECK_KINDS if m.group(1).startswith(k)), m.group(1))
        worst, tol, n, bad = kinds.get(kind, (0.0, float(m.group(4)), 0, 0))
        kinds[kind] = (max(worst, float(m.group(3))), tol, n + 1, bad + (m.group(5) == "FAILED"))
    return kinds, models, sum("FAILED to run" in l for l in body)


def throughput_entries(body):
    """The throughput sections' runs in order: condlm's (its label line, tokens/s, MFU) and PyTorch's (engine,
    tokens/s), each with its peak GPU memory line (condlm's printed before its label, PyTorch's after its JSON)."""
    entries, peak, label = [], None, None
    for line in body:
        m = re.match(r"^peak GPU memory above idle: (-?\d+) MiB", line)
        if m:
            if entries and entries[-1]["engine"] != "condlm" and entries[-1]["peak"] is None:
                entries[-1]["peak"] = int(m.group(1))
            else:
                peak = int(m.group(1))
        elif line.endswith(":") and ("compute" in line):
            label = line[:-1]
        elif line.startswith("{") and '"engine"' in line:
            r = json.loads(line)
            if r["engine"] == "condlm":
                entries.append({"engine": "condlm", "label": label, "tps": r["tokens_per_s"],
                                "mfu": r.get("mfu_vs_bf16_peak"), "peak": peak, "wait": r.get("host_wait_share")})
                peak = None
            else:
                entries.append({"engine": r["engine"], "tps": r["tokens_per_s"], "peak": None,
                                "real": r.get("real_token_fraction")})
    return entries


def fmt(x, unit=""):
    return "—" if x is None else (f"{x:.3g}{unit}" if isinstance(x, float) else f"{x}{unit}")


def summary(report):
    """Issue 15's acceptance read off the report: one row per criterion (measured, target, verdict), for a reader
    with minutes to spare. It reads; the sections themselves decide the script's status."""
    rows, ran = [], []
    for title, body in sections(report):
        done = [re.match(r"^exit status (\d+) in (\d+ m?s)$", l) for l in body]
        done = next((m for m in done if m), None)
        short = title if len(title) <= 72 else title[:71] + "…"
        if done:
            ran.append((short, f"exit status {done.group(1)} in {done.group(2)}", "pass" if done.group(1) == "0" else "FAIL"))
        elif any(l.startswith("skipped:") for l in body):
            ran.append((short, next(l for l in body if l.startswith("skipped:")), "—"))
        if title.startswith("condlm info --devices --check-kernels"):
            ok = sum(bool(re.match(r"^(parity|backend) .* OK$", l)) for l in body)
            bad = sum(bool(re.match(r"^(parity|backend|peak|speed) .*FAILED", l)) for l in body)
            rows.append(("kernels and backend ops vs the CPU's (--check-kernels)", f"{ok} OK, {bad} FAILED", "all OK",
                         "pass" if ok and not bad else "FAIL"))
        elif title.startswith("info MODEL --check-device"):
            kinds, models, broken = model_checks(body)
            for kind in CHECK_KINDS:
                if kind not in kinds:
                    rows.append((f"tiny models: {kind}", "no line", "—", "FAIL"))
                    continue
                worst, tol, n, bad = kinds[kind]
                verdict = "pass" if bad == 0 and n == models and not broken else "FAIL"
                rows.append((f"tiny models ({models}): {kind}", f"worst {worst:.1e} ({bad} of {n} off)", f"≤ {tol:g}",
                             verdict))
        elif title.startswith("SmolLM2-135M-shaped model:"):
            kinds, _, broken = model_checks(body)
            for kind, (worst, tol, n, bad) in kinds.items():
                rows.append((f"SmolLM2-135M shape: {kind}", f"{worst:.1e}", f"≤ {tol:g}",
                             "pass" if bad == 0 and not broken else "FAIL"))
            runs = ["f32", "bf16 (f32 attention and activations)", "bf16 (tensor cores, bf16 activations)"]
            losses = [l for l in body if l.startswith("loss:")]
            for name, line in zip(runs, losses):
                m = re.search(r"(\d+) values.*worst relative difference (\S+) \(tolerance (\S+)\)", line)
                if m:
                    ok = float(m.group(2)) <= float(m.group(3))
                    rows.append((f"SmolLM2-135M shape, {m.group(1)} LoRA steps' losses vs the CPU, {name}",
                                 f"{float(m.group(2)):.1e}", f"≤ {m.group(3)}", "pass" if ok else "FAIL"))
        elif title.startswith("throughput,") or title.startswith("quantized base on the GPU"):
            shape = title.split(",")[1].strip().split(":")[0] if title.startswith("throughput,") else "SmolLM2 Q4_K"
            e = throughput_entries(body)
            torch = {x["engine"]: x for x in e if x["engine"] != "condlm"}
            pairs = {"LoRA, compute f32": ("pytorch+peft f32", None), "LoRA, compute bf16": ("pytorch+peft bf16", 1.5),
                     "full fine-tuning, compute bf16": ("pytorch full, bf16 autocast", 1.5)}
            for x in (x for x in e if x["engine"] == "condlm"):
                base, target = pairs.get(x["label"], (None, None))
                ref = torch.get(base)
                ratio = x["tps"] / ref["tps"] if ref and ref["tps"] else None
                measured = f"{x['tps']:.0f} tokens/s"
                if ref:
                    measured += f" vs {ref['tps']:.0f}: ×{ratio:.2f}; peak {fmt(x['peak'], ' MiB')} vs {fmt(ref['peak'], ' MiB')}"
                if x["mfu"] is not None:
                    measured += f"; MFU {100 * x['mfu']:.1f} %"
                if x.get("wait") is not None:
                    measured += f"; host waiting for the GPU {100 * x['wait']:.0f} % of the steps' time"
                if ref and ref.get("real") is not None:
                    measured += f"; PyTorch's padded batches {100 * ref['real']:.0f} % real tokens"
                if target is None:
                    verdict = "—"
                elif ratio is None:
                    verdict = "no PyTorch number"
                else:
                    verdict = "pass" if ratio >= target else "below"
                name = f"{shape}: condlm {x['label']}" + (f" vs {base}" if base else "")
                rows.append((name, measured, f"≥ {target}×" if target else "—", verdict))
        elif title.startswith("decode,"):
            text = "\n".join(body)
            ours = [float(v) for v in re.findall(r"decode ([\d.]+) tokens/s", text)]
            hf = [json.loads(l) for l in body if l.startswith("{") and "transformers generate" in l]
            if len(ours) >= 3 and len(hf) >= 2:
                for name, mine, theirs in (("f32, CUDA graphs", ours[0], hf[0]), ("bf16", ours[2], hf[1])):
                    t = theirs["decode_tokens_per_s"]
                    rows.append((f"decode tokens/s, SmolLM2-135M shape, {name} vs transformers' generate",
                                 f"{mine:.0f} vs {t:.0f}: ×{mine / t:.2f}", "reported", "—"))
    print("| section | result | verdict |")
    print("|---|---|---|")
    for r in ran:
        print("| " + " | ".join(r) + " |")
    print()
    print("| criterion | measured | target | verdict |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return True


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    ok = {
        "compare-scores": lambda: compare_scores(args[0], args[1], float(args[2])),
        "compare-runs": lambda: compare_runs(args[0], args[1], float(args[2]), args[3:] != ["losses"]),
        "make-model": lambda: make_model(*args),
        "make-data": lambda: make_data(args[0], int(args[1]), int(args[2]), args[3]),
        "peft": lambda: peft(args[0], args[1], int(args[2]), int(args[3]), int(args[4]), args[5], *args[6:]),
        "throughput": lambda: throughput(args[0], args[1], args[2:] == ["full"]),
        "compare-generations": lambda: compare_generations(args[0], args[1]),
        "hf-generate": lambda: hf_generate(args[0], args[1], int(args[2]), args[3]),
        "summary": lambda: summary(args[0]),
    }[cmd]()
    sys.exit(0 if ok else 1)
