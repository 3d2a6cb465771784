#!/usr/bin/env bash
# bench/fairness.sh: does one flooding session slow down the others?
#
#   bench/fairness.sh [WSGATE_BINARY...]     (default: target/release/wsgate)
#
# For each gateway binary, 64 B ping-pong on 20 connections (wsload) is measured twice on the
# same gateway process: alone, and beside one session whose backend streams as fast as it can to
# a client that reads slowly (16 KiB every 5 ms). Prints one table row per binary and case:
# messages/s and latency percentiles. Give two binaries (e.g. an older build) to compare them
# in the same run.
#
# Environment: DURATION (5 s), WARMUP (1 s), REPS (3; the median p99 run is reported),
# WORKERS (gateway worker threads, 1: all sessions share one thread, the case where a busy session
# could starve the others), PORT_BASE (28300; ports base..base+3 must be free).
#
# bench/run.sh's `fairness` row makes the same measurement inside the matrix, for wsgate, nginx
# and HAProxy side by side, each with its tuned worker count; this script compares gateway builds.
#
# Everything listens on and connects to 127.0.0.1; every process started here is stopped by its
# PID when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
REPS=${REPS:-3}
WORKERS=${WORKERS:-1}
PORT_BASE=${PORT_BASE:-28300}
GW_PORT=$PORT_BASE
ECHO_PORT=$((PORT_BASE + 1))
FLOOD_PORT=$((PORT_BASE + 2))

if [ "$#" -gt 0 ]; then
    BINARIES=("$@")
else
    BINARIES=(target/release/wsgate)
fi
# Separately: the examples pull in tokio's test-util (a dev-dependency feature), which must not
# reach the gateway under measurement.
cargo build --release --workspace --bins 2>&1 | tail -n 1 >&2
cargo build --release --examples 2>&1 | tail -n 1 >&2
WSLOAD=target/release/wsload
TCP_ECHO=target/release/examples/tcp_echo

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "fairness.sh: nothing listens on port $1" >&2
    return 1
}

# The flooding backend (bench/flood.py) and its slow reader (bench/slow_client.py) are shared
# with the fairness row of bench/run.sh.
cat >"$WORK/wsgate.toml" <<EOF
[[listener]]
bind = "127.0.0.1:$GW_PORT"
[[route]]
path = "/echo"
backend = "127.0.0.1:$ECHO_PORT"
[[route]]
path = "/flood"
backend = "127.0.0.1:$FLOOD_PORT"
[limits]
ping_interval = "off"
[runtime]
worker_threads = $WORKERS
[log]
access = false
EOF

"$TCP_ECHO" "127.0.0.1:$ECHO_PORT" >/dev/null &
PIDS+=($!)
python3 bench/flood.py raw "$FLOOD_PORT" &
PIDS+=($!)
wait_port "$ECHO_PORT"
wait_port "$FLOOD_PORT"

# One wsload run; prints "msgs_per_s p50 p99 p999" (microseconds).
pingpong() {
    "$WSLOAD" "ws://127.0.0.1:$GW_PORT/echo" -c 20 -s 64 -d "$DURATION" --warmup "$WARMUP" \
        --timeout $((DURATION + 30)) --json |
        python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_us"]; print(r["msgs_per_s"], l["p50"], l["p99"], l["p999"])'
}

# The median (by p99) of REPS runs.
median_run() {
    for _ in $(seq 1 "$REPS"); do pingpong; done | sort -g -k3 | sed -n "$(((REPS + 1) / 2))p"
}

printf '| gateway | case | msg/s | p50 us | p99 us | p99.9 us |\n|---|---|---|---|---|---|\n'
for bin in "${BINARIES[@]}"; do
    WSGATE_LOG=warn "$bin" --config "$WORK/wsgate.toml" &
    gw=$!
    PIDS+=($gw)
    wait_port "$GW_PORT"
    name=$("$bin" --version 2>/dev/null | head -n 1 || echo "$bin")
    read -r rate p50 p99 p999 < <(median_run)
    printf '| %s (%s) | alone | %.0f | %s | %s | %s |\n' "$name" "$bin" "$rate" "$p50" "$p99" "$p999"
    python3 bench/slow_client.py ws "$GW_PORT" /flood $(((DURATION + 2) * REPS + 5)) >/dev/null 2>&1 &
    slow=$!
    PIDS+=($slow)
    sleep 1
    read -r rate p50 p99 p999 < <(median_run)
    printf '| %s (%s) | beside a flood | %.0f | %s | %s | %s |\n' "$name" "$bin" "$rate" "$p50" "$p99" "$p999"
    kill "$slow" 2>/dev/null || true
    kill "$gw" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
done
