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
#            timeout_s=300)
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
#     TFLOP/s at 4096×4096×4096 in f32 and bf16 (the peak issue 15's model FLOP utilisation is reported against).
#     The script fails if any of that fails.
# Still to come for issue 15 (not here yet): logits/gradients vs the CPU path
# on the tiny fixtures, 20 training steps on a SmolLM2-135M-shaped model, throughput vs PyTorch+PEFT. The whole
# script must stay under 8 minutes.
#
# Usage: scripts/gpu_check.sh [BINARY [REPORT]]   (defaults: target/gpu/condlm, $OUT/gpu_check.md when $OUT is
# set, else scripts/gpu_check.md)
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/gpu/condlm}
report=${2:-${OUT:+$OUT/gpu_check.md}}
report=${report:-scripts/gpu_check.md}
[ -x "$bin" ] || { echo "gpu_check: $bin is not an executable condlm (build it as step 1 above)" >&2; exit 2; }
status=0

# NVRTC and cuBLAS: condlm dlopens libnvrtc.so.* and libcublas.so.*; for each the loader does not find, put the
# first folder holding one on LD_LIBRARY_PATH — the toolkit's first (it matches the driver: 13.0 on the H200 image,
# KINDS.md), then the ones PyTorch's wheels bring. An NVRTC newer than the driver makes PTX the driver refuses (info
# prints a warning).
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
end_section() { printf '```\n' >>"$report.tmp"; }

{
    echo "# GPU check (issue 15)"
    echo
    echo "\`scripts/gpu_check.sh\` on $(hostname) at $(date -u '+%Y-%m-%d %H:%M UTC'); binary: $("$bin" --version 2>&1)."
    echo "libnvrtc: ${nvrtc_dir:-found by the loader (ldconfig)}; libcublas: ${cublas_dir:-found by the loader (ldconfig)};"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}."
} >"$report.tmp"

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
if grep -q '^cuda          unavailable' "$report.tmp"; then
    printf '\nFAILED: condlm sees no usable GPU here (the cuda line above says why).\n' >>"$report.tmp"
    status=1
fi

mv "$report.tmp" "$report"
cat "$report"
echo "gpu_check: wrote $report (status $status)"
exit $status
