#!/usr/bin/env bash
# 50 LoRA steps on SmolLM2-135M (E2E rows) with --compute f32 and --compute bf16, one after the other on the same
# machine; per-step losses from each run's metrics.jsonl. Usage: bash bench/bf16_compute.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-/tmp/bf16_bench}
BIN=${BIN:-target/release/condlm}
MODEL=${MODEL:-$HOME/.cache/condlm/models/SmolLM2-135M-Instruct.Q4_1.gguf}
DATA=${DATA:-/work/shared/data/e2e_nlg.jsonl}
mkdir -p "$OUT"
for c in f32 bf16; do
  "$BIN" train --model "$MODEL" --data "$DATA" --eval-fraction 0.05 --lora-r 16 --lora-targets all-linear \
    --batch-size 8 --max-len 128 --max-steps 50 --lr 2e-4 --seed 7 --save-every 0 --threads 2 \
    --compute $c --output-dir "$OUT/$c" --overwrite 2> "$OUT/$c.log"
done
