#!/usr/bin/env bash
# Builds llama.cpp from source for the GGUF agreement check (scripts/gguf_agreement.py): the llama.cpp vendored in
# llama-cpp-python's sdist (a pinned, released snapshot that pip can fetch), CPU only, Release, with just libllama,
# llama-perplexity and our condlm-logprobs (logprobs.cpp); llama-bench for bench/decode_vs_llama_cpp.sh. Idempotent:
# the download, the extraction and the configuration are skipped when present; make rebuilds only what changed.
# Usage: build.sh [TARGET...]; default llama-perplexity condlm-logprobs; llama-finetune (examples/training, full
# fine-tuning of F32 GGUFs) is built by bench/finetune_vs_llama_cpp.sh with `build.sh llama-finetune`.
# Prints the folder with the binaries (bin/<target>) on its last line.
set -euo pipefail

VERSION=0.3.36 # llama-cpp-python release; its vendor/llama.cpp is the llama.cpp we build
CACHE=${CONDLM_LLAMA_CPP_CACHE:-$HOME/.cache/condlm/llama-cpp}
PYTHON=${PYTHON:-$HOME/.cache/condlm/bench-venv/bin/python}
JOBS=${JOBS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(llama-perplexity condlm-logprobs)

mkdir -p "$CACHE"
SDIST=$CACHE/llama_cpp_python-$VERSION.tar.gz
if [ ! -f "$SDIST" ]; then
    # --no-binary for this package only: its build dependencies (cmake, ninja) come as wheels, not from source.
    "$PYTHON" -m pip download --no-binary llama-cpp-python --no-deps "llama-cpp-python==$VERSION" -d "$CACHE"
fi
SRC=$CACHE/llama_cpp_python-$VERSION/vendor/llama.cpp
if [ ! -f "$SRC/CMakeLists.txt" ]; then
    tar -xzf "$SDIST" -C "$CACHE" "llama_cpp_python-$VERSION/vendor/llama.cpp"
fi

# cmake: the system's, else the venv's (pip install cmake).
CMAKE=$(command -v cmake || true)
if [ -z "$CMAKE" ]; then
    CMAKE=$(dirname "$PYTHON")/cmake
    [ -x "$CMAKE" ] || "$PYTHON" -m pip install cmake
fi

BUILD=$CACHE/build-$VERSION
# A build folder configured from another checkout (its CMakeLists.txt path is recorded) is reconfigured from this one.
if [ -f "$BUILD/CMakeCache.txt" ] && ! grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$HERE" "$BUILD/CMakeCache.txt"; then
    rm -f "$BUILD/CMakeCache.txt"
fi
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    "$CMAKE" -S "$HERE" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CPP_DIR="$SRC"
fi
"$CMAKE" --build "$BUILD" --config Release -j "$JOBS" --target "${TARGETS[@]}"
echo "$BUILD/bin"
