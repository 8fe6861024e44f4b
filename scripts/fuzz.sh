#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo-fuzz, libFuzzer) for a bounded time, one after the other, at the lowest
# CPU priority, and prints one result line per target. Not run in CI: it needs the nightly toolchain and
# `cargo install cargo-fuzz`. Usage: scripts/fuzz.sh [seconds_per_target (default 60)] [target ...]
#
# Corpora grow in fuzz/corpus/<target> (seeded from tests/fixtures on the first run) and crashes land in
# fuzz/artifacts/<target>; both are git-ignored. A crash's file reproduces it:
#   cargo +nightly fuzz run -O <target> fuzz/artifacts/<target>/<file>
# Each run's libFuzzer output is kept in fuzz/artifacts/<target>/last_run.log.
set -uo pipefail

secs=${1:-60}
shift || true
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf gguf_vocab safetensors rows settings adapter_config)

# Seeds: the fixtures each reader is meant to read, under 1 MiB so mutations stay fast (`-size -1M` would match
# only empty files: find rounds sizes up to whole units).
seeds() {
    case $1 in
        gguf) find tests/fixtures -name '*.gguf' ;;
        gguf_vocab) find tests/fixtures/gguf_tokenizer -name '*.json' ;;
        safetensors) find tests/fixtures -name '*.safetensors' -size -1024k ;;
        rows) find tests/fixtures -maxdepth 2 \( -name '*.jsonl' -o -name 'alpaca.json' \) -size -1024k ;;
        settings) find fuzz/seeds/settings -name '*.toml' ;;
        adapter_config) find tests/fixtures -name 'adapter_config.json' ;;
    esac
}

# Built once, then the binaries are run directly: `cargo fuzz run` would rebuild whenever src/ changed meanwhile.
nice -n 19 cargo +nightly fuzz build -O >/dev/null 2>&1 || { echo "fuzz build failed: run cargo +nightly fuzz build -O"; exit 2; }
bin=fuzz/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release
status=0
for t in "${targets[@]}"; do
    corpus=fuzz/corpus/$t
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    seeds "$t" | while read -r f; do cp -n "$f" "$corpus/$(echo "$f" | tr / _)"; done
    log=fuzz/artifacts/$t/last_run.log
    nice -n 19 "$bin/$t" -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$secs" -rss_limit_mb=2048 \
        -malloc_limit_mb=2048 -timeout=10 -print_final_stats=1 "$corpus" >"$log" 2>&1
    rc=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*')
    ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*')
    corp=$(echo "$last" | grep -o 'corp: [0-9]*' | grep -o '[0-9]*')
    if [ $rc -eq 0 ]; then
        echo "$t: ok — ${runs:-?} runs in ${secs} s, no crash; coverage ${cov:-?} edges, ${ft:-?} features, corpus ${corp:-?}"
    else
        status=1
        artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //')
        why=$(grep -m1 -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|out-of-memory|timeout' "$log")
        echo "$t: FAILED (exit $rc) after ${runs:-?} runs: ${why:-see $log}; reproducer ${artifact:-none}"
    fi
done
exit $status
