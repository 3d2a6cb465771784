#!/usr/bin/env bash
# bench/http2_deflate.sh: what WebSockets over HTTP/2 (RFC 8441) and permessage-deflate
# (RFC 7692) cost the gateway, in instructions per message and in memory per session.
#
#   bench/http2_deflate.sh
#
# One gateway (a plain listener with `http2 = true`, so HTTP/1.1 and h2c with prior knowledge)
# in front of the TCP echo example (examples/tcp_echo), routes:
#   /raw     raw route, no compression
#   /z       compression = "permessage-deflate", context takeover both ways (the defaults)
#   /znc     the same with server_no_context_takeover and client_no_context_takeover
#   /zs      context takeover, with 10-bit windows both ways (server_ and client_max_window_bits)
#
# (a) 64 B binary echo, 50 sessions: HTTP/1.1 (50 connections) and HTTP/2 (50 streams on one
#     h2c connection), to /raw.
# (c) 1 KiB JSON-like text echo (wsload --text-json), 10 sessions over HTTP/1.1: /raw, and /z,
#     /znc and /zs with --deflate; /z with --deflate over HTTP/2.
#     For both, the gateway runs under valgrind's callgrind (user-space instructions of the whole
#     process) twice per row, serving N1 and then N2 messages (one message = client -> gateway
#     -> echo -> gateway -> client); instructions per message = (I(N2) - I(N1)) / (N2 - N1), so
#     start-up, handshakes and shutdown cancel out. Callgrind counts do not depend on how busy
#     the machine is, where seconds do.
# (b) Idle memory: SESSIONS (2000) idle sessions held by a gateway running natively; wsload idle
#     mode reads the gateway's VmRSS from /proc before and 3 s after opening them (--server-pid;
#     long enough for the gateway to free idle compression contexts, one to two seconds):
#     HTTP/1.1 vs HTTP/2 (all streams on one h2c connection, http2_max_streams = 10000), and
#     sessions that each sent one compressed 1 KiB message (--idle-send, so both compression
#     contexts exist) with and without context takeover, and with 10-bit windows. A fresh
#     gateway for every row.
# (d) Compressed 1 KiB JSON-like text echo, 10 sessions, against nginx: nginx (one worker, no
#     master, both under callgrind the same way as the gateway) passes permessage-deflate
#     through to a compressing echo server (bench/ws_echo_deflate.py: Python websockets, zlib),
#     so the proxy itself never inflates; wsgate inflates every message for its plain TCP
#     backend and compresses every answer. Rows: wsgate /z in front of the TCP echo, nginx in
#     front of the compressing echo, and nginx without compression (the client offers none).
#
# Environment overrides: N1 (2000), N2 (12000), SESSIONS (2000), BUILD=0 (skip cargo build),
# PARTS ("a c d b": which parts to run).
# Loopback only, ports 28250-28259; every process started here is stopped by its PID. Output:
# Markdown tables on stdout; raw callgrind files and wsload JSON in
# bench/results/http2-deflate-TIMESTAMP/.
set -euo pipefail

cd "$(dirname "$0")/.."
N1=${N1:-2000}
N2=${N2:-12000}
SESSIONS=${SESSIONS:-2000}
PARTS=${PARTS:-"a c d b"}
BASE=28250
ECHO_PORT=$BASE
GW_PORT=$((BASE + 1))
NGINX_PORT=$((BASE + 2))
PYECHO_PORT=$((BASE + 3))
OUT=bench/results/http2-deflate-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
. bench/common.sh

need_apt=()
command -v valgrind >/dev/null || need_apt+=(valgrind)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need_apt+=(nginx)
if [ "${#need_apt[@]}" -gt 0 ]; then
    # Installed as programs only: no service is started by the package.
    had_policy=0
    [ -e /usr/sbin/policy-rc.d ] && had_policy=1
    [ "$had_policy" = 1 ] || printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    [ "$had_policy" = 1 ] || rm -f /usr/sbin/policy-rc.d
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
PYTHON=.venv/bin/python
if ! "$PYTHON" -c 'import websockets' 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/pip install -q websockets==15.0.1
fi
if false; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
bench_build

start_tcp_echo "$ECHO_PORT"

cat >"$OUT/wsgate.toml" <<EOF
[[listener]]
bind = "127.0.0.1:$GW_PORT"
http2 = true

[[route]]
path = "/raw"
backend = "127.0.0.1:$ECHO_PORT"

[[route]]
path = "/z"
backend = "127.0.0.1:$ECHO_PORT"
compression = "permessage-deflate"

[[route]]
path = "/znc"
backend = "127.0.0.1:$ECHO_PORT"
compression = "permessage-deflate"
[route.deflate]
server_no_context_takeover = true
client_no_context_takeover = true

