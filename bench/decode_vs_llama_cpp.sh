#!/usr/bin/env bash
# Prefill and decode of condlm vs llama.cpp on the same GGUF files and threads (issue 12's inference targets),
# each engine run as users run it, interleaved per model, printing a Markdown table with the machine and load.
#
# Usage: bench/decode_vs_llama_cpp.sh [--condlm BIN] [--threads N] [--rounds R] MODEL.gguf...
# Needs llama-bench: scripts/llama_cpp/build.sh llama-bench (built from llama-cpp-python's vendored llama.cpp).
#
# llama.cpp: `llama-bench -t N -p 128 -n 128 -r 2` (its pp128 and tg128). condlm: `generate` of 128 new tokens
# after an E2E prompt of ~170 tokens with --ignore-eos, once per --compute mode (f32: the default, bit-identical to
# the f32 base; int8: the opt-in fast path with llama.cpp's activation rounding); its own prefill and decode
# tokens/s, whole-process peak RSS from /usr/bin/time.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CONDLM=$HERE/../target/release/condlm
THREADS=2
ROUNDS=1
while [ $# -gt 0 ]; do
    case $1 in
        --condlm) CONDLM=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--condlm BIN] [--threads N] [--rounds R] MODEL.gguf..." >&2; exit 2; }
BENCH=${LLAMA_BENCH:-$HOME/.cache/condlm/llama-cpp/build-0.3.36/bin/llama-bench}
[ -x "$BENCH" ] || { echo "no $BENCH: run scripts/llama_cpp/build.sh llama-bench first" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PROMPT=$(head -c 700 "$HERE/../../shared/data/e2e_nlg.jsonl" | tr -d '"{}')

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
echo "flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512bw|avx512_bf16|avx512_vnni|avx_vnni|amx_bf16)$' | tr '\n' ' ')"
echo "threads: $THREADS; load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%FT%TZ)"
echo
echo "| model | engine | prefill tokens/s | decode tokens/s | peak RSS |"
echo "|---|---|---|---|---|"
for model in "$@"; do
    name=$(basename "$model")
    for _ in $(seq "$ROUNDS"); do
        /usr/bin/time -f "%M" -o "$WORK"/llama-bench.rss "$BENCH" -m "$model" -t "$THREADS" -p 128 -n 128 -r 2 -o csv \
            2>/dev/null >"$WORK"/llama-bench.csv
        rss=$(tail -1 "$WORK"/llama-bench.rss)
        python3 - "$name" "$rss" "$WORK"/llama-bench.csv <<'EOF'
import csv, sys
name, rss, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = list(csv.DictReader(open(path)))
pp = next(float(r["avg_ts"]) for r in rows if r["n_prompt"] == "128" and r["n_gen"] == "0")
tg = next(float(r["avg_ts"]) for r in rows if r["n_gen"] == "128")
print(f"| {name} | llama.cpp (pp128, tg128) | {pp:.1f} | {tg:.1f} | {rss * 1024 / 1e6:.1f} MB |")
EOF
        for mode in f32 int8; do
            out=$( { /usr/bin/time -f "rss %M" "$CONDLM" --threads "$THREADS" generate --model "$model" \
                --prompt "$PROMPT" --max-new-tokens 128 --ignore-eos --compute "$mode" >/dev/null; } 2>&1)
            line=$(grep -E 'prefill .* tokens/s' <<<"$out" | tail -1)
            pre=$(sed -E 's/.*prefill [0-9.]+ ms \(([0-9.]+) tokens\/s\).*/\1/' <<<"$line")
            dec=$(sed -E 's/.*decode ([0-9.]+) tokens\/s.*/\1/' <<<"$line")
            kb=$(grep -E '^rss ' <<<"$out" | cut -d' ' -f2)
            echo "| $name | condlm --compute $mode | $pre | $dec | $(awk -v k="$kb" 'BEGIN{printf "%.1f MB", k*1024/1e6}') |"
        done
    done
done
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
