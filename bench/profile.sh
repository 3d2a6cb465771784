#!/usr/bin/env bash
# bench/profile.sh: where a proxy's CPU goes, for the analysis in BENCHMARKS.md.
#
#   bench/profile.sh [TARGET] [ROW]
#
# TARGET: wsgate (the `raw` route in front of examples/tcp_echo, the default) or nginx (in front
# of examples/ws_echo, configured as in bench/run.sh). ROW: echo64_c50 (64 B ping-pong on 50
# connections, the default), echo64_c1, or hs_ws (a new connection per handshake, 8 workers).
#
# Two measurements of the proxy process, each with its own load from wsload:
#   1. `perf record` (if perf is installed and allowed) for PROFILE_SECS: the share of the proxy's
#      CPU time spent in the kernel and in user space, and the kernel time by system call;
#   2. `strace -c -f` while wsload sends a fixed number of messages (or handshakes): system calls
#      per message. strace slows the proxy down a lot; only the counts are used.
# Output goes to bench/results/profile-TARGET-ROW-TIMESTAMP/ (summary.txt, perf.data, strace.txt).
#
# Installs strace, linux-perf (and nginx for that target) with apt-get when they are missing.
# Loopback only, ports 28150-28159; every process started here is stopped by its PID at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
TARGET=${1:-wsgate}
ROW=${2:-echo64_c50}
PROFILE_SECS=${PROFILE_SECS:-4}
COUNT=${COUNT:-100000}
BIN=${BIN:-target/release}
BASE=28150
ECHO_PORT=$BASE PROXY_PORT=$((BASE + 1)) PROXY_TLS_PORT=$((BASE + 2))

case "$ROW" in
    echo64_c50) LOAD=(-c 50 -s 64) UNIT=message ;;
    echo64_c1) LOAD=(-c 1 -s 64) UNIT=message ; COUNT=${COUNT_C1:-20000} ;;
    hs_ws) LOAD=(--mode handshake -c 8) UNIT=handshake ; COUNT=${COUNT_HS:-20000} ;;
    *) echo "profile.sh: unknown row $ROW" >&2; exit 2 ;;
esac
# Install what is missing (Debian packages), as bench/run.sh does.
need_apt=()
command -v strace >/dev/null || need_apt+=(strace)
command -v perf >/dev/null || need_apt+=(linux-perf)
[ "$TARGET" = nginx ] && ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ] && need_apt+=(nginx)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "profile.sh: installing ${need_apt[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
export PATH=$PATH:/usr/sbin:/sbin
[ -x "$BIN/wsload" ] && [ -x "$BIN/wsgate" ] && [ -x "$BIN/examples/tcp_echo" ] && [ -x "$BIN/examples/ws_echo" ] ||
    # Separately: the examples pull in tokio's test-util (a dev-dependency feature).
    cargo build --release --workspace --bins && cargo build --release --examples

OUT=bench/results/profile-$TARGET-$ROW-$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "profile.sh: nothing listens on port $1" >&2
    exit 1
}

case "$TARGET" in
    wsgate)
        cat >"$OUT/wsgate.toml" <<EOF
[[listener]]
bind = "127.0.0.1:$PROXY_PORT"

[[route]]
path = "/raw"
backend = "127.0.0.1:$ECHO_PORT"
framing = "raw"

[limits]
max_connections_per_ip = 60000