[[route]]
path = "/zs"
backend = "127.0.0.1:$ECHO_PORT"
compression = "permessage-deflate"
[route.deflate]
server_max_window_bits = 10
client_max_window_bits = 10

[limits]
http2_max_streams = 10000
max_connections_per_ip = 10000

[log]
access = false
EOF

URL=ws://127.0.0.1:$GW_PORT

# Instructions of one gateway run under callgrind serving `n` echo messages with wsload ARGS.
callgrind_run() {
    local name=$1 n=$2
    shift 2
    WSGATE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$name" \
        "$BIN/wsgate" --config "$OUT/wsgate.toml" >"$OUT/wsgate.$name.out" 2>"$OUT/valgrind.$name.log" &
    local pid=$!
    pids+=("$pid")
    wait_port "$GW_PORT"
    # The port answers once it is bound; the signal handlers are in place a moment later.
    sleep 1
    "$BIN/wsload" "$@" -n "$n" --timeout 600 --json >"$OUT/wsload.$name.json" ||
        echo "http2_deflate.sh: wsload failed for $name (see $OUT/wsload.$name.json)" >&2
    kill -INT "$pid"
    wait "$pid" || true
    awk '/^summary:/ { print $2 }' "$OUT/callgrind.$name"
}

# Instructions per message of the rows' wsload ARGS: (I(N2) - I(N1)) / (N2 - N1).
per_message() {
    local name=$1
    shift
    local a b
    a=$(callgrind_run "$name.n1" "$N1" "$@")
    b=$(callgrind_run "$name.n2" "$N2" "$@")
    echo $(((b - a) / (N2 - N1)))
}

# Idle memory: bytes of gateway RSS per session for wsload ARGS (idle mode, SESSIONS).
idle_row() {
    local name=$1
    shift
    WSGATE_LOG=warn "$BIN/wsgate" --config "$OUT/wsgate.toml" >"$OUT/wsgate.$name.out" 2>&1 &
    local pid=$!
    pids+=("$pid")
    wait_port "$GW_PORT"
    sleep 0.5
    "$BIN/wsload" "$@" --mode idle -c "$SESSIONS" -d 4 --settle 3 --server-pid "$pid" \
        --json >"$OUT/wsload.$name.json" ||
        echo "http2_deflate.sh: wsload failed for $name (see $OUT/wsload.$name.json)" >&2
    kill -INT "$pid"
    wait "$pid" || true
    python3 - "$OUT/wsload.$name.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
s = j["server"]
print(f'{j["opened"]} {j["failed"]} {s["before"]["rss_kib"]} {s["after_open"]["rss_kib"]} '
      f'{s["bytes_per_session"]:.0f} {j["deflate_sessions"]}')
PY
}

part() { [[ " $PARTS " == *" $1 "* ]]; }

if part a; then
echo "## (a) 64 B echo, 50 sessions, /raw: gateway instructions per message (callgrind, N = $N2 - $N1)"
echo
echo "| transport | instructions per message |"
echo "|---|---|"
h1=$(per_message a-h1 "$URL/raw" -c 50 -s 64)
h2=$(per_message a-h2 "$URL/raw" -c 50 -s 64 --http2)
echo "| HTTP/1.1, 50 connections | $h1 |"
echo "| HTTP/2, 50 streams on one h2c connection | $h2 |"
echo
fi

if part c; then

echo "## (c) 1 KiB JSON-like text echo, 10 sessions: gateway instructions per message (callgrind)"
echo
echo "| route | instructions per message |"
echo "|---|---|"
c_raw=$(per_message c-raw "$URL/raw" -c 10 -s 1KiB --text-json)
c_z=$(per_message c-z "$URL/z" -c 10 -s 1KiB --text-json --deflate)
c_znc=$(per_message c-znc "$URL/znc" -c 10 -s 1KiB --text-json --deflate)
c_zs=$(per_message c-zs "$URL/zs" -c 10 -s 1KiB --text-json --deflate)
c_z2=$(per_message c-z-h2 "$URL/z" -c 10 -s 1KiB --text-json --deflate --http2)
echo "| /raw, no compression, HTTP/1.1 | $c_raw |"
echo "| /z, permessage-deflate (context takeover), HTTP/1.1 | $c_z |"
echo "| /znc, permessage-deflate, no context takeover, HTTP/1.1 | $c_znc |"
echo "| /zs, permessage-deflate (context takeover), 10-bit windows, HTTP/1.1 | $c_zs |"
echo "| /z, permessage-deflate (context takeover), HTTP/2 | $c_z2 |"
echo
fi

