#!/usr/bin/env bash
# Full fine-tuning of SmolLM2-135M-Instruct, condlm against llama.cpp's llama-finetune, side by side in one run on
# the same machine, threads and F32 weights (issue 12, item 5). Each engine runs as the user would run it, under
# /usr/bin/time -v: whole-process peak RSS and wall time include loading and writing the result.
#
#   condlm:         train --full --batch-size 8 --max-len 128 on E2E rows (loss on y only), a checkpoint and
#                   model/ written at the end.
#   llama-finetune: next-token loss over every token of fixed 512-token windows (stride 256) of a text file made of
#                   the same rows ("prompt\ncompletion\n"); -c 512 -b 512 -ub 512: one AdamW step per 512 tokens,
#                   about the ~430 real tokens of condlm's 8-row step. The text is cut so that one epoch is STEPS
#                   windows; the fine-tuned GGUF is written at the end.
#
# tokens/s: condlm's own figure (tokens of x and y in the steps / seconds inside the steps, as it prints it) and
# llama-finetune's (ubatches × 512 / the elapsed time on its last progress line, 1 s resolution); "wall tokens/s"
# divides the same tokens by the whole process's wall time, "tokens per CPU-s" by its user + system CPU time.
#
# Usage: bench/finetune_vs_llama_cpp.sh   (env: CONDLM=binary, STEPS=10, ROUNDS=1, WORK=/tmp/condlm-finetune-bench)
# ROUNDS>1 alternates the two engines that many times (the machine is shared: alternation spreads the noise).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONDLM=${CONDLM:-$ROOT/target/release/condlm}
STEPS=${STEPS:-10}
ROUNDS=${ROUNDS:-1}
THREADS=2
CTX=512
WORK=${WORK:-/tmp/condlm-finetune-bench}
Q4=${MODEL:-$HOME/.cache/condlm/models/SmolLM2-135M-Instruct.Q4_1.gguf}
DATA=${DATA:-/work/shared/data/e2e_nlg.jsonl}
mkdir -p "$WORK"
[ -x "$CONDLM" ] || { echo "no condlm binary at $CONDLM: cargo build --release, or set CONDLM=" >&2; exit 1; }

LLAMA_BIN=$(JOBS=${JOBS:-2} bash "$ROOT/scripts/llama_cpp/build.sh" llama-finetune | tail -n 1)
FINETUNE=$LLAMA_BIN/llama-finetune

# Both engines start from the same F32 weights: the Q4_1 file dequantized once by condlm (llama-finetune takes F32
# tensors only).
F32=$WORK/SmolLM2-135M-Instruct.F32.gguf
[ -f "$F32" ] || "$CONDLM" export-gguf --model "$Q4" --type f32 --out "$F32" --threads "$THREADS"

# llama-finetune's text: the first rows of the file ("prompt\ncompletion\n" each) until one epoch holds STEPS
# windows, i.e. 256·STEPS + 513 tokens, plus a quarter window of margin. The rows' tokens are counted by
# `condlm inspect` (the same GGUF vocabulary), each row as one prompt; a few rounds of adjusting the row count land
# on the target.
TEXT=$WORK/e2e_rows.txt
first_rows() { # N OUT JSONL|TEXT: the first N rows as inspect rows or as llama-finetune's text
    python3 - "$DATA" "$1" "$2" "$3" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][: int(sys.argv[2])]
texts = [r["prompt"] + "\n" + r["completion"] + "\n" for r in rows]
with open(sys.argv[3], "w") as out:
    out.write("".join(json.dumps({"prompt": t, "completion": "."}) + "\n" for t in texts)
              if sys.argv[4] == "JSONL" else "".join(texts))
EOF
}
want=$((CTX / 2 * STEPS + CTX + 1 + CTX / 4))
nrows=$((want / 50 + 1))
for _ in 1 2 3 4; do
    first_rows "$nrows" "$WORK/plain_rows.jsonl" JSONL
    have=$("$CONDLM" inspect --model "$F32" --data "$WORK/plain_rows.jsonl" --rows 0 2>&1 |
        sed -n 's/.*x tokens[^:]*: \([0-9]*\) total.*/\1/p')
    [ "$have" -lt "$want" ] || [ "$have" -ge $((want + CTX / 8)) ] || break
    nrows=$((nrows + (want - have) / 55 + 1))