[log]
access = false
EOF
        "$BIN/examples/tcp_echo" "127.0.0.1:$ECHO_PORT" >"$OUT/backend.log" 2>&1 &
        PIDS+=($!)
        WSGATE_LOG=warn "$BIN/wsgate" --config "$OUT/wsgate.toml" 2>"$OUT/proxy.log" &
        PROXY_PID=$!
        PIDS+=("$PROXY_PID")
        URL=ws://127.0.0.1:$PROXY_PORT/raw
        ;;
    nginx)
        mkdir -p "$OUT/nginx-tmp"
        sed -e "s|@RUN@|$PWD/$OUT|g" -e "s|@WS_ECHO_PORT@|$ECHO_PORT|g" -e "s|@NGINX_PORT@|$PROXY_PORT|g" \
            -e "s|@NGINX_TLS_PORT@|$PROXY_TLS_PORT|g" -e "s|@CERT@|$PWD/certs/localhost.crt|g" \
            -e "s|@KEY@|$PWD/certs/localhost.key|g" -e "s|@NGINX_WORKERS@|auto|g" \
            -e "s|@FLOOD_PORT@|$ECHO_PORT|g" bench/nginx.conf.template >"$OUT/nginx.conf"
        "$BIN/examples/ws_echo" "127.0.0.1:$ECHO_PORT" >"$OUT/backend.log" 2>&1 &
        PIDS+=($!)
        nginx -e "$PWD/$OUT/nginx-error.log" -c "$PWD/$OUT/nginx.conf" -p "$PWD/$OUT" &
        PIDS+=($!)
        URL=ws://127.0.0.1:$PROXY_PORT/
        ;;
    *) echo "profile.sh: unknown target $TARGET (wsgate or nginx)" >&2; exit 2 ;;
esac
wait_port "$ECHO_PORT"
wait_port "$PROXY_PORT"
if [ "$TARGET" = nginx ]; then
    # The workers do the proxying; the master only supervises them.
    PROXY_PID=$(pgrep -d, -P "${PIDS[-1]}")
fi

{
    echo "target $TARGET, row $ROW ($URL ${LOAD[*]}), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "proxy pid(s) $PROXY_PID"
} >"$OUT/summary.txt"

# 1. perf: kernel and user shares, kernel time by system call.
if command -v perf >/dev/null && perf record -o /dev/null -- true >/dev/null 2>&1; then
    "$BIN/wsload" "$URL" "${LOAD[@]}" --warmup 1 -d $((PROFILE_SECS + 2)) >"$OUT/wsload-perf.txt" &
    LOAD_PID=$!
    sleep 1.5
    perf record -F 2000 -g -p "$PROXY_PID" -o "$OUT/perf.data" -- sleep "$PROFILE_SECS" >/dev/null 2>&1 || true
    wait "$LOAD_PID" || true
    {
        echo
        echo "== perf: share of the proxy's CPU samples by where they ran"
        perf report -i "$OUT/perf.data" --no-children --sort dso -g none 2>/dev/null | grep '%' | head -6
        echo
        echo "== perf: share of the proxy's CPU samples under each system call (children included)"
        perf report -i "$OUT/perf.data" --children --sort sym -g none 2>/dev/null |
            grep -E '\[k\] __x64_sys_' | head -12
    } >>"$OUT/summary.txt"
else
    echo "(perf not available: kernel/user shares skipped)" >>"$OUT/summary.txt"
fi

# 2. strace: system calls per message (or handshake).
ATTACH=()
for p in ${PROXY_PID//,/ }; do ATTACH+=(-p "$p"); done
strace -c -f "${ATTACH[@]}" -o "$OUT/strace.txt" &
STRACE_PID=$!
sleep 1
"$BIN/wsload" "$URL" "${LOAD[@]}" -n "$COUNT" --timeout 300 >"$OUT/wsload-strace.txt"
kill -INT "$STRACE_PID"
wait "$STRACE_PID" 2>/dev/null || true
python3 - "$OUT/strace.txt" "$COUNT" "$UNIT" >>"$OUT/summary.txt" <<'EOF'
import sys
path, count, unit = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print(f"\n== strace: system calls per {unit} ({count} {unit}s)")
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        calls, errors = int(f[3]), (int(f[4]) if len(f) == 6 else 0)
        if calls / count < 0.001:
            continue
        print(f"  {f[-1]:<14} {calls / count:8.3f}" + (f"  ({errors / count:.3f} failed)" if errors else ""))
EOF
cat "$OUT/summary.txt"
echo "(raw data in $OUT)"
