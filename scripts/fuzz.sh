#!/usr/bin/env bash
# Fuzz wsgate's parsers for a bounded time: ./scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Runs each cargo-fuzz target in fuzz/ (all of them by default: frame_decoder, handshake, config,
# proxy_header, proxy_decode) for SECONDS seconds (default 60) with the nightly toolchain, installing
# cargo-fuzz if it is missing. Each target starts from its seeds (fuzz/seeds/<target>/, copied
# into the working corpus fuzz/corpus/<target>/, which is kept between runs). Exits non-zero if
# any target found a failure, and prints the path of the input that triggers it
# (fuzz/artifacts/<target>/...). Reproduce one with:
#   cd fuzz && cargo +nightly fuzz run <target> artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

all_targets=(frame_decoder handshake config proxy_header proxy_decode)
seconds=60
if [ "$#" -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=("${all_targets[@]}")
fi
for t in "${targets[@]}"; do
    if [ ! -f "fuzz_targets/$t.rs" ]; then
        echo "fuzz.sh: no target $t (targets: ${all_targets[*]})" >&2
        exit 2
    fi
done

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is needed: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "==> building the targets"
if [ "${#targets[@]}" -eq "${#all_targets[@]}" ]; then
    cargo +nightly fuzz build
else
    for t in "${targets[@]}"; do cargo +nightly fuzz build "$t"; done
fi

failed=()
for t in "${targets[@]}"; do
    echo "==> $t for ${seconds}s"
    mkdir -p "corpus/$t" "artifacts/$t"
    cp -n "seeds/$t"/* "corpus/$t/" 2>/dev/null || true
    log="artifacts/$t/last-run.log"
    started=$(date +%s)
    status=0
    cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 ||
        status=$?
    # libFuzzer's closing lines: coverage, corpus size, executions.
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' "$log" || true
    echo "    $(($(date +%s) - started))s, corpus $(find "corpus/$t" -type f | wc -l) inputs"
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        grep -E '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY|.*panicked at)' "$log" | head -5 || true
        artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | sed 's/^Test unit written to //')
        echo "fuzz.sh: $t FAILED (exit $status); log: fuzz/$log" >&2
        if [ -n "$artifact" ]; then
            echo "fuzz.sh: failing input: $artifact" >&2
            echo "fuzz.sh: reproduce: cd fuzz && cargo +nightly fuzz run $t $artifact" >&2
        fi
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: failures in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: no failures in ${targets[*]} (${seconds}s each)"
