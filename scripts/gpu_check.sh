#!/usr/bin/env bash
# The GPU checks of issue 15 as one script, for a machine with an NVIDIA GPU, a CUDA driver and toolkit, but no
# Rust and no network: it runs a condlm built elsewhere with `--features cuda` and writes one report file.
#
# What the next session with a GPU runs (the device tool; about 1–2 minutes of its 15):
#   1. here, in the repo root (no GPU or CUDA toolkit needed):
#        cargo build --release --features cuda && mkdir -p target/gpu && cp target/release/condlm target/gpu/ \
#          && strip target/gpu/condlm          # ≈ 16 MB; the device tool carries at most 64 MiB
#   2. the device tool's run, carrying the binary:
#        run(command="scripts/gpu_check.sh target/gpu/condlm $OUT/gpu_check.md", carry=["target/gpu"],
#            timeout_s=480)
#   3. here: copy the returned gpu_check.md to scripts/gpu_check.md, commit it, and give the machine back
#      (give_back) unless another run follows at once.
#
# Checks so far (each a section of the report):
#   - nvidia-smi, and where libnvrtc and libcublas were found (the toolkit's, else the ones PyTorch's wheels bring);
#   - `condlm info --devices --check-kernels`: the GPUs as the driver reports them, then every CUDA kernel source
#     (src/kernels/cuda/cu/) compiled with the machine's NVRTC for the GPU's architecture, loaded into a context, its
#     kernels looked up, and each kernel run against the CPU kernel it mirrors on small random inputs ("parity"
#     lines: max |GPU − CPU| / max |CPU| against a tolerance): cuBLAS's x·Wᵀ GEMM in f32 (no TF32) and with bf16
#     operands at 37×100·(33×100)ᵀ, 64×576·(1536×576)ᵀ and 163×1536·(8960×1536)ᵀ vs `matmul` / `gemm_bf16`; causal
#     GQA attention forward and backward (packed rows, a sliding window, a model scale) vs `kernels::attention`;
#     RMSNorm, RoPE, SwiGLU/GeGLU, the cross-entropy rows and AdamW. Then "peak" lines: cuBLAS's measured
#     TFLOP/s at 4096×4096×4096 in f32 and bf16 (the peak issue 15's model FLOP utilisation is reported against),
#     and "speed" lines: attention forward and backward over 16 × 300 rows at SmolLM2-135M's, Qwen2.5-1.5B's and
#     Gemma 3 270M's heads, f32 kernels vs bf16 on the tensor cores (ms, TFLOP/s).
#     The script fails if any of that fails.
#   - `condlm info MODEL --check-device cuda` on the tiny fixtures of every family: issue 15's acceptance on whole
#     models — logits vs the CPU path (f32 1e-5, bf16 2e-2), KV decoding vs the full forward pass, greedy ids, and
#     one step's LoRA and full gradients (1e-4);
#   - `score --device cuda` vs `--device cpu` on the tiny fixtures of every family (per-token log-probs, relative
#     error ≤ 1e-5; `--compute bf16` on the device ≤ 2e-2 of the CPU's f32), a 6-step LoRA run with dropout on tiny Llama (losses, eval NLLs ≤ 1e-4, adapter),
#     6 steps of full fine-tuning on tiny Qwen2, and both on tiny Qwen3.5 (Gated DeltaNet, gated attention);
#   - `score --device cuda` on quantized GGUF exports of tiny Llama (the base kept in its blocks on the GPU) vs the CPU,
#     and greedy `generate` on a Q4_0 tiny Qwen2 (2, 12 and 40 rows a step: read from the blocks, decoded in graphs);
#   - `generate --device cuda` vs `--device cpu` (greedy and 3 beams) on the tiny fixtures: identical generations;
#   - the SmolLM2-135M shape (random weights, made here with transformers, the tiny tokenizer): 20 LoRA steps (all
#     linear layers, r 16, dropout 0.05) on cuda vs the CPU path, per-step losses within 1e-4 relative (f32) and
#     1e-2 (`--compute bf16` on both; the device's attention on the tensor cores and its MLP's activations in bf16,
#     and both in f32 as the CPU's);
#   - throughput on the SmolLM2-135M shape: `condlm train --device cuda` LoRA (f32, bf16, and bf16 with attention or
#     the MLP's activations in f32 — what the tensor-core attention and the bf16 activations gain) vs PyTorch + PEFT
#     (f32 without TF32, bf16), and full fine-tuning in bf16 vs PyTorch under bf16 autocast, on the same rows and
#     batch size (condlm shuffles them, PyTorch takes them in order; PyTorch pads each batch to its longest row, condlm
#     packs rows): tokens/s of real tokens, peak GPU memory, model FLOP utilisation (the weight products' FLOPs per
#     token times tokens/s, against the peaks --check-kernels measured) and, for condlm, the share of its steps' time
#     the host waited for the GPU (metrics.jsonl's device_wait_s: near 0, its launches bound the steps; a lower bound
#     of the GPU's share, as a launch blocks uncounted once the GPU's queue is full);
#   - decode tokens/s of `generate --device cuda` (with and without CUDA graphs) vs transformers' `generate` (f32,
#     bf16) on the SmolLM2-135M shape, and prefill tokens/s of a ≈ 1 000-token prompt;
#   - then, while the budget allows (each skipped section says so): LoRA and full throughput in bf16 on a
#     Qwen2.5-1.5B-shaped model (saved in bf16; an acceptance row, so it runs before the next one, which is not),
#     LoRA on the SmolLM2-135M shape exported as Q4_K (the base kept in its blocks) and decoding from it, LoRA and
#     full throughput on a Qwen3.5-0.8B-shaped model (Gated DeltaNet layers); where a
#     training step's GPU time goes, op by op (CONDLM_CUDA_PROFILE=1: an event after every op), for LoRA and full
#     fine-tuning in bf16 on the 1.5B shape (the
#     135M one when the 1.5B was skipped); compute-sanitizer (memcheck, racecheck; skipped where it does not support
#     the runtime, as on gVisor) over 2 LoRA steps (bf16, f32) and a generation on tiny Llama.
# The report opens with a summary (gpu_check.py summary): each section's exit status, then issue 15's acceptance
# criteria read off the sections — measured, target, verdict; the ratios to PyTorch's tokens/s, peak memory and
# model FLOP utilisation side by side. scripts/cuda/gpu_check.py does the comparisons and PEFT's side. The whole script must stay under 8 minutes: one
# budget (GPU_CHECK_BUDGET, 450 s) gates the later sections; a run stopped at the device tool's timeout still returns
# what it wrote ($OUT/gpu_check.md.tmp).
#
# A dry run of the script's logic on a machine without a GPU: GPU_CHECK_DEVICE=reference (condlm's device path on
# the CPU kernels) GPU_CHECK_TORCH_DEVICE=cpu GPU_CHECK_STEPS=2 scripts/gpu_check.sh target/release/condlm /tmp/r.md
# (the kernel section then fails, as there is no GPU; the rest must pass). With the CUDA emulator instead
# (tests/cuda_emulator/; `cargo test --release --features cuda --test cuda_emulated -- --ignored --nocapture
# emulator_folder` prints its folder), the `cuda` paths run on the CPU: LD_LIBRARY_PATH=FOLDER
# CONDLM_GEMM_PEAK_SIZE=64 CONDLM_ATTENTION_SPEED_ROWS=8 GPU_CHECK_TORCH_DEVICE=cpu GPU_CHECK_STEPS=2 scripts/gpu_check.sh target/release/condlm
# /tmp/r.md (the sections up to the tiny generations pass; the 135M-shaped ones are too slow for it).
#
# Usage: scripts/gpu_check.sh [BINARY [REPORT]]   (defaults: target/gpu/condlm, $OUT/gpu_check.md when $OUT is
# set, else scripts/gpu_check.md)
# GPU_CHECK_SECTIONS="KEY ...": only these sections (a rerun after a fix need not spend the device's minutes on what
# passed): devices (nvidia-smi, --check-kernels and the GEMM peaks), model, score, quantized, train, generate,
# smollm2-parity, smollm2-throughput, smollm2-decode, qwen2.5-1.5b, smollm2-q4k, qwen3.5-0.8b, profile, sanitize.
# Unset: all of them.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/gpu/condlm}
report=${2:-${OUT:+$OUT/gpu_check.md}}
report=${report:-scripts/gpu_check.md}
[ -x "$bin" ] || { echo "gpu_check: $bin is not an executable condlm (build it as step 1 above)" >&2; exit 2; }
status=0
script_start=$(date +%s)
# One budget for the whole script (the device tool's run gets 480 s): a section that may not fit in what is left is
# skipped, and the report says so. The sections that decide issue 15's acceptance run first.
deadline=$((script_start + ${GPU_CHECK_BUDGET:-450}))
left() { echo $((deadline - $(date +%s))); }
# skipped TITLE: the report's section for a check there was no time for.
skipped() { printf '\n## %s\n\nskipped: %d s left of the budget (the script keeps under 8 minutes)\n' "$1" "$(left)" >>"$report.tmp"; }
# The compiled kernels' cache (kernels/cuda/ptx_cache.rs), in a folder of this run's own, set or not HOME: the first
# condlm compiles (seconds for the tensor-core attention), the ~50 after it load the PTX.
export CONDLM_CUDA_CACHE=${CONDLM_CUDA_CACHE:-$(mktemp -d)}
dev=${GPU_CHECK_DEVICE:-cuda}
steps=${GPU_CHECK_STEPS:-}