done
first_rows "$nrows" "$TEXT" TEXT

rss_gb() { awk -F': ' '/Maximum resident set size/ {printf "%.2f", $2 / 1048576}' "$1"; }
wall_s() { awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, a, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + a[i]; print s}' "$1"; }
sys_s() { awk -F': ' '/System time/ {print $2}' "$1"; }
cpu_s() { awk -F': ' '/(User|System) time/ {s += $2} END {print s}' "$1"; }
# tokens per CPU-second of the whole process (user + system): less moved by other jobs on a shared machine than
# wall time, since it does not count the time the process waited for a core.
per_cpu_s() { python3 -c "print(f'{$1 / $(cpu_s "$2"):.1f}')"; }

ROWS=()
run_condlm() {
    local out=$WORK/condlm-out log=$WORK/condlm.$1.log
    rm -rf "$out"
    /usr/bin/time -v "$CONDLM" train --full --model "$F32" --data "$DATA" --batch-size 8 --max-len 128 \
        --max-steps "$STEPS" --threads "$THREADS" --output-dir "$out" >"$log" 2>&1
    read -r tokens tps losses < <(python3 - "$out/metrics.jsonl" <<'EOF'
import json, sys
m = [json.loads(l) for l in open(sys.argv[1]) if '"step"' in l]
tok, secs = sum(r["tokens"] for r in m), sum(r["step_s"] for r in m)
print(tok, f"{tok / secs:.1f}", f"{m[0]['loss']:.3f}→{m[-1]['loss']:.3f}")
EOF
)
    local wall; wall=$(wall_s "$log")
    ROWS+=("| condlm train --full | $STEPS | $tokens | $tps | $(python3 -c "print(f'{$tokens / $wall:.1f}')") | $(per_cpu_s "$tokens" "$log") | $wall | $(sys_s "$log") | $(rss_gb "$log") | $losses |")
}
run_llama() {
    local log=$WORK/llama.$1.log
    rm -f "$WORK/llama-finetuned.gguf"
    /usr/bin/time -v "$FINETUNE" -m "$F32" -f "$TEXT" -c $CTX -b $CTX -ub $CTX -t $THREADS -tb $THREADS \
        --override-kv llama.context_length=int:$CTX -lr 2e-4 -wd 0 -val-split 0 -epochs 1 \
        -o "$WORK/llama-finetuned.gguf" >"$log" 2>&1 || { tail -n 20 "$log" >&2; ROWS+=("| llama-finetune | failed: see $log | | | | | | | | |"); return; }
    # The progress bar redraws with \r; the last "train:" record has the ubatch count and the elapsed time.
    read -r steps tps losses < <(python3 - "$log" "$CTX" <<'EOF'
import re, sys
recs = re.findall(r"train: \[[^\]]*\] data=(\d+)/(\d+) loss=([\d.]+)\S* acc=\S+ t=(\d+):(\d+):(\d+)",
                  open(sys.argv[1], encoding="utf-8", errors="replace").read())
first, last = recs[0], recs[-1]
ub, secs = int(last[0]), int(last[3]) * 3600 + int(last[4]) * 60 + int(last[5])
print(ub, f"{ub * int(sys.argv[2]) / secs:.1f}", f"{float(first[2]):.3f}→{float(last[2]):.3f}")
EOF
)
    local tokens=$((steps * CTX)) wall; wall=$(wall_s "$log")
    ROWS+=("| llama-finetune | $steps | $tokens | $tps | $(python3 -c "print(f'{$tokens / $wall:.1f}')") | $(per_cpu_s "$tokens" "$log") | $wall | $(sys_s "$log") | $(rss_gb "$log") | $losses |")
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
    run_llama "$r"
    run_condlm "$r"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "CPU: $(lscpu | awk -F': +' '/Model name/ {print $2}'), $(nproc) logical CPUs; threads $THREADS"
echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2 | tr ' ' '\n' | grep -E '^(avx|fma|f16c|amx)' | tr '\n' ' ')"
echo "condlm: $("$CONDLM" --version); llama.cpp: $LLAMA_BIN (llama-cpp-python 0.3.36 sdist)"
echo
echo "| engine | steps | tokens | tokens/s (in steps) | tokens/s (wall) | tokens per CPU-s | wall (s) | system (s) | peak RSS (GiB) | loss first→last |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
