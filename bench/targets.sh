#!/usr/bin/env bash
# bench/targets.sh: what a per-session target costs a handshake, in instructions.
#
#   bench/targets.sh [HANDSHAKES]
#
# One gateway with three routes to the same TCP echo backend (examples/tcp_echo):
#   /fixed    backend = the echo server
#   /cached   [route.target] with a token file and cache_ttl = "60s"
#   /file     the same token file, no cache (the file's status is checked on every handshake)
# For each route, the gateway runs under valgrind's callgrind (user-space instructions of the
# whole process, start-up included) while wsload opens HANDSHAKES (default 2000) connections
# (--mode handshake -c 4), each with its own backend connection; then SIGINT, and the total
# instruction count is read from callgrind's output. A run with no handshake at all gives the
# start-up and shutdown cost, which is subtracted, so the table shows instructions per handshake.
# Callgrind counts are the same from run to run on a loaded machine, where seconds are not.
#
# Installs valgrind with apt-get when it is missing. Loopback only, ports 28160-28169; every
# process started here is stopped by its PID. Output: a Markdown table on stdout, the raw
# callgrind files in bench/results/targets-TIMESTAMP/.
set -euo pipefail

cd "$(dirname "$0")/.."
N=${1:-2000}
BASE=28160
ECHO_PORT=$BASE
GW_PORT=$((BASE + 1))
OUT=bench/results/targets-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
. bench/common.sh

need_valgrind
bench_build

start_tcp_echo "$ECHO_PORT"

echo "vm1: 127.0.0.1:$ECHO_PORT" >"$OUT/tokens"
cat >"$OUT/wsgate.toml" <<EOF
[[listener]]
bind = "127.0.0.1:$GW_PORT"

[[route]]
path = "/fixed"
backend = "127.0.0.1:$ECHO_PORT"

[[route]]
path = "/cached"
[route.target]
token_from = "query"
source = "file:tokens"
allow = ["127.0.0.1:$ECHO_PORT"]
cache_ttl = "60s"

[[route]]
path = "/file"
[route.target]
token_from = "query"
source = "file:tokens"
allow = ["127.0.0.1:$ECHO_PORT"]

[log]
access = false
EOF

# Instructions of one gateway run under callgrind that serves `n` handshakes on `url`.
measure() {
    local name=$1 url=$2 n=$3
    WSGATE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$name" \
        "$BIN/wsgate" --config "$OUT/wsgate.toml" >"$OUT/wsgate.$name.out" 2>"$OUT/valgrind.$name.log" &
    local pid=$!
    pids+=("$pid")
    wait_port "$GW_PORT"
    # The port answers once it is bound; the signal handlers are in place a moment later.
    sleep 1
    if [ "$n" -gt 0 ]; then
        "$BIN/wsload" "$url" --mode handshake -c 4 -n "$n" >"$OUT/wsload.$name.txt"
    fi
    kill -INT "$pid"
    wait "$pid" || true
    awk '/^summary:/ { print $2 }' "$OUT/callgrind.$name"
}

base=$(measure idle "ws://127.0.0.1:$GW_PORT/fixed" 0)
fixed=$(measure fixed "ws://127.0.0.1:$GW_PORT/fixed" "$N")
cached=$(measure cached "ws://127.0.0.1:$GW_PORT/cached?token=vm1" "$N")
file=$(measure file "ws://127.0.0.1:$GW_PORT/file?token=vm1" "$N")

per() { echo $((($1 - base) / N)); }
pf=$(per "$fixed")
row() {
    local p
    p=$(per "$2")
    awk -v name="$1" -v p="$p" -v f="$pf" \
        'BEGIN { d = (p - f) / f * 100; printf "| %s | %d | %+d | %+.1f%% |\n", name, p, p - f, d }'
}
echo "callgrind, $N handshakes per route (start-up and shutdown, $base instructions, subtracted)"
echo
echo "| route | instructions per handshake | against fixed | |"
echo "|---|---|---|---|"
echo "| fixed \`backend\` | $pf | - | - |"
row "token, cached" "$cached"
row "token, file checked each time" "$file"
