#!/usr/bin/env bash
# Compiles every CUDA kernel source (src/kernels/cuda/cu/*.cu) to PTX with NVRTC — no GPU and no CUDA toolkit needed:
# fetches NVIDIA's NVRTC from PyPI (the nvidia-cuda-nvrtc wheel: CUDA 13, and nvidia-cuda-nvrtc-cu12: CUDA 12)
# into a temporary folder with `pip install --target`, puts its lib folder on LD_LIBRARY_PATH, and runs
# tests/cuda_ptx.rs with `--features cuda` once per flavour. Then assembles each PTX file for sm_90 with the same
# CUDA version's ptxas (the nvidia-cuda-nvcc wheels), as the driver does at load: inline PTX (the tensor cores'
# mma.sync) is checked only there, and `ptxas -v` tells each kernel's registers, spills and shared memory.
# Writes scripts/cuda/ptx_check.md (date, versions, per-file OK and PTX size, per-kernel resources); exits non-zero
# when a flavour cannot be fetched or a source fails.
#
#   scripts/cuda/ptx_check.sh            # both flavours
#   scripts/cuda/ptx_check.sh nvidia-cuda-nvrtc   # one
#
# Python is used only here, by pip, to fetch the wheel; condlm itself loads libnvrtc at run time.
set -euo pipefail
cd "$(dirname "$0")/../.."
flavours=("$@")
[ ${#flavours[@]} -gt 0 ] || flavours=(nvidia-cuda-nvrtc nvidia-cuda-nvrtc-cu12)
pip=$(command -v pip3 || command -v pip || true)
[ -n "$pip" ] || { echo "ptx_check: pip not found (install python3-pip) — it fetches the NVRTC wheel" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
report=scripts/cuda/ptx_check.md
{
    echo "# NVRTC compile of the CUDA kernel sources"
    echo
    dirty=$(git diff --quiet HEAD -- src/kernels/cuda || echo ', src/kernels/cuda modified')
    echo "Written by \`scripts/cuda/ptx_check.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') at commit $(git rev-parse --short HEAD)$dirty:"
    echo "\`cargo test --release --features cuda --test cuda_ptx\` with each NVRTC wheel's lib folder on LD_LIBRARY_PATH."
    echo "No GPU: this checks that every source compiles and defines its kernels (\`.entry\` in the PTX), and that"
    echo "the same CUDA version's ptxas assembles the PTX for sm_90 (the inline PTX too), with each kernel's resources."
} >"$report.tmp"
status=0
for pkg in "${flavours[@]}"; do
    echo "ptx_check: fetching $pkg"
    if ! "$pip" install --quiet --no-deps --disable-pip-version-check --target "$tmp/$pkg" "$pkg" >"$tmp/pip.log" 2>&1; then
        cat "$tmp/pip.log" >&2
        echo "ptx_check: pip could not install $pkg" >&2
        printf '\n## %s\n\npip could not install it.\n' "$pkg" >>"$report.tmp"
        status=1
        continue
    fi
    version=$(sed -n 's/^Version: //p' "$tmp/$pkg"/*.dist-info/METADATA | head -1)
    lib=$(dirname "$(find "$tmp/$pkg" -name 'libnvrtc.so*' | head -1)")
    echo "ptx_check: $pkg $version, libnvrtc in $lib"
    mkdir -p "$tmp/ptx-$pkg"
    if CONDLM_PTX_DIR="$tmp/ptx-$pkg" LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        cargo test --release --features cuda --test cuda_ptx -- --nocapture >"$tmp/test.log" 2>&1; then
        result=passed
    else
        result=FAILED
        status=1
    fi
    grep -E '^(ptx_check|SKIP)' "$tmp/test.log" || true
    if grep -q '^SKIP' "$tmp/test.log"; then
        result="FAILED (NVRTC did not load)"
        status=1
    fi
    [ "$result" = passed ] || tail -40 "$tmp/test.log" >&2
    # The assembler of the same CUDA version (PTX of a newer ISA than ptxas knows does not assemble).
    nvcc=${pkg/nvrtc/nvcc}
    assembled=""
    if "$pip" install --quiet --no-deps --disable-pip-version-check --target "$tmp/$nvcc" "$nvcc" >"$tmp/pip.log" 2>&1; then
        ptxas=$(find "$tmp/$nvcc" -name ptxas -type f | head -1)
        chmod +x "$ptxas"
        assembled="$("$ptxas" --version | tail -1)"$'\n'
        for ptx in "$tmp/ptx-$pkg"/*.ptx; do
            [ -e "$ptx" ] || continue
            if "$ptxas" -arch=sm_90 -v "$ptx" -o /dev/null >"$tmp/ptxas.log" 2>&1; then
                # Per kernel: "NAME: R registers, S bytes spill stores, M bytes smem".
                assembled+=$(awk -v f="$(basename "$ptx")" '
                    /Compiling entry function/ { split($0, q, "\047"); name = q[2] }
                    /spill stores/ { spill = $5 }
                    /Used [0-9]+ registers/ {
                        reg = "?"; smem = 0
                        for (i = 2; i <= NF; i++) {
                            if ($i ~ /^registers/) reg = $(i - 1)
                            if ($i ~ /^smem/) smem = $(i - 2)
                        }
                        printf "%s %s: %s registers, %s bytes spilled, %s bytes shared\n", f, name, reg, spill, smem
                    }' "$tmp/ptxas.log")$'\n'
            else
                assembled+="$(basename "$ptx") FAILED to assemble:"$'\n'"$(cat "$tmp/ptxas.log")"$'\n'
                status=1
            fi
        done
    else
        assembled="pip could not install $nvcc: no ptxas check"$'\n'
        status=1
    fi
    printf '%s' "$assembled"
    {
        printf '\n## %s %s: %s\n\n```\n' "$pkg" "$version" "$result"
        grep -E '^(ptx_check|SKIP)' "$tmp/test.log" | sed 's/^ptx_check: //' || true
        printf '```\n\nptxas -arch=sm_90 -v on each file:\n\n```\n%s```\n' "$assembled"
    } >>"$report.tmp"
done
mv "$report.tmp" "$report"
echo "ptx_check: wrote $report"
exit $status
