"""LoRA memory projected by condlm's memory plan (src/train/memory.rs, `MemoryPlan::new`, the same formula line by
line) for Qwen2.5 / Llama-3.1 shapes at batch 8 x 512 tokens, all-linear LoRA r 16, base f32 or kept as a stored
Q4_K_M GGUF (bits per parameter of the measured Qwen2.5-Coder-1.5B Q4_K_M file: Q4_K/Q6_K blocks, 1.03 GiB for
1.777 B parameters), with and without --checkpoint-activations.

Validation: `--check TOKENS` prints the 1.5 B plan at TOKENS tokens, to compare with `condlm train --dry-run`.
Usage: python3 bench/memory_projection.py [--check 308]
"""
import sys

GIB = 2**30
BASE_BYTES = 128 << 20
Q4_K_M_BYTES_PER_PARAM = 1.03 * GIB / 1_777_088_000

# (name, hidden, intermediate, layers, heads, kv heads, head dim, vocab, tied embeddings)
MODELS = [
    ("Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 64, 151936, True),
    ("Qwen2.5-Coder-1.5B", 1536, 8960, 28, 12, 2, 128, 151936, False),
    ("Qwen2.5-3B", 2048, 11008, 36, 16, 2, 128, 151936, True),
    ("Qwen2.5-7B", 3584, 18944, 28, 28, 4, 128, 152064, False),
    ("Llama-3.1-8B", 4096, 14336, 32, 32, 8, 128, 128256, False),
]


def params(d, f, layers, heads, kv, hd, vocab, tied):
    q, k = heads * hd, kv * hd
    per_block = d * q + 2 * d * k + q * d + 3 * d * f + 2 * d + (q + 2 * k)  # qwen2 q/k/v biases; norms
    return layers * per_block + vocab * d * (1 if tied else 2) + d


def plan(m, tokens, weight_bytes, r=16, ckpt=False):
    _, d, f, layers, heads, kv, hd, vocab, _ = m
    q, k = heads * hd, kv * hd
    linears = [(d, q), (d, k), (d, k), (q, d), (d, f), (d, f), (f, d)]
    qkv = q + 2 * k
    lora_params = layers * sum(r * (i + o) for i, o in linears)
    optimizer = 16 * lora_params
    per_block = 4 * d + qkv + q + 3 * f + 4 + len(linears) * 2 * r
    once = 4 * d + qkv + q + 3 * f + max(d, f)
    head = 2 * 64 * vocab * 4
    blocks = layers * d + per_block if ckpt else layers * per_block
    acts = 4 * tokens * (blocks + once) + head if tokens else 0
    return weight_bytes + BASE_BYTES, optimizer, acts


def main():
    if "--check" in sys.argv:
        tokens = int(sys.argv[sys.argv.index("--check") + 1])
        m = MODELS[1]
        for ckpt in (False, True):
            w, o, a = plan(m, tokens, int(1.03 * GIB), ckpt=ckpt)
            print(f"1.5B stored, {tokens} tokens, ckpt={ckpt}: {(w + o + a) / GIB:.2f} GiB "
                  f"(weights {w / GIB:.2f}, optimizer {o / GIB:.2f}, activations {a / GIB:.2f})")
        return
    print("| base (params) | f32 base | Q4_K_M stored | Q4_K_M stored + checkpointing |")
    print("|---|---|---|---|")
    for m in MODELS:
        p = params(*m[1:])
        cells = []
        for wb, ckpt in ((4 * p, False), (int(Q4_K_M_BYTES_PER_PARAM * p), False), (int(Q4_K_M_BYTES_PER_PARAM * p), True)):
            w, o, a = plan(m, 8 * 512, wb, ckpt=ckpt)
            cells.append(f"{(w + o + a) / GIB:.1f} GiB (act. {a / GIB:.1f})")
        print(f"| {m[0]} ({p / 1e9:.2f} B) | " + " | ".join(cells) + " |")


main()