if part d; then
# nginx as a single process (no master, one worker) so that callgrind sees all of its work.
mkdir -p "$OUT/nginx-tmp"
cat >"$OUT/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $PWD/$OUT/nginx.pid;
error_log $PWD/$OUT/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $PWD/$OUT/nginx-tmp/body;
    proxy_temp_path $PWD/$OUT/nginx-tmp/proxy;
    fastcgi_temp_path $PWD/$OUT/nginx-tmp/fastcgi;
    uwsgi_temp_path $PWD/$OUT/nginx-tmp/uwsgi;
    scgi_temp_path $PWD/$OUT/nginx-tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://127.0.0.1:$PYECHO_PORT;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_buffer_size 64k;
            # Required by nginx alongside a 64k proxy_buffer_size (busy < all buffers - one).
            proxy_buffers 4 64k;
            proxy_busy_buffers_size 128k;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }
    }
}
EOF
"$PYTHON" bench/ws_echo_deflate.py "$PYECHO_PORT" >"$OUT/ws_echo_deflate.out" 2>&1 &
pids+=($!)
wait_port "$PYECHO_PORT"

# As callgrind_run, for nginx.
nginx_run() {
    local name=$1 n=$2
    shift 2
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$name" \
        "$NGINX" -e "$PWD/$OUT/nginx-error.log" -c "$PWD/$OUT/nginx.conf" >"$OUT/nginx.$name.out" 2>"$OUT/valgrind.$name.log" &
    local pid=$!
    pids+=("$pid")
    wait_port "$NGINX_PORT"
    sleep 1
    "$BIN/wsload" "$@" -n "$n" --timeout 600 --json >"$OUT/wsload.$name.json" ||
        echo "http2_deflate.sh: wsload failed for $name (see $OUT/wsload.$name.json)" >&2
    # nginx stops at once on SIGTERM; callgrind writes its counts as the process exits.
    kill -TERM "$pid"
    wait "$pid" || true
    awk '/^summary:/ { print $2 }' "$OUT/callgrind.$name"
}
nginx_per_message() {
    local name=$1
    shift
    local a b
    a=$(nginx_run "$name.n1" "$N1" "$@")
    b=$(nginx_run "$name.n2" "$N2" "$@")
    echo $(((b - a) / (N2 - N1)))
}
# How many of the row's sessions had permessage-deflate accepted (its larger run).
negotiated() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("deflate_sessions", "?"))' "$OUT/wsload.$1.n2.json"
}

echo "## (d) compressed 1 KiB JSON-like text echo, 10 sessions: proxy instructions per message (callgrind)"
echo
echo "| proxy, backend | client offers | sessions compressed | proxy instructions per message |"
echo "|---|---|---|---|"
d_gw=$(per_message d-wsgate "$URL/z" -c 10 -s 1KiB --text-json --deflate)
echo "| wsgate /z (inflates and compresses), TCP echo | permessage-deflate | $(negotiated d-wsgate) | $d_gw |"
d_ng=$(nginx_per_message d-nginx "ws://127.0.0.1:$NGINX_PORT/" -c 10 -s 1KiB --text-json --deflate)
echo "| nginx (passes the extension through), compressing echo | permessage-deflate | $(negotiated d-nginx) | $d_ng |"
d_ng0=$(nginx_per_message d-nginx-plain "ws://127.0.0.1:$NGINX_PORT/" -c 10 -s 1KiB --text-json)
echo "| nginx, the same echo without compression | nothing | $(negotiated d-nginx-plain) | $d_ng0 |"
echo
fi

if part b; then

echo "## (b) $SESSIONS idle sessions: gateway RSS growth per session (VmRSS before/after)"
echo
echo "| sessions | opened | failed | RSS before KiB | RSS after KiB | bytes per session | deflate sessions |"
echo "|---|---|---|---|---|---|---|"
row() {
    local label=$1
    shift
    local r
    r=$(idle_row "$@")
    # shellcheck disable=SC2086
    set -- $r
    echo "| $label | $1 | $2 | $3 | $4 | $5 | $6 |"
}
row "HTTP/1.1, /raw" b-h1 "$URL/raw"
row "HTTP/2, /raw, one connection" b-h2 "$URL/raw" --http2
row "HTTP/1.1, /z, one 1 KiB message each, context takeover" b-z "$URL/z" --deflate --idle-send -s 1KiB --text-json
row "HTTP/1.1, /znc, one 1 KiB message each, no context takeover" b-znc "$URL/znc" --deflate --idle-send -s 1KiB --text-json
row "HTTP/1.1, /zs, one 1 KiB message each, context takeover, 10-bit windows" b-zs "$URL/zs" --deflate --idle-send -s 1KiB --text-json
row "HTTP/2, /z, one 1 KiB message each, context takeover" b-z-h2 "$URL/z" --deflate --idle-send -s 1KiB --text-json --http2
echo
fi
echo "raw files: $OUT"
