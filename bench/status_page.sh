#!/usr/bin/env bash
# bench/status_page.sh: what the admin status page (GET / on the admin listener) costs the
# gateway while it is left open: user-space instructions per refresh, and per day.
#
#   bench/status_page.sh
#
# One refresh of the page is what its script fetches every 2 s while the tab is visible:
# GET /status, GET /metrics and GET /sessions (assets/status.html). The gateway runs under
# valgrind's callgrind with SESSIONS (100) idle WebSocket sessions open (wsload idle mode, in
# front of the TCP echo example), and serves first R1 (50), then R2 (550) refreshes from a small
# Python client; instructions per refresh = (I(R2) - I(R1)) / (R2 - R1), so start-up, the
# sessions' handshakes and shutdown cancel out (keepalive pings are off, so idle sessions cost
# nothing while the refreshes run). A day at one refresh every 2 s is 43,200 refreshes.
#
# Environment overrides: SESSIONS (100), R1 (50), R2 (550), BUILD=0 (skip cargo build).
# Loopback only, ports 28290-28299; every process started here is stopped by its PID. Output: a
# Markdown table on stdout; callgrind files in bench/results/status-page-TIMESTAMP/.

set -euo pipefail

cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-100}
R1=${R1:-50}
R2=${R2:-550}
BASE=28290
ECHO_PORT=$BASE
GW_PORT=$((BASE + 1))
ADMIN_PORT=$((BASE + 2))
OUT=bench/results/status-page-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
. bench/common.sh

need_valgrind
bench_build

start_tcp_echo "$ECHO_PORT"

cat >"$OUT/wsgate.toml" <<EOF
[[listener]]
bind = "127.0.0.1:$GW_PORT"

[[route]]
path = "/echo"
backend = "127.0.0.1:$ECHO_PORT"

[admin]
bind = "127.0.0.1:$ADMIN_PORT"

[limits]
ping_interval = "off"

[log]
access = false
EOF

# One run: the gateway under callgrind, SESSIONS idle sessions, then N refreshes of the page.
run() {
    local name=$1 n=$2
    WSGATE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$name" \
        "$BIN/wsgate" --config "$OUT/wsgate.toml" >"$OUT/wsgate.$name.out" 2>"$OUT/valgrind.$name.log" &
    local pid=$!
    pids+=("$pid")
    wait_port "$ADMIN_PORT"
    sleep 1
    "$BIN/wsload" "ws://127.0.0.1:$GW_PORT/echo" --mode idle -c "$SESSIONS" -d 600 --settle 0 \
        --json >"$OUT/wsload.$name.json" &
    local load=$!
    pids+=("$load")
    python3 - "$ADMIN_PORT" "$n" "$SESSIONS" <<'PY'
import json, sys, time, urllib.request
port, n, sessions = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
base = f"http://127.0.0.1:{port}"
def get(path):
    with urllib.request.urlopen(base + path, timeout=60) as r:
        return r.read()
# Wait until every session is open, then refresh n times as the page does.
deadline = time.time() + 300
while len(json.loads(get("/sessions"))) < sessions:
    if time.time() > deadline:
        sys.exit("status_page.sh: the sessions did not open")
    time.sleep(0.5)
for _ in range(n):
    for path in ("/status", "/metrics", "/sessions"):
        get(path)
PY
    kill "$load" 2>/dev/null || true
    wait "$load" 2>/dev/null || true
    kill -INT "$pid"
    wait "$pid" || true
    awk '/^summary:/ { print $2 }' "$OUT/callgrind.$name"
}

a=$(run r1 "$R1")
b=$(run r2 "$R2")
per=$(((b - a) / (R2 - R1)))
day=$((per * 43200))
echo "## The status page left open: gateway instructions per refresh ($SESSIONS sessions open)"
echo
echo "| refreshes | gateway instructions (whole run) |"
echo "|---|---|"
echo "| $R1 | $a |"
echo "| $R2 | $b |"
echo
echo "Per refresh (GET /status, /metrics, /sessions): $per instructions; a day at one refresh every 2 s: $day instructions."
echo
echo "raw files: $OUT"
