#!/usr/bin/env bash
# bench/instructions.sh: user-space instructions per message of wsgate, nginx and HAProxy on the
# same workload (valgrind's callgrind), figures that do not depend on how busy the machine is.
#
#   bench/instructions.sh     (about 2 minutes on the 2-vCPU benchmark machine)
#
# Each proxy runs under callgrind as one process with one worker, configured as in bench/run.sh
# otherwise (the same templates, so the same buffer sizes and limits):
#   wsgate-raw  ws:// to wsgate's raw route, TCP echo (examples/tcp_echo) behind;
#               bench/wsgate.toml.template with `[runtime] worker_threads = 1`, `session_threads = 1`
#               and `session_io = "epoll"` (valgrind 3.19 cannot run the io_uring loop; see below)
#   wsgate-lp   the same, length-prefixed route
#   nginx       ws:// to nginx, WebSocket echo (examples/ws_echo) behind;
#               bench/nginx.conf.template with `master_process off; worker_processes 1;`
#   haproxy     tcp:// through HAProxy (`mode tcp`) to the TCP echo: bytes relayed, nothing
#               decoded; bench/haproxy.cfg.template with `nbthread 1`, foreground (-db)
# Rows: 64 B binary ping-pong on 50 and on 1,000 connections (wsload -c 50 -s 64, -c 1000 -s 64),
# and 64 KiB messages on one connection with 4 in flight (wsload -c 1 -s 64KiB -k 4); and, when
# asked for (ROWS=hs_ws),
# handshakes: 8 workers each opening a new connection per handshake and closing it at once
# (wsload --mode handshake -c 8), where one "message" is one handshake (HAProxy, which sees TCP
# connections only, has no such row).
#
# Every proxy is run twice per row, serving N1 and then N2 messages (one message = client ->
# proxy -> echo -> proxy -> client); instructions per message = (I(N2) - I(N1)) / (N2 - N1), so
# start-up, handshakes and shutdown cancel out. Only the proxy runs under callgrind; the backends
# and the client run natively.
#
# Environment overrides: N1 (5000), N2 (50000) for the 64 B rows (4 x N1 and 2 x N2 on 1,000
# connections, where every connection carries fewer messages); BULK_N1 (500), BULK_N2 (3000)
# for the 64 KiB rows; HS_N1 (500), HS_N2 (2500) for the handshake row; TARGETS ("wsgate-raw wsgate-lp nginx haproxy"); ROWS ("echo64_c50
# echo64_c1000 bulk64k_k4"); BUILD=0 (skip cargo build; the binaries must be in target/release).
# Loopback only, ports 28320-28329 (INSTR_PORT_BASE moves them); every process started here is stopped by its PID. Output: a
# Markdown table on stdout; raw callgrind files, configurations and wsload JSON in
# bench/results/instructions-TIMESTAMP/.
set -euo pipefail

cd "$(dirname "$0")/.."
N1=${N1:-5000}
N2=${N2:-50000}
BULK_N1=${BULK_N1:-500}
BULK_N2=${BULK_N2:-3000}
HS_N1=${HS_N1:-500}
HS_N2=${HS_N2:-2500}
TARGETS=${TARGETS:-"wsgate-raw wsgate-lp nginx haproxy"}
ROWS=${ROWS:-"echo64_c50 echo64_c1000 bulk64k_k4"}
BASE=${INSTR_PORT_BASE:-28320}
TCP_ECHO_PORT=$BASE
WS_ECHO_PORT=$((BASE + 1))
WSGATE_PORT=$((BASE + 2))
WSGATE_TLS_PORT=$((BASE + 3))
NGINX_PORT=$((BASE + 4))
NGINX_TLS_PORT=$((BASE + 5))
HAPROXY_PORT=$((BASE + 6))
OUT=bench/results/instructions-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT/nginx-tmp"
RUN=$PWD/$OUT
. bench/common.sh

need_apt=()
command -v valgrind >/dev/null || need_apt+=(valgrind)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need_apt+=(nginx)
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v openssl >/dev/null || need_apt+=(openssl)
if [ "${#need_apt[@]}" -gt 0 ]; then
    # Installed as programs only: no service is started by the packages.
    had_policy=0
    [ -e /usr/sbin/policy-rc.d ] && had_policy=1
    [ "$had_policy" = 1 ] || printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    [ "$had_policy" = 1 ] || rm -f /usr/sbin/policy-rc.d
fi
export PATH=$PATH:/usr/sbin:/sbin
bench_build
if [ "${BUILD:-1}" != 0 ]; then
    cargo build --release --quiet --example ws_echo
