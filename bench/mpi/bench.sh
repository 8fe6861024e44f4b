#!/usr/bin/env bash
# Data-parallel training on SmolLM2-135M (E2E rows): 1 process × 1 thread vs 2 MPI ranks × 1 thread, LoRA and full
# fine-tuning (gradient sums after the backward pass, the default, and --overlap-grad-sum), and full
# fine-tuning with --zero1; tokens/s, per-step communication time and peak RSS per rank.
#   cargo build --release --features mpi && bash bench/mpi/bench.sh [steps] > bench/mpi/results.md
# Needs Open MPI (mpirun) and the GGUF below; scratch goes to /tmp/mpi-bench (deleted at the end).
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${1:-8}
MODEL=${MODEL:-$HOME/.cache/condlm/models/SmolLM2-135M-Instruct.Q4_1.gguf}
DATA=${DATA:-/work/shared/data/e2e_nlg.jsonl}
BIN=${BIN:-$PWD/target/release/condlm}
TMP=/tmp/mpi-bench
rm -rf "$TMP" && mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT

# One run: LABEL RANKS FLAGS… ; prints a table row. Peak RSS per rank from GNU time (%M, KiB).
run() {
    local label=$1 ranks=$2
    shift 2
    local out=$TMP/$label launch=()
    if [ "$ranks" -gt 1 ]; then
        launch=(mpirun --oversubscribe --allow-run-as-root --bind-to none --mca mpi_yield_when_idle 1 -np "$ranks")
    fi
    # shellcheck disable=SC2016 # expanded by each rank's shell
    "${launch[@]}" bash -c '/usr/bin/time -f "rss_kib %M" -o "$0.${OMPI_COMM_WORLD_RANK:-0}" "$@"' "$TMP/$label.rss" \
        "$BIN" --threads 1 train \
        --model "$MODEL" --data "$DATA" --output-dir "$out" --max-steps "$STEPS" --batch-size 8 --max-len 128 \
        --lora-dropout 0 --save-every 0 --no-memory-check "$@" 2>"$TMP/$label.log" ||
        { cat "$TMP/$label.log" >&2; exit 1; }
    python3 - "$out/metrics.jsonl" "$label" "$ranks" "$TMP"/"$label".rss.* <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
steps = [r for r in rows if "loss" in r][1:]  # the first step grows the buffers
tok = sum(r["tokens"] for r in steps) / sum(r["step_s"] for r in steps)
comm = sum(r.get("comm_s", 0) for r in steps) / len(steps)
wait = sum(r.get("wait_s", 0) for r in steps) / len(steps)
step = sum(r["step_s"] for r in steps) / len(steps)
rss = [int(open(f).read().split()[-1]) / 2**20 for f in sorted(sys.argv[4:])]
last = [r for r in rows if "loss" in r][-1]["loss"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {tok:.0f} | {step:.2f} | {comm * 1000:.0f} | {wait * 1000:.0f} | {last:.6f} | "
      + ", ".join(f"{g:.2f}" for g in rss) + " |")
EOF
}

echo "# Data-parallel training: 1 process vs 2 MPI ranks (SmolLM2-135M Q4_1, E2E rows)"
echo
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; flags:" \
    "$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512bw|avx512_bf16)$' | xargs)"
echo "Load average before: $(cut -d' ' -f1-3 /proc/loadavg). $(mpirun --version | head -1)."
echo "Command: \`bash bench/mpi/bench.sh $STEPS\` ($STEPS steps of 8 rows, --max-len 128, 1 thread per process;"
echo "tokens/s and step time over steps 2..$STEPS, rank 0's view; comm = time in the gradient sums (packing, MPI"
echo "calls, waiting, unpacking) + ZeRO-1 broadcasts per step, outside the computation; wait = time rank 0 waited at a"
echo "barrier for the other rank to finish its micro-batches — only without overlap: overlapped, that wait is in comm)."
echo
echo "| run | processes | tokens/s | s/step | comm ms/step | wait ms/step | last loss | peak RSS GiB per rank |"
echo "|---|---|---|---|---|---|---|---|"
run lora-1 1
run lora-2 2
run lora-2-overlap 2 --overlap-grad-sum
run full-1 1 --full --lr 1e-5
run full-2 2 --full --lr 1e-5
run full-2-overlap 2 --full --lr 1e-5 --overlap-grad-sum
run full-2-zero1 2 --full --lr 1e-5 --zero1
echo
echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)."
