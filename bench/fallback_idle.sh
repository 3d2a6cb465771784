#!/usr/bin/env bash
# bench/fallback_idle.sh: what an idle session of the fallback transport (README "Fallback
# transport") costs the gateway in memory, next to a WebSocket session on the same route.
#
#   bench/fallback_idle.sh
#
# One gateway (plain listener) in front of the TCP echo example (examples/tcp_echo), one route
# `/echo` with `fallback = true`. For each row a fresh gateway; wsload idle mode opens SESSIONS
# (1000) sessions and reads the gateway's VmRSS from /proc before and 3 s after opening them
# (--server-pid), then holds them for HOLD seconds and samples again:
#   websocket  - WebSocket sessions (HTTP/1.1 upgrade), each holding its connection
#   streaming  - fallback sessions, each holding one streaming GET open (heartbeats only)
#   polling    - fallback sessions, each long-polling (a GET waits up to fallback_poll_timeout,
#                here 5 s so that HOLD covers several polls; then the next one)
# Every row also holds one backend TCP connection per session in the gateway.
#
# Environment overrides: SESSIONS (1000), HOLD (12), BUILD=0 (skip cargo build).
# Loopback only, ports 28270-28279; every process started here is stopped by its PID. Output: a
# Markdown table on stdout; wsload JSON in bench/results/fallback-idle-TIMESTAMP/.

set -euo pipefail

cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-1000}
HOLD=${HOLD:-12}
BASE=28270
ECHO_PORT=$BASE
GW_PORT=$((BASE + 1))
OUT=bench/results/fallback-idle-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
. bench/common.sh

bench_build

start_tcp_echo "$ECHO_PORT"

cat >"$OUT/wsgate.toml" <<EOF
[[listener]]
bind = "127.0.0.1:$GW_PORT"

[[route]]
path = "/echo"
backend = "127.0.0.1:$ECHO_PORT"
fallback = true

[limits]
max_connections_per_ip = 10000
fallback_poll_timeout = "5s"
fallback_session_timeout = "30s"

[log]
access = false
EOF

# One row: fresh gateway, wsload idle with ARGS; prints the JSON summary fields.
row() {
    local name=$1
    shift
    WSGATE_LOG=warn "$BIN/wsgate" --config "$OUT/wsgate.toml" >"$OUT/wsgate.$name.out" 2>&1 &
    local pid=$!
    pids+=("$pid")
    wait_port "$GW_PORT"
    sleep 0.5
    "$BIN/wsload" "ws://127.0.0.1:$GW_PORT/echo" --mode idle -c "$SESSIONS" -d "$HOLD" --settle 3 \
        --server-pid "$pid" --json "$@" >"$OUT/wsload.$name.json" ||
        echo "fallback_idle.sh: wsload reported failures for $name (see $OUT/wsload.$name.json)" >&2
    kill -INT "$pid"
    wait "$pid" || true
    python3 - "$OUT/wsload.$name.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
s = j["server"]
end = s["at_end"]["rss_kib"] if s.get("at_end") else 0
before = s["before"]["rss_kib"]
opened = max(j["opened"], 1)
print(f'{j["opened"]} | {j["failed"]} | {before:,} | {s["after_open"]["rss_kib"]:,} | '
      f'{s["bytes_per_session"]:,.0f} | {end:,} | {(end - before) * 1024 / opened:,.0f}')
PY
}

echo "## $SESSIONS idle sessions on one route: gateway RSS per session"
echo
echo "| transport | opened | failed | RSS before KiB | RSS 3 s after opening KiB | bytes per session | RSS after ${HOLD} s KiB | bytes per session after ${HOLD} s |"
echo "|---|---|---|---|---|---|---|---|"
echo "| WebSocket (HTTP/1.1) | $(row websocket) |"
echo "| fallback, streaming | $(row streaming --fallback streaming) |"
echo "| fallback, long-polling | $(row polling --fallback polling) |"
echo
echo "raw files: $OUT"