fi
for b in wsgate wsload examples/tcp_echo examples/ws_echo; do
    [ -x "$BIN/$b" ] || { echo "instructions.sh: $BIN/$b is missing" >&2; exit 1; }
done

# The templates' TLS listeners need a certificate (unused here): run.sh's throwaway one.
CERT=bench/results/tls.crt
KEY=bench/results/tls.key
if [ ! -s "$CERT" ] || [ ! -s "$KEY" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$KEY" -out "$CERT" -days 30 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
fi
CERT=$PWD/$CERT
KEY=$PWD/$KEY
HAPROXY_MAXCONN=$((($(ulimit -n) - 200) / 2))

fill() {
    sed -e "s|@RUN@|$RUN|g" -e "s|@CERT@|$CERT|g" -e "s|@KEY@|$KEY|g" \
        -e "s|@TCP_ECHO_PORT@|$TCP_ECHO_PORT|g" -e "s|@WS_ECHO_PORT@|$WS_ECHO_PORT|g" \
        -e "s|@WSGATE_PORT@|$WSGATE_PORT|g" -e "s|@WSGATE_TLS_PORT@|$WSGATE_TLS_PORT|g" \
        -e "s|@NGINX_PORT@|$NGINX_PORT|g" -e "s|@NGINX_TLS_PORT@|$NGINX_TLS_PORT|g" \
        -e "s|@HAPROXY_PORT@|$HAPROXY_PORT|g" -e "s|@HAPROXY_MAXCONN@|$HAPROXY_MAXCONN|g" \
        -e "s|@FLOOD_PORT@|$((BASE + 7))|g" -e "s|@HAPROXY_FLOOD_PORT@|$((BASE + 8))|g" \
        -e "s|@WSGATE_WORKERS@|1|g" -e "s|@NGINX_WORKERS@|1|g" -e "s|@HAPROXY_NBTHREAD@|1|g" "$1"
}
# One worker each, everything else as in bench/run.sh, except that wsgate's session threads run on
# epoll: under valgrind 3.19 (Debian 12) a thread blocked in io_uring_enter stops every other
# thread, so with io_uring the gateway never gets to listen. The table counts the epoll loop.
fill bench/wsgate.toml.template | sed -e 's/^session_io = "auto"$/session_io = "epoll"/' >"$OUT/wsgate.toml"
grep -q '^session_io = "epoll"$' "$OUT/wsgate.toml" ||
    { echo "instructions.sh: wsgate.toml.template changed: cannot set session_io = \"epoll\"" >&2; exit 1; }
fill bench/nginx.conf.template |
    sed -e 's/^master_process on;/master_process off;/' -e 's/^worker_processes auto;/worker_processes 1;/' >"$OUT/nginx.conf"
fill bench/haproxy.cfg.template | sed -e 's/^\( *\)nbthread 2$/\1nbthread 1/' >"$OUT/haproxy.cfg"
grep -q '^master_process off;' "$OUT/nginx.conf" && grep -q '^worker_processes 1;' "$OUT/nginx.conf" ||
    { echo "instructions.sh: nginx.conf.template changed: cannot set one worker" >&2; exit 1; }
grep -q '^worker_threads = 1$' "$OUT/wsgate.toml" ||
    { echo "instructions.sh: wsgate.toml.template changed: cannot set one worker thread" >&2; exit 1; }
grep -q '^ *nbthread 1$' "$OUT/haproxy.cfg" ||
    { echo "instructions.sh: haproxy.cfg.template changed: cannot set nbthread 1" >&2; exit 1; }
"$BIN/wsgate" check --config "$OUT/wsgate.toml" >/dev/null
nginx -t -q -e "$RUN/nginx-error.log" -c "$RUN/nginx.conf" -p "$RUN" 2>>"$OUT/nginx-error.log"
haproxy -c -q -f "$OUT/haproxy.cfg"

"$BIN/examples/tcp_echo" "127.0.0.1:$TCP_ECHO_PORT" >"$OUT/tcp_echo.log" 2>&1 &
pids+=($!)
"$BIN/examples/ws_echo" "127.0.0.1:$WS_ECHO_PORT" >"$OUT/ws_echo.log" 2>&1 &
pids+=($!)
wait_port "$TCP_ECHO_PORT"
wait_port "$WS_ECHO_PORT"

# callgrind_run TARGET NAME N ARGS...: the proxy under callgrind serving N messages of wsload
# ARGS; prints the proxy's instruction total.
callgrind_run() {
    local t=$1 name=$2 n=$3 port url stop
    shift 3
    local cmd=(valgrind --tool=callgrind --callgrind-out-file="$RUN/callgrind.$name")
    case "$t" in
        wsgate-raw | wsgate-lp)
            cmd+=("$BIN/wsgate" --config "$OUT/wsgate.toml")
            port=$WSGATE_PORT
            url=ws://127.0.0.1:$WSGATE_PORT/raw
            [ "$t" = wsgate-lp ] && url=ws://127.0.0.1:$WSGATE_PORT/lp
            stop=INT
            ;;
        nginx)
            cmd+=(nginx -e "$RUN/nginx-error.log" -c "$RUN/nginx.conf" -p "$RUN")
            port=$NGINX_PORT
            url=ws://127.0.0.1:$NGINX_PORT/
            stop=TERM
            ;;
        haproxy)
            cmd+=(haproxy -db -f "$OUT/haproxy.cfg")
            port=$HAPROXY_PORT
            url=tcp://127.0.0.1:$HAPROXY_PORT
            stop=TERM
            ;;
    esac
    WSGATE_LOG=warn "${cmd[@]}" >"$OUT/proxy.$name.out" 2>"$OUT/valgrind.$name.log" &
    local pid=$!
    pids+=("$pid")
    wait_port "$port"
    # The port answers once it is bound; the signal handlers are in place a moment later.
    sleep 1
    "$BIN/wsload" "$url" "$@" -n "$n" --timeout 900 --json >"$OUT/wsload.$name.json" ||
        echo "instructions.sh: wsload failed for $name (see $OUT/wsload.$name.json)" >&2
    # Each proxy stops on this signal and exits normally, so callgrind writes its counts. Under
    # valgrind a signal can go unnoticed (seen with nginx on a busy machine): it is sent again
    # every 5 s, for at most a minute.
    local tries=0
    while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 12 ]; do
        kill -"$stop" "$pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        tries=$((tries + 1))
    done
    wait "$pid" || true
    awk '/^summary:/ { print $2 }' "$RUN/callgrind.$name"
}