# NVRTC, cuBLAS and NCCL: condlm dlopens libnvrtc.so.*, libcublas.so.* and libnccl.so.*; for each the loader does
# not find, put the first folder holding one on LD_LIBRARY_PATH — the toolkit's first (it matches the driver: 13.0 on
# the H200 image, KINDS.md), then the ones PyTorch's wheels bring. An NVRTC newer than the driver makes PTX the
# driver refuses (info prints a warning).
# find_lib NAME: sets lib_dir to the folder added, empty when the loader finds NAME already (or nothing does).
find_lib() {
    lib_dir=""
    ldconfig -p 2>/dev/null | grep -q "$1\.so" && return 0
    local d found=""
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64 \
        /usr/lib/x86_64-linux-gnu /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib \
        /usr/local/lib/python3*/dist-packages/nvidia/*/lib /usr/local/lib/python3*/site-packages/nvidia/*/lib; do
        if compgen -G "$d/$1.so*" >/dev/null; then
            found=$d
            break
        fi
    done
    if [ -z "$found" ]; then
        found=$(dirname "$(timeout 60 find / -xdev -name "$1.so*" -print -quit 2>/dev/null)" 2>/dev/null || true)
        [ "$found" = . ] && found=""
    fi
    # One folder often holds both (a wheel's nvidia/cu13/lib): add it once.
    case ":${LD_LIBRARY_PATH:-}:" in
    *":$found:"*) ;;
    *) [ -n "$found" ] && export LD_LIBRARY_PATH="$found${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
    lib_dir=$found
}
find_lib libnvrtc
nvrtc_dir=$lib_dir
find_lib libcublas
cublas_dir=$lib_dir
# NCCL (data-parallel sums; checked on a one-rank communicator by --check-kernels): PyTorch's nvidia/nccl wheel.
find_lib libnccl
nccl_dir=$lib_dir

# The driver library: the image mounts the driver under /usr/local/nvidia; use it if the loader does not know it.
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so'; then
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu; do
        if compgen -G "$d/libcuda.so*" >/dev/null; then
            export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
            break
        fi
    done
fi

section() { printf '\n## %s\n\n```\n' "$1" >>"$report.tmp"; }
# want KEY: whether GPU_CHECK_SECTIONS selects section KEY (unset: every section).
want() { [ -z "${GPU_CHECK_SECTIONS:-}" ] || [[ " $GPU_CHECK_SECTIONS " == *" $1 "* ]]; }
# only KEY CMD...: CMD when section KEY is wanted, else a line in the report that it was not selected.
only() {
    local key=$1
    shift
    if want "$key"; then
        "$@"
    else
        printf '\n## %s\n\nnot selected (GPU_CHECK_SECTIONS=%s)\n' "$key" "$GPU_CHECK_SECTIONS" >>"$report.tmp"
    fi
}
end_section() { printf '```\n' >>"$report.tmp"; }

{
    echo "# GPU check (issue 15)"
    echo
    echo "\`scripts/gpu_check.sh\` on $(hostname) at $(date -u '+%Y-%m-%d %H:%M UTC'); binary: $("$bin" --version 2>&1)."
    echo "libnvrtc: ${nvrtc_dir:-found by the loader (ldconfig)}; libcublas: ${cublas_dir:-found by the loader (ldconfig)};"
    echo "libnccl: ${nccl_dir:-found by the loader (ldconfig), or missing};"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}."
} >"$report.tmp"

devices() {
    section "nvidia-smi"
    { timeout 30 nvidia-smi 2>&1 || echo "nvidia-smi failed or is missing"; } >>"$report.tmp"
    end_section

    section "condlm info --devices --check-kernels"
    start=$(date +%s%N)
    timeout 120 "$bin" info --devices --check-kernels >>"$report.tmp" 2>&1
    rc=$?
    end_section
    printf '\nexit status %s in %d ms\n' "$rc" $((($(date +%s%N) - start) / 1000000)) >>"$report.tmp"
    [ "$rc" = 0 ] || status=1
    # The measured GEMM peaks (TFLOP/s, bf16 then f32) that model FLOP utilisation is reported against.
    peak_of() { grep -E "^peak .* $1" "$report.tmp" | grep -oE '[0-9.]+ TFLOP/s' | head -1 | cut -d' ' -f1; }
    export GPU_CHECK_PEAKS="bf16=$(peak_of 'bf16 operands') f32=$(peak_of 'f32 \(no TF32\)')"
    # A tensor-core attention kernel that fails its parity (or its run) on this GPU would spoil every bf16 number
    # after it: the rest of the script then runs attention in f32 (CONDLM_CUDA_MMA_ATTENTION=0), and says so, so
    # that one run still measures everything else.
    if grep -E '(parity|speed|backend) .*attention.*FAILED' "$report.tmp" | grep -qE 'tensor cores|bf16|FAILED to run'; then
        export CONDLM_CUDA_MMA_ATTENTION=0
        printf '\nWARNING: an attention check above failed: the sections below run with %s (f32 attention).\n' \
            CONDLM_CUDA_MMA_ATTENTION=0 >>"$report.tmp"
    fi
    if grep -q '^cuda          unavailable' "$report.tmp"; then
        printf '\nFAILED: condlm sees no usable GPU here (the cuda line above says why).\n' >>"$report.tmp"
        status=1
    fi
}
only devices devices

# The device path against the CPU path; PyTorch + PEFT beside it. Needs python3 with torch, transformers, peft.
py=python3
for p in /opt/torch/.venv/bin/python python3; do
    if "$p" -c 'import torch, transformers, peft, safetensors' 2>/dev/null; then
        py=$p
        break
    fi
done
work=$(mktemp -d)
helper=scripts/cuda/gpu_check.py
# run_check TITLE CMD...: a section holding CMD's output; a failure fails the script.
run_check() {
    local title=$1 rc t0
    shift
    section "$title"
    t0=$(date +%s)
    "$@" >>"$report.tmp" 2>&1
    rc=$?
    end_section
    printf '\nexit status %s in %d s\n' "$rc" $(($(date +%s) - t0)) >>"$report.tmp"
    [ "$rc" = 0 ] || status=1
}
# gated MIN TITLE CMD...: run_check TITLE CMD... when MIN seconds of the budget are left, else the skipped section.
gated() {
    local min=$1
    shift
    if [ "$(left)" -ge "$min" ]; then run_check "$@"; else skipped "$1"; fi
}
# peak_gpu_mib CMD...: runs CMD while sampling the GPU's used memory; prints the peak above the idle level.
peak_gpu_mib() {
    local base peak=0 v pid
    base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | head -1)
    [[ "$base" =~ ^[0-9]+$ ]] || base=0
    "$@" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        v=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | head -1)
        [[ "$v" =~ ^[0-9]+$ ]] && [ "$v" -gt "$peak" ] && peak=$v
        sleep 0.2
    done
    wait "$pid"
    local rc=$?
    echo "peak GPU memory above idle: $((peak - ${base:-0})) MiB (nvidia-smi, sampled every 0.2 s)"
    return $rc
}

# Issue 15's acceptance on whole models (`condlm info MODEL --check-device`, cli/check_device.rs): logits vs the CPU
# path (f32 within 1e-5, max |Δ|/max |cpu|; --compute bf16 within 2e-2, ‖Δ‖/‖cpu‖, against the CPU's f32), KV-cache
# decoding vs the device's full forward pass (1e-5), greedy ids (equal), and one step's LoRA (dropout 0.1) and full
# fine-tuning gradients vs the CPU path's in f32 (worst tensor within 1e-4).
tiny_models() {
    local m rc=0
    for m in tiny-llama tiny-qwen2 tiny-mistral tiny-qwen3 tiny-gemma3 tiny-phi3 tiny-phi4 tiny-gpt2 tiny-qwen3-yarn \
        tiny-olmo3 tiny-qwen35; do
        echo "$m:"
        "$bin" info "tests/fixtures/$m" --check-device "$dev" | grep -E '^model [a-z]' || rc=1
    done
    return $rc
}
only model run_check "info MODEL --check-device cuda: logits (f32, bf16), KV decoding vs full forward, greedy ids, LoRA and \
full gradients vs the CPU path; tiny Llama, Qwen2, Mistral, Qwen3, Gemma 3, Phi-3, Phi-4, GPT-2, Qwen3 with YaRN, OLMo 3, \
Qwen3.5" \
    tiny_models

# Per-token log-probs on the device against the CPU's f32: within 1e-5 in f32, within 2e-2 under --compute bf16
# (issue 15's tolerances).
tiny_scores() {
    local m rc=0
    for m in tiny-llama tiny-qwen2 tiny-mistral tiny-qwen3 tiny-gemma3 tiny-phi3 tiny-phi4 tiny-gpt2 tiny-qwen3-yarn \
        tiny-olmo3 tiny-qwen35; do
        for run in "cpu f32" "$dev f32" "$dev bf16"; do
            set -- $run
            "$bin" score --model "tests/fixtures/$m" --data tests/fixtures/score_rows.jsonl --per-token \
                --device "$1" --compute "$2" --out "$work/$m-$1-$2.jsonl" || return 1
        done
        echo "$m:"
        "$py" "$helper" compare-scores "$work/$m-$dev-f32.jsonl" "$work/$m-cpu-f32.jsonl" 1e-5 || rc=1
        echo "$m, --compute bf16 on the device vs f32 on the CPU:"
        "$py" "$helper" compare-scores "$work/$m-$dev-bf16.jsonl" "$work/$m-cpu-f32.jsonl" 2e-2 || rc=1
    done
    return $rc
}
only score run_check "score --device cuda vs cpu (f32; bf16): tiny Llama, Qwen2, Mistral, Qwen3, Gemma 3, Phi-3, Phi-4, GPT-2, Qwen3 \
with YaRN, OLMo 3, Qwen3.5" \
    tiny_scores

# A quantized base kept in its blocks on the device (dequant.cu): Q4_0, Q5_K (whose 64-wide rows fall back to Q5_1,
# llama.cpp's rule) and Q8_0 exports of tiny Llama, scores on the device vs the CPU on the same file; then greedy
# generations from a Q4_0 tiny Qwen2 (its own LM head Q4_0 too) vs the CPU's: 2 and 12 rows a step (packed_gemv reads
# the blocks) and 40 (each matrix decoded into scratch inside the steps' CUDA graphs, the LM head after them).
tiny_quantized() {
    local ty rc=0
    for ty in q4_0 q5_k q8_0; do
        "$bin" export-gguf --model tests/fixtures/tiny-llama --out "$work/tiny-$ty.gguf" --type "$ty" >/dev/null || return 1
        for d in cpu "$dev"; do
            "$bin" score --model "$work/tiny-$ty.gguf" --data tests/fixtures/score_rows.jsonl --per-token --device "$d" \
                --out "$work/q-$ty-$d.jsonl" || return 1
        done
        echo "tiny Llama, $ty:"
        "$py" "$helper" compare-scores "$work/q-$ty-$dev.jsonl" "$work/q-$ty-cpu.jsonl" 1e-5 || rc=1
    done
    local q=$work/tiny-qwen2-q4_0.gguf b
    "$bin" export-gguf --model tests/fixtures/tiny-qwen2 --out "$q" --type q4_0 >/dev/null || return 1
    for b in 2 12 40; do
        for d in cpu "$dev"; do
            "$bin" generate --model "$q" --data tests/fixtures/train_rows.jsonl --max-new-tokens 8 --ignore-eos \
                --batch "$b" --device "$d" --out "$work/gq-$b-$d.jsonl" 2>/dev/null || return 1
        done
        echo "tiny Qwen2 Q4_0, generate --batch $b:"
        "$py" "$helper" compare-generations "$work/gq-$b-$dev.jsonl" "$work/gq-$b-cpu.jsonl" || rc=1
    done
    return $rc
}
only quantized run_check "score (Q4_0, Q5_1, Q8_0) and generate (Q4_0) --device cuda vs cpu on quantized GGUF bases kept in their \
blocks" tiny_quantized

# train_run DIR DEVICE MODEL DATA STEPS BATCH EXTRA...: a LoRA run on every linear layer.
train_run() {
    local dir=$1 dev=$2 model=$3 data=$4 steps=$5 batch=$6
    shift 6
    "$bin" train --model "$model" --data "$data" --output-dir "$dir" --max-steps "$steps" --batch-size "$batch" \
        --lora-r 16 --lora-targets all-linear --lora-dropout 0.05 --save-every 0 --device "$dev" "$@" 2>&1 | tail -2
}
tiny_train() {
    for d in cpu "$dev"; do
        train_run "$work/tiny-$d" "$d" tests/fixtures/tiny-llama tests/fixtures/train_rows.jsonl 6 4 \
            --eval-fraction 0.2 --eval-every 2 || return 1
    done
    "$py" "$helper" compare-runs "$work/tiny-$dev" "$work/tiny-cpu" 1e-4 || return 1
    for d in cpu "$dev"; do
        "$bin" train --model tests/fixtures/tiny-qwen2 --data tests/fixtures/train_rows.jsonl --output-dir \
            "$work/full-$d" --full --max-steps 6 --batch-size 4 --lr 1e-3 --eval-fraction 0.2 --eval-every 2 \
            --save-every 0 --device "$d" 2>&1 | tail -1 || return 1
    done
    echo "full fine-tuning, tiny Qwen2:"
    "$py" "$helper" compare-runs "$work/full-$dev" "$work/full-cpu" 1e-4 || return 1
    # Qwen3.5: the Gated DeltaNet's kernels (convolution, recurrence, gated norm) and the attention output gate
    for d in cpu "$dev"; do
        train_run "$work/q35-$d" "$d" tests/fixtures/tiny-qwen35 tests/fixtures/train_rows.jsonl 6 4 \
            --eval-fraction 0.2 --eval-every 2 || return 1
        "$bin" train --model tests/fixtures/tiny-qwen35 --data tests/fixtures/train_rows.jsonl --output-dir \
            "$work/q35-full-$d" --full --max-steps 6 --batch-size 4 --lr 1e-3 --eval-fraction 0.2 --eval-every 2 \
            --save-every 0 --device "$d" 2>&1 | tail -1 || return 1
    done
    echo "tiny Qwen3.5, LoRA:"
    "$py" "$helper" compare-runs "$work/q35-$dev" "$work/q35-cpu" 1e-4 || return 1
    echo "tiny Qwen3.5, full fine-tuning:"
    "$py" "$helper" compare-runs "$work/q35-full-$dev" "$work/q35-full-cpu" 1e-4
}
only train run_check "train --device cuda vs cpu: tiny Llama, 6 LoRA steps with dropout; tiny Qwen2, 6 full steps; tiny Qwen3.5, both" \
    tiny_train

tiny_generate() {
    local m rc=0
    for m in tiny-llama tiny-qwen2 tiny-mistral tiny-gemma3 tiny-phi3 tiny-gpt2 tiny-olmo3 tiny-qwen35; do
        for d in cpu "$dev"; do
            for beams in 1 3; do
                "$bin" generate --model "tests/fixtures/$m" --data tests/fixtures/score_rows.jsonl --max-new-tokens 24 \
                    --num-beams "$beams" --batch 2 --device "$d" --out "$work/gen-$m-$d-$beams.jsonl" 2>&1 | tail -1 ||
                    return 1
            done
        done
        for beams in 1 3; do
            echo "$m, $beams beam(s):"
            "$py" "$helper" compare-generations "$work/gen-$m-$dev-$beams.jsonl" "$work/gen-$m-cpu-$beams.jsonl" || rc=1
        done
    done
    return $rc
}
only generate run_check "generate --device cuda vs cpu: greedy and beam search (3 beams), tiny Llama, Qwen2, Mistral, Gemma 3, Phi-3, GPT-2, \
OLMo 3, Qwen3.5" \
    tiny_generate

# smollm2_model: the SmolLM2-135M-shaped model (random weights, the tiny tokenizer), made once.
smollm2_model() {
    [ -f "$work/smollm2-135m/config.json" ] ||
        "$py" "$helper" make-model "$work/smollm2-135m" smollm2-135m tests/fixtures/tiny-llama
}
# throughput MODEL STEPS BATCH COMPUTE...: on rows four completions long, batches of BATCH rows on both sides: LoRA (r 16
# on every linear layer), condlm on the device for each COMPUTE (f32, bf16; bf16-f32-attention: bf16 with attention
# in f32, what the tensor cores' attention gains; bf16-f32-mlp: bf16 with the MLP's activations in f32, what keeping
# them in bf16 gains) and PyTorch + PEFT for each of f32 and bf16 listed; then full fine-tuning in bf16, condlm
# `--full` vs PyTorch with f32 master weights under bf16 autocast. Peak GPU memory both ways for PyTorch: nvidia-smi's,
# as condlm's is measured (its CUDA context and cached blocks included), and its allocator's own peak.
throughput() {
    local model=$1 steps=$2 batch=$3 c dir mma acts
    shift 3
    [ -f "$work/rows4.jsonl" ] || "$py" "$helper" make-data "$work/rows4.jsonl" 512 4 tests/fixtures/train_rows.jsonl
    for c in "$@"; do
        dir="$work/t-$(basename "$model")-$c" mma=${CONDLM_CUDA_MMA_ATTENTION:-1} acts=1
        [ "$c" = bf16-f32-attention ] && mma=0
        [ "$c" = bf16-f32-mlp ] && acts=0
        CONDLM_CUDA_MMA_ATTENTION=$mma CONDLM_CUDA_BF16_ACTIVATIONS=$acts peak_gpu_mib train_run "$dir" "$dev" \
            "$model" "$work/rows4.jsonl" "$steps" "$batch" --eval-fraction 0 --compute "${c%%-*}" || return 1
        echo "LoRA, compute $c:"
        "$py" "$helper" throughput "$dir" "$model" || return 1
    done
    for c in "$@"; do
        [ "$c" = "${c%%-*}" ] || continue
        peak_gpu_mib "$py" "$helper" peft "$model" "$work/rows4.jsonl" "$steps" "$batch" 16 "$c" || return 1
    done
    dir="$work/t-$(basename "$model")-full"
    peak_gpu_mib full_run "$dir" "$model" "$steps" "$batch" || return 1
    echo "full fine-tuning, compute bf16:"
    "$py" "$helper" throughput "$dir" "$model" full || return 1
    peak_gpu_mib "$py" "$helper" peft "$model" "$work/rows4.jsonl" "$steps" "$batch" 0 bf16 full
}
# full_run DIR MODEL STEPS BATCH: condlm full fine-tuning in bf16 on the device (the last lines of its output).
full_run() {
    "$bin" train --model "$2" --data "$work/rows4.jsonl" --output-dir "$1" --full --max-steps "$3" --batch-size "$4" \
        --lr 1e-5 --eval-fraction 0 --save-every 0 --device "$dev" --compute bf16 2>&1 | tail -2
}
smollm2_throughput() { smollm2_model && throughput "$@"; }
smollm2_parity() {
    smollm2_model || return 1
    # The whole-model comparisons at these shapes (cuBLAS's products over 576 and 1 536 features, 30 layers).
    echo "smollm2-135m:"
    "$bin" info "$work/smollm2-135m" --check-device "$dev" | grep -E '^model [a-z]' || return 1
    "$py" "$helper" make-data "$work/rows1.jsonl" 320 1 tests/fixtures/train_rows.jsonl || return 1
    for d in cpu "$dev"; do
        train_run "$work/s-$d" "$d" "$work/smollm2-135m" "$work/rows1.jsonl" "${steps:-20}" 8 --eval-fraction 0 ||
            return 1
    done
    "$py" "$helper" compare-runs "$work/s-$dev" "$work/s-cpu" 1e-4 || return 1
    # bf16 against the CPU's bf16 (the same operand rounding, other summation orders): against f32 the adapters of
    # a few Adam steps differ by more than any fixed tolerance (an element with a tiny gradient moves ±lr either way).
    # The CPU's bf16 attention and activations are f32: so are the device's here (CONDLM_CUDA_MMA_ATTENTION=0,
    # CONDLM_CUDA_BF16_ACTIVATIONS=0).
    train_run "$work/s-cpu-bf16" cpu "$work/smollm2-135m" "$work/rows1.jsonl" "${steps:-20}" 8 --eval-fraction 0 \
        --compute bf16 || return 1
    CONDLM_CUDA_MMA_ATTENTION=0 CONDLM_CUDA_BF16_ACTIVATIONS=0 train_run "$work/s-$dev-bf16" "$dev" \
        "$work/smollm2-135m" "$work/rows1.jsonl" "${steps:-20}" 8 --eval-fraction 0 --compute bf16 || return 1
    echo "bf16 on the device (attention and MLP activations in f32) vs bf16 on the CPU:"
    "$py" "$helper" compare-runs "$work/s-$dev-bf16" "$work/s-cpu-bf16" 1e-2 || return 1
    # The default: attention's products on the tensor cores too (bf16 q, k, v, P, dS) and the MLP's activations
    # kept in bf16: the losses.
    train_run "$work/s-$dev-mma" "$dev" "$work/smollm2-135m" "$work/rows1.jsonl" "${steps:-20}" 8 --eval-fraction 0 \
        --compute bf16 || return 1
    echo "bf16 on the device, attention on the tensor cores and MLP activations in bf16, vs bf16 on the CPU (losses):"
    "$py" "$helper" compare-runs "$work/s-$dev-mma" "$work/s-cpu-bf16" 1e-2 losses
}
only smollm2-parity gated 60 "SmolLM2-135M-shaped model: --check-device; 20 LoRA steps, cuda vs cpu (f32 within 1e-4, bf16 within 1e-2; bf16 with tensor-core attention and bf16 MLP activations: losses within 1e-2)" smollm2_parity


only smollm2-throughput gated 60 "throughput, SmolLM2-135M-shaped: condlm $dev vs PyTorch (+ PEFT): LoRA f32 and bf16, full bf16" smollm2_throughput \
    "$work/smollm2-135m" "${steps:-30}" 16 f32 bf16 bf16-f32-attention bf16-f32-mlp

# decode_speed MODEL NEW: greedy decoding of one prompt, condlm on the device (decoding steps replayed as CUDA
# graphs, then without them) vs transformers' generate. A graph that cannot be recorded shows as condlm's warning.
decode_speed() {
    local prompt="name: Blue Spice, eatType: coffee shop, area: city centre" g
    for g in 1 0; do
        echo "CONDLM_CUDA_GRAPHS=$g:"
        CONDLM_CUDA_GRAPHS=$g "$bin" generate --model "$1" --prompt "$prompt" --max-new-tokens "$2" --ignore-eos \
            --device "$dev" 2>&1 >/dev/null | grep -E '^warning|tokens/s' || return 1
    done
    # bf16: the weight products read the bf16 copies (half the bytes a decoding step streams).
    echo "--compute bf16:"
    "$bin" generate --model "$1" --prompt "$prompt" --max-new-tokens "$2" --ignore-eos --device "$dev" \
        --compute bf16 2>&1 >/dev/null | grep -E '^warning|tokens/s' || return 1
    "$py" "$helper" hf-generate "$1" "$prompt" "$2" f32,bf16 || return 1
    # A long prompt (the one above 40 times, ≈ 1 000 tokens): prefill tokens/s, condlm's attention on the prompt's
    # own rows (the tiled kernel) vs transformers'.
    local long
    long=$(printf "$prompt. %.0s" $(seq 40))
    echo "prompt of ≈ 1 000 tokens (f32, then bf16: the tensor-core attention):"
    for c in f32 bf16; do
        "$bin" generate --model "$1" --prompt "$long" --max-new-tokens 8 --ignore-eos --device "$dev" --compute "$c" \
            2>&1 >/dev/null | grep -E '^warning|tokens/s' || return 1
    done
    "$py" "$helper" hf-generate "$1" "$long" 8 f32,bf16
}
smollm2_decode() { smollm2_model && decode_speed "$@"; }
only smollm2-decode gated 30 "decode, SmolLM2-135M-shaped: condlm $dev (f32, bf16) vs transformers generate" smollm2_decode \
    "$work/smollm2-135m" "${steps:-128}"

# The 1.5B-shaped model (saved in bf16: half the bytes to write and read, five loads) only with room for it.
qwen() {
    "$py" "$helper" make-model "$work/qwen2.5-1.5b" qwen2.5-1.5b tests/fixtures/tiny-llama bf16 || return 1
    throughput "$work/qwen2.5-1.5b" "${steps:-10}" 8 bf16 bf16-f32-mlp
}
only qwen2.5-1.5b gated 150 "throughput, Qwen2.5-1.5B-shaped: condlm $dev vs PyTorch (+ PEFT): LoRA bf16, full bf16" qwen
# The SmolLM2-135M shape exported as Q4_K (down_proj's 1536-wide rows in Q4_K, the 576-wide ones in Q5_0 by
# llama.cpp's fallback), kept in its blocks on the GPU (a training step's products decode the matrix for cuBLAS, a
# decoding step's read the blocks themselves: packed_gemv): LoRA tokens/s and peak GPU memory in bf16 beside the
# dense bf16 run above, and decode tokens/s from the blocks (f32, bf16) and from a dense bf16 upload of the same file.
smollm2_quantized() {
    smollm2_model || return 1
    "$bin" export-gguf --model "$work/smollm2-135m" --out "$work/smollm2-q4_k.gguf" --type q4_k >/dev/null || return 1
    [ -f "$work/rows4.jsonl" ] || "$py" "$helper" make-data "$work/rows4.jsonl" 512 4 tests/fixtures/train_rows.jsonl
    peak_gpu_mib train_run "$work/t-q4k" "$dev" "$work/smollm2-q4_k.gguf" "$work/rows4.jsonl" "${steps:-30}" 16 \
        --eval-fraction 0 --compute bf16 || return 1
    echo "LoRA on the Q4_K base, compute bf16:"
    "$py" "$helper" throughput "$work/t-q4k" "$work/smollm2-135m" || return 1
    local c
    for c in "f32 stored" "bf16 stored" "bf16 bf16"; do
        set -- $c
        echo "decode, --compute $1 --base-dtype $2:"
        "$bin" generate --model "$work/smollm2-q4_k.gguf" --prompt "name: Blue Spice" --max-new-tokens 64 --ignore-eos \
            --device "$dev" --compute "$1" --base-dtype "$2" 2>&1 >/dev/null | grep -E '^warning|tokens/s' || return 1
    done
}
only smollm2-q4k gated 40 "quantized base on the GPU, SmolLM2-135M-shaped Q4_K: LoRA tokens/s and peak memory (bf16), decode" \
    smollm2_quantized

# The Qwen3.5-0.8B-shaped model (24 layers, its 248k vocabulary; saved in bf16) with room left: its Gated DeltaNet's
# kernels against transformers' own (flash-linear-attention's where installed, else transformers' torch code).
qwen35() {
    "$py" "$helper" make-model "$work/qwen3.5-0.8b" qwen3.5-0.8b tests/fixtures/tiny-llama bf16 || return 1
    if "$py" -c 'import fla' 2>/dev/null; then
        echo "PyTorch's Gated DeltaNet: flash-linear-attention's kernels"
    else
        echo "PyTorch's Gated DeltaNet: transformers' torch code (flash-linear-attention is not installed)"
    fi
    throughput "$work/qwen3.5-0.8b" "${steps:-10}" 8 bf16
}
only qwen3.5-0.8b gated 120 "throughput, Qwen3.5-0.8B-shaped: condlm $dev vs PyTorch (+ PEFT): LoRA bf16, full bf16" qwen35
# profile MODEL BATCH: where a training step's GPU time goes (CONDLM_CUDA_PROFILE: each op's share, the GPU's
# waits for the host included) — 4 steps in bf16 of LoRA and of full fine-tuning on the throughput runs' rows.
profile() {
    local model=$1 batch=$2 mode
    for mode in lora full; do
        local args=(--lora-r 16 --lora-targets all-linear --lora-dropout 0.05)
        [ "$mode" = full ] && args=(--full --lr 1e-5)
        echo "$mode, compute bf16, batch $batch:"
        CONDLM_CUDA_PROFILE=1 "$bin" train --model "$model" --data "$work/rows4.jsonl" --output-dir "$work/p-$mode" \
            --max-steps 4 --batch-size "$batch" --eval-fraction 0 --save-every 0 --device "$dev" --compute bf16 \
            "${args[@]}" 2>&1 | sed -n '/^cuda profile/,/^[^ ]/p' || return 1
    done
}
# The 135M shape's model and rows, made here when the throughput section did not run.
smollm2_profile() {
    smollm2_model || return 1
    [ -f "$work/rows4.jsonl" ] || "$py" "$helper" make-data "$work/rows4.jsonl" 512 4 tests/fixtures/train_rows.jsonl
    profile "$work/smollm2-135m" 16
}
if ! want profile; then
    only profile
elif [ "$(left)" -lt 45 ]; then
    skipped "profile"
elif [ -f "$work/qwen2.5-1.5b/config.json" ] && [ "$(left)" -ge 90 ]; then
    run_check "profile, Qwen2.5-1.5B-shaped: a training step's GPU time by op (LoRA, full; bf16)" profile \
        "$work/qwen2.5-1.5b" 8
else
    run_check "profile, SmolLM2-135M-shaped: a training step's GPU time by op (LoRA, full; bf16)" smollm2_profile
fi
# sanitize: NVIDIA's compute-sanitizer (in the machine's CUDA toolkit) over small device runs on tiny Llama — two
# LoRA steps with --compute bf16 (the tensor-core attention) and in f32, and a greedy generation (decoding graphs)
# — memcheck (reads and writes out of bounds or misaligned, in kernels and API calls) and racecheck (shared-memory
# hazards between a block's threads): what the CUDA emulator checks only in part, on real hardware.
# cap N: N seconds, or fewer where the budget has fewer left (at least 10).
cap() { local l=$(($(left) - 10)); [ "$l" -lt "$1" ] && echo $((l > 10 ? l : 10)) || echo "$1"; }
# within_budget CMD...: CMD's last lines, under a timeout of at most 150 s within the budget; a run the budget cuts
# short says so and is not a failure.
within_budget() {
    local rc
    timeout "$(cap 150)" "$@" >"$work/within.log" 2>&1
    rc=$?
    tail -6 "$work/within.log"
    [ "$rc" = 124 ] && { echo "(cut short by the script's budget: not checked to the end)"; return 0; }
    return $rc
}
sanitize() {
    local cs tool c
    cs=$(command -v compute-sanitizer || compgen -G '/usr/local/cuda*/bin/compute-sanitizer' | head -1)
    [ -n "$cs" ] || { echo "compute-sanitizer not found: skipped"; return 0; }
    # On gVisor the sanitizer refuses the device ("Device not supported", then error 999): not condlm's failure.
    if timeout "$(cap 60)" "$cs" --tool memcheck "$bin" info --devices 2>&1 | grep -qE 'Device not supported|error 999'; then
        echo "compute-sanitizer does not support this machine's GPU runtime (gVisor?): skipped"
        return 0
    fi
    for tool in memcheck racecheck; do
        for c in bf16 f32; do
            echo "$tool: train, 2 LoRA steps, --compute $c"
            within_budget "$cs" --tool "$tool" --error-exitcode 1 --print-limit 20 "$bin" train \
                --model tests/fixtures/tiny-llama --data tests/fixtures/train_rows.jsonl --output-dir "$work/san-$tool-$c" \
                --max-steps 2 --batch-size 4 --save-every 0 --eval-fraction 0 --device "$dev" --compute "$c" || return 1
        done
        echo "$tool: generate, greedy, 12 new tokens"
        within_budget "$cs" --tool "$tool" --error-exitcode 1 --print-limit 20 "$bin" generate \
            --model tests/fixtures/tiny-llama --data tests/fixtures/score_rows.jsonl --max-new-tokens 12 --batch 2 \
            --device "$dev" --out "$work/san-$tool-gen.jsonl" || return 1
    done
}
title="compute-sanitizer memcheck and racecheck: tiny Llama, train (bf16, f32) and generate"
if ! want sanitize; then
    only sanitize
elif [ "$(left)" -ge 120 ] && [ "$dev" = cuda ]; then
    run_check "$title" sanitize
else
    skipped "$title"
fi
rm -rf "$work"

# The acceptance at a glance, read off the sections (gpu_check.py summary), before the first of them.
summary=$(mktemp)
if { echo "## Summary"; echo; "$py" "$helper" summary "$report.tmp"; } >"$summary" 2>&1; then
    awk -v f="$summary" '/^## / && !done { while ((getline l < f) > 0) print l; print ""; done = 1 } { print }' \
        "$report.tmp" >"$report.tmp.2" && mv "$report.tmp.2" "$report.tmp"
else
    { echo; echo "## Summary"; echo; echo "the summary failed:"; cat "$summary"; } >>"$report.tmp"
fi
rm -f "$summary"
mv "$report.tmp" "$report"
cat "$report"
echo "gpu_check: wrote $report (status $status)"
exit $status