# Messages wsload counted and errors it saw, from a run's JSON.
checked() {
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j.get("messages", j.get("handshakes", "?")), j.get("errors", "?"))' \
        "$OUT/wsload.$1.json" 2>/dev/null || echo "? ?"
}

# 1234567 -> 1,234,567
group() { echo "$1" | sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/' -e 'ta'; }

echo "## Proxy user-space instructions per message (callgrind; $OUT)"
echo
echo "| workload | proxy | N1 | I(N1) | N2 | I(N2) | instructions per message |"
echo "|---|---|---|---|---|---|---|"
for row in $ROWS; do
    case "$row" in
        echo64_c50) args=(-c 50 -s 64) n1=$N1 n2=$N2 label="64 B, 50 connections" ;;
        echo64_c1000) args=(-c 1000 -s 64) n1=$((N1 * 4)) n2=$((N2 * 2)) label="64 B, 1,000 connections" ;;
        bulk64k_k4) args=(-c 1 -s 64KiB -k 4) n1=$BULK_N1 n2=$BULK_N2 label="64 KiB, 1 connection, 4 in flight" ;;
        hs_ws) args=(--mode handshake -c 8) n1=$HS_N1 n2=$HS_N2 label="handshakes, 8 at a time (per handshake)" ;;
        *) echo "instructions.sh: unknown row $row" >&2; exit 2 ;;
    esac
    for t in $TARGETS; do
        [ "$row" = hs_ws ] && [ "$t" = haproxy ] && continue
        a=$(callgrind_run "$t" "$row.$t.n1" "$n1" "${args[@]}")
        b=$(callgrind_run "$t" "$row.$t.n2" "$n2" "${args[@]}")
        for name in "$row.$t.n1" "$row.$t.n2"; do
            read -r m e <<<"$(checked "$name")"
            [ "$e" = 0 ] || echo "instructions.sh: $name: wsload reported errors=$e (messages $m)" >&2
        done
        echo "| $label | $t | $(group "$n1") | $(group "$a") | $(group "$n2") | $(group "$b") | $(group $(((b - a) / (n2 - n1)))) |"
    done
done
echo
# Which loop carried wsgate's sessions under callgrind (epoll, set above): the loop's functions in
# the profile say.
for f in "$RUN"/callgrind.*.wsgate-*.n2; do
    [ -e "$f" ] || continue
    if grep -q 'UringLoop' "$f"; then
        io=io_uring
    elif grep -q 'EventLoop' "$f"; then
        io=epoll
    else
        io="neither (no session thread ran)"
    fi
    echo "wsgate's session threads under callgrind: $io"
    break
done
echo "raw files: $OUT"
