#!/usr/bin/env bash
# bench/run.sh: the performance matrix, wsgate against its peers, same client, same
# backends, same machine, one run.
#
#   bench/run.sh            the full matrix (5 repetitions, 5 s + 1 s warm-up per run, ~60 min)
#   bench/run.sh --quick    a reduced matrix to check the setup (1 repetition, short runs); it
#                           writes RUN/summary.md only, never BENCHMARKS.md or bench/*.svg
#
# Environment overrides: REPS, DURATION, WARMUP, IDLE_SESSIONS, WEBSOCKIFY_IDLE_SESSIONS,
# IDLE_HOLD, HS_WORKERS, BENCH_PORT_BASE (28100; ports base..base+49 must be free, and are kept
# below the kernel's ephemeral range), TARGETS, ROWS, CODEC=0 (skip the criterion benchmarks),
# BUILD=0 (skip cargo build), QUIET_MAX, QUIET_WAIT, OTHER_MAX (see below), BINARIES=DIR (use the binaries in DIR, e.g. an earlier run's bin/),
# REPORT_BASE="RUN_DIR..." (earlier runs this one completes, for the report), DOCS=0 (a full run
# that does not rewrite BENCHMARKS.md and bench/*.svg; DOCS=1 makes a quick run write them).
#
# Peer tuning (before the matrix): every tuned peer (nginx worker_processes, HAProxy nbthread,
# wsgate [runtime] worker_threads, the same for wsgate-raw, wsgate-epoll and wsgate-lp) is probed with each
# count of TUNE_CANDIDATES ("1 2"), alternating, TUNE_REPS (3; --quick 1) times TUNE_DURATION
# (3 s; --quick 1) after TUNE_WARMUP (0.5 s): 64 B ping-pong on 50 connections for the message
# rows and hs_ws for the handshake rows (HAProxy, driven with tcp://, uses its message choice
# for everything). Per peer and class, the count with the higher median rate is used by the
# matrix; RUN/tuning.md and RUN/tuning.json hold the choices and the probe numbers, and every
# result carries its "tuning". TUNE=0 skips the probes (every peer then runs with one worker
# per CPU, the usual default); NGINX_WORKERS=N, HAPROXY_NBTHREAD=N, WSGATE_WORKERS=N force a count for
# that peer (no probe).
#
# INSTR=1: also run bench/instructions.sh (callgrind, ~2 min; ports 28320-28329) and keep its
# table in RUN/instructions.md for the report.
#
# Rows (ROWS): echo64_c1 echo64_c10 echo64_c50 echo64_c200 echo64_c1000 (64 B ping-pong, 1 in
# flight per connection; websockify cannot hold 1,000), bulk64k_k1 bulk64k_k4 (64 KiB messages on one connection), wss_echo64_c50
# wss_bulk64k_k4 (the same over TLS: wsgate, nginx and direct-ws terminate it), hs_ws hs_wss
# (handshakes/s), idle_plain idle_tls (memory per idle session), fairness (wsgate-raw, nginx,
# HAProxy: 64 B ping-pong on FAIR_CONNS (20) connections alone, then beside one session whose
# backend floods a client that reads 16 KiB every 5 ms; rows fairness_alone / fairness_flood).
#
# Targets: wsgate-raw, wsgate-lp (wsgate's raw / length-prefixed route in front of the TCP echo
# example), wsgate-epoll (the raw route with the session threads on epoll, `session_io =
# "epoll"`, where wsgate-raw has the default, io_uring here), websockify (in front of the same
# TCP echo), nginx (WebSocket proxy in front of the ws echo example), haproxy (mode tcp in front of the TCP echo; driven with tcp://), direct-ws
# and direct-tcp (the client against the backends).
#
# Everything listens on and connects to 127.0.0.1 only. Every run is bounded in time (wsload
# --timeout) and every process this script starts is stopped by its PID (and its descendants)
# when the script ends.
#
# Raw results: bench/results/run-*/results.jsonl (one wsload JSON object per run). The tables in
# BENCHMARKS.md, bench/latency.svg and bench/throughput.svg are regenerated from them by
# bench/report.py --docs. To redo some targets or rows only: TARGETS=... ROWS=...
# REPORT_BASE=bench/results/run-OLD bench/run.sh.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

REPS=${REPS:-5}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
IDLE_SESSIONS=${IDLE_SESSIONS:-10000}
# websockify 0.10 waits with select(), which fails for descriptors >= 1024 ("filedescriptor out
# of range in select()"): it cannot hold more than about 500 sessions at once.
WEBSOCKIFY_IDLE_SESSIONS=${WEBSOCKIFY_IDLE_SESSIONS:-400}
IDLE_HOLD=${IDLE_HOLD:-3}
HS_WORKERS=${HS_WORKERS:-8}
PORT_BASE=${BENCH_PORT_BASE:-28100}
TARGETS=${TARGETS:-"wsgate-raw wsgate-epoll wsgate-lp websockify nginx haproxy direct-ws direct-tcp"}
ROWS=${ROWS:-"echo64_c1 echo64_c10 echo64_c50 echo64_c200 echo64_c1000 bulk64k_k1 bulk64k_k4 wss_echo64_c50 wss_bulk64k_k4 hs_ws hs_wss idle_plain idle_tls fairness"}
CODEC=${CODEC:-1}
BUILD=${BUILD:-1}
# Shared machines: wait up to QUIET_WAIT s for busy CPU < QUIET_MAX before each run, and repeat a
# run (twice at most) when more than OTHER_MAX CPU-s of it went to other processes.
QUIET_MAX=${QUIET_MAX:-0.10}
QUIET_WAIT=${QUIET_WAIT:-60}
OTHER_MAX=${OTHER_MAX:-1.0}
TUNE=${TUNE:-1}
TUNE_CANDIDATES=${TUNE_CANDIDATES:-"1 2"}
TUNE_REPS=${TUNE_REPS:-3}
TUNE_DURATION=${TUNE_DURATION:-3}
TUNE_WARMUP=${TUNE_WARMUP:-0.5}
FAIR_CONNS=${FAIR_CONNS:-20}
INSTR=${INSTR:-0}
QUICK=0

for arg in "$@"; do
    case "$arg" in
        --quick)
            QUICK=1
            REPS=${REPS_QUICK:-1}
            DURATION=2
            WARMUP=0.5
            IDLE_SESSIONS=2000
            WEBSOCKIFY_IDLE_SESSIONS=200
            IDLE_HOLD=2
            CODEC=0
            TUNE_REPS=${TUNE_REPS_QUICK:-1}
            TUNE_DURATION=1
            TUNE_WARMUP=0.3
            ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
            exit 0
            ;;
        *)
            echo "run.sh: unknown argument $arg" >&2
            exit 2
            ;;
    esac
done

TCP_ECHO_PORT=$((PORT_BASE + 0))
WS_ECHO_PORT=$((PORT_BASE + 1))
WS_ECHO_TLS_PORT=$((PORT_BASE + 2))
FLOOD_PORT=$((PORT_BASE + 3))
WSGATE_PORT=$((PORT_BASE + 10))
WSGATE_TLS_PORT=$((PORT_BASE + 11))
WEBSOCKIFY_PORT=$((PORT_BASE + 20))
NGINX_PORT=$((PORT_BASE + 30))
NGINX_TLS_PORT=$((PORT_BASE + 31))
HAPROXY_PORT=$((PORT_BASE + 40))
HAPROXY_FLOOD_PORT=$((PORT_BASE + 41))
ALL_PORTS="$TCP_ECHO_PORT $WS_ECHO_PORT $WS_ECHO_TLS_PORT $FLOOD_PORT $WSGATE_PORT $WSGATE_TLS_PORT $WEBSOCKIFY_PORT $NGINX_PORT $NGINX_TLS_PORT $HAPROXY_PORT $HAPROXY_FLOOD_PORT"

RESULTS=$ROOT/bench/results
RUN=$RESULTS/run-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN/nginx-tmp"
OUT=$RUN/results.jsonl
: >"$OUT"
START_TIME=$(date +%s)

log() { printf '[%4ds] %s\n' "$(($(date +%s) - START_TIME))" "$*" | tee -a "$RUN/run.log" >&2; }

# --- limits -------------------------------------------------------------------------------------
# 10,000 idle sessions through a proxy = 20,000+ sockets in the proxy alone. Where the hard limit
# cannot be raised (a container without CAP_SYS_RESOURCE), use the hard limit and cap the number
# of idle sessions so that one proxy process fits: (limit - 1000) / 2.
if ! ulimit -n 65536 2>/dev/null; then
    ulimit -n "$(ulimit -Hn)"
    max_idle=$((($(ulimit -n) - 1000) / 2))
    if [ "$IDLE_SESSIONS" -gt "$max_idle" ]; then
        echo "run.sh: open file limit $(ulimit -n) (cannot raise it to 65536): idle sessions capped at $max_idle" >&2
        IDLE_SESSIONS=$max_idle
    fi
fi

HAPROXY_MAXCONN=$((($(ulimit -n) - 200) / 2))
# echo64_c1000: 1,000 descriptors in wsload, 2,000 in a proxy.
if [ "$(ulimit -n)" -lt 2500 ] && [[ " $ROWS " == *" echo64_c1000 "* ]]; then
    echo "run.sh: open file limit $(ulimit -n) is below 2,500: row echo64_c1000 left out" >&2
    ROWS=$(echo " $ROWS " | sed -e 's/ echo64_c1000 / /' -e 's/^ *//' -e 's/ *$//')
fi

# --- tools ---------------------------------------------------------------------------------------
need_apt=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v websockify >/dev/null || need_apt+=(websockify)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v ss >/dev/null || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
export PATH=$PATH:/usr/sbin:/sbin
[ -n "${BINARIES:-}" ] && BUILD=0
if [ "$BUILD" = 1 ]; then
    # Two builds: the examples pull in the test-only features of dev-dependencies (tokio's
    # test-util), which must not reach the binaries under measurement.
    log "cargo build --release --workspace --bins; cargo build --release --examples"
    cargo build --release --workspace --bins 2>&1 | tail -n 3 >&2
    cargo build --release --examples 2>&1 | tail -n 3 >&2
fi
# BINARIES=DIR: take the binaries from DIR (e.g. an earlier run's bin/, to re-run some rows with
# exactly the programs of that run) instead of target/release.
SRC_BIN=${BINARIES:-$ROOT/target/release}
for b in wsload wsgate examples/tcp_echo examples/ws_echo; do
    [ -x "$SRC_BIN/$b" ] || { echo "run.sh: $SRC_BIN/$b is missing (cargo build --release --workspace --bins; cargo build --release --examples)" >&2; exit 1; }
done
# Run private copies, so that a rebuild during the run cannot swap a binary between repetitions.
BIN=$RUN/bin
mkdir -p "$BIN/examples"
for b in wsload wsgate examples/tcp_echo examples/ws_echo; do cp "$SRC_BIN/$b" "$BIN/$b"; done
WSLOAD=$BIN/wsload

# --- throwaway certificate for the wss:// targets --------------------------------------------------
CERT=$RESULTS/tls.crt
KEY=$RESULTS/tls.key
if [ ! -s "$CERT" ] || [ ! -s "$KEY" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$KEY" -out "$CERT" -days 30 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
fi

# --- ports ---------------------------------------------------------------------------------------
read -r EPH_LO EPH_HI </proc/sys/net/ipv4/ip_local_port_range
for p in $ALL_PORTS; do
    if [ "$p" -ge "$EPH_LO" ] && [ "$p" -le "$EPH_HI" ]; then
        echo "run.sh: port $p is inside the ephemeral range $EPH_LO-$EPH_HI; set BENCH_PORT_BASE" >&2
        exit 1
    fi
    if [ -n "$(ss -Htln "sport = :$p")" ]; then
        echo "run.sh: port 127.0.0.1:$p is in use; set BENCH_PORT_BASE" >&2
        exit 1
    fi
done

# --- machine -------------------------------------------------------------------------------------
# (errexit off: `cmd | head` may end cmd with SIGPIPE, which is fine here)
set +e
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "kernel: $(uname -srm)"
    echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "uptime: $(uptime)"
    echo "--- lscpu"
    lscpu
    echo "--- free -h"
    free -h
    echo "--- versions"
    echo "wsgate source: commit $(git rev-parse --short HEAD 2>/dev/null), $(git status --porcelain 2>/dev/null | wc -l) paths with uncommitted changes"
    rustc --version
    "$BIN/wsgate" --version 2>&1 | head -n 1
    nginx -v 2>&1
    haproxy -v 2>&1 | head -n 1
    echo "websockify $(dpkg-query -W -f '${Version}' websockify 2>/dev/null) (Debian package), $(python3 --version 2>&1)"
    openssl version
    echo "--- settings"
    echo "reps=$REPS duration=${DURATION}s warmup=${WARMUP}s idle_sessions=$IDLE_SESSIONS websockify_idle_sessions=$WEBSOCKIFY_IDLE_SESSIONS idle_hold=${IDLE_HOLD}s hs_workers=$HS_WORKERS quick=$QUICK tune=$TUNE tune_reps=$TUNE_REPS tune_duration=${TUNE_DURATION}s"
    echo "ulimit -n: $(ulimit -n)"
    echo "--- busiest processes before the run"
    ps -eo pcpu,pid,comm --sort=-pcpu | head -n 6
} >"$RUN/machine.txt" 2>&1
set -e
log "results in $RUN"
log "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- process control -----------------------------------------------------------------------------
STARTED=()

descendants() {
    # All descendants of $1, from one snapshot of the process table.
    ps -eo pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2; pids[NR] = $1 }
        END {
            found[root] = 1
            do {
                more = 0
                for (i = 1; i <= NR; i++) {
                    p = pids[i]
                    if (!(p in found) && (parent[p] in found)) { found[p] = 1; more = 1 }
                }
            } while (more)
            for (p in found) if (p != root) print p
        }'
}

stop_pid() {
    local pid=$1 all p i
    all="$(descendants "$pid") $pid"
    for p in $all; do kill -TERM "$p" 2>/dev/null || true; done
    for i in $(seq 1 50); do
        local alive=0
        for p in $all; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in $all; do kill -KILL "$p" 2>/dev/null || true; done
    wait "$pid" 2>/dev/null || true
}

stop_all() {
    local pid
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    STARTED=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_port() {
    local port=$1 i
    for i in $(seq 1 100); do
        [ -n "$(ss -Htln "sport = :$port")" ] && return 0
        sleep 0.1
    done
    echo "run.sh: nothing listens on $port after 10 s (see $RUN/*.log)" >&2
    return 1
}

# start NAME PORT COMMAND...: start in the background, wait for the port; the PID is in $LAST_PID.
start() {
    local name=$1 port=$2
    shift 2
    "$@" >>"$RUN/$name.log" 2>&1 &
    LAST_PID=$!
    STARTED+=("$LAST_PID")
    wait_port "$port"
}

# fill TEMPLATE OUT COUNT: a configuration with COUNT workers (wsgate worker_threads, nginx
# worker_processes, HAProxy nbthread).
fill() {
    sed -e "s|@RUN@|$RUN|g" -e "s|@CERT@|$CERT|g" -e "s|@KEY@|$KEY|g" \
        -e "s|@TCP_ECHO_PORT@|$TCP_ECHO_PORT|g" -e "s|@WS_ECHO_PORT@|$WS_ECHO_PORT|g" \
        -e "s|@WSGATE_PORT@|$WSGATE_PORT|g" -e "s|@WSGATE_TLS_PORT@|$WSGATE_TLS_PORT|g" \
        -e "s|@NGINX_PORT@|$NGINX_PORT|g" -e "s|@NGINX_TLS_PORT@|$NGINX_TLS_PORT|g" \
        -e "s|@HAPROXY_PORT@|$HAPROXY_PORT|g" -e "s|@HAPROXY_MAXCONN@|$HAPROXY_MAXCONN|g" \
        -e "s|@FLOOD_PORT@|$FLOOD_PORT|g" -e "s|@HAPROXY_FLOOD_PORT@|$HAPROXY_FLOOD_PORT|g" \
        -e "s|@WSGATE_WORKERS@|$3|g" -e "s|@NGINX_WORKERS@|$3|g" -e "s|@HAPROXY_NBTHREAD@|$3|g" "$1" >"$2"
}
NCPU=$(nproc)
# Every count a run may use: the candidates, any forced count, and one per CPU (TUNE=0).
# shellcheck disable=SC2086 # lists of counts, split on purpose
COUNTS=$(printf '%s\n' $TUNE_CANDIDATES ${WSGATE_WORKERS:-} ${NGINX_WORKERS:-} ${HAPROXY_NBTHREAD:-} "$NCPU" | sort -un)
for n in $COUNTS; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: worker count '$n' is not a positive integer" >&2; exit 2; }
    fill bench/wsgate.toml.template "$RUN/wsgate-$n.toml" "$n"
    sed 's/^session_io = "auto"$/session_io = "epoll"/' "$RUN/wsgate-$n.toml" >"$RUN/wsgate-epoll-$n.toml"
    grep -q '^session_io = "epoll"$' "$RUN/wsgate-epoll-$n.toml" || { echo "run.sh: no session_io in bench/wsgate.toml.template" >&2; exit 2; }
    "$BIN/wsgate" check --config "$RUN/wsgate-epoll-$n.toml" >/dev/null
    fill bench/nginx.conf.template "$RUN/nginx-$n.conf" "$n"
    fill bench/haproxy.cfg.template "$RUN/haproxy-$n.cfg" "$n"
    "$BIN/wsgate" check --config "$RUN/wsgate-$n.toml" >/dev/null
    nginx -t -q -e "$RUN/nginx-error.log" -c "$RUN/nginx-$n.conf" -p "$RUN" 2>>"$RUN/nginx-error.log"
    haproxy -c -q -f "$RUN/haproxy-$n.cfg"
done

# peer_of TARGET: the tuned program behind a target (none for websockify and direct-*).
peer_of() {
    case "$1" in
        wsgate-raw | wsgate-lp | wsgate-epoll) echo wsgate ;;
        nginx) echo nginx ;;
        haproxy) echo haproxy ;;
        *) echo none ;;
    esac
}
declare -A KNOB=([wsgate]="worker_threads" [nginx]="worker_processes" [haproxy]="nbthread")

# start_target TARGET [COUNT [CLASS]]: start the backend and the proxy (with COUNT workers, default
# one per CPU); sets SERVER_PID (the process tree whose CPU and memory are measured), BACKEND_PID,
# URL, TLS_URL, EXTRA (wsload options) and TUNING (a JSON object for the results, or "").
start_target() {
    local t=$1 n=${2:-$NCPU} class=${3:-msg} peer
    SERVER_PID="" BACKEND_PID="" URL="" TLS_URL="" EXTRA=() TUNING=""
    peer=$(peer_of "$t")
    if [ "$peer" != none ]; then
        TUNING="{\"peer\":\"$peer\",\"setting\":\"${KNOB[$peer]}\",\"value\":$n,\"class\":\"$class\"}"
    fi
    case "$t" in
        wsgate-raw | wsgate-lp | wsgate-epoll | websockify | haproxy | direct-tcp)
            start tcp_echo "$TCP_ECHO_PORT" "$BIN/examples/tcp_echo" "127.0.0.1:$TCP_ECHO_PORT"
            BACKEND_PID=$LAST_PID
            ;;
        nginx | direct-ws)
            start ws_echo "$WS_ECHO_PORT" "$BIN/examples/ws_echo" "127.0.0.1:$WS_ECHO_PORT"
            BACKEND_PID=$LAST_PID
            ;;
    esac
    case "$t" in
        wsgate-raw | wsgate-lp | wsgate-epoll)
            local conf=$RUN/wsgate-$n.toml
            [ "$t" = wsgate-epoll ] && conf=$RUN/wsgate-epoll-$n.toml
            WSGATE_LOG=warn start wsgate "$WSGATE_TLS_PORT" "$BIN/wsgate" --config "$conf"
            SERVER_PID=$LAST_PID
            local path=/raw
            [ "$t" = wsgate-lp ] && path=/lp
            URL=ws://127.0.0.1:$WSGATE_PORT$path
            TLS_URL=wss://127.0.0.1:$WSGATE_TLS_PORT$path
            ;;
        websockify)
            start websockify "$WEBSOCKIFY_PORT" websockify "127.0.0.1:$WEBSOCKIFY_PORT" "127.0.0.1:$TCP_ECHO_PORT"
            SERVER_PID=$LAST_PID
            URL=ws://127.0.0.1:$WEBSOCKIFY_PORT/
            EXTRA=(--subprotocol binary)
            ;;
        nginx)
            start nginx "$NGINX_TLS_PORT" nginx -e "$RUN/nginx-error.log" -c "$RUN/nginx-$n.conf" -p "$RUN"
            SERVER_PID=$LAST_PID
            URL=ws://127.0.0.1:$NGINX_PORT/
            TLS_URL=wss://127.0.0.1:$NGINX_TLS_PORT/
            ;;
        haproxy)
            start haproxy "$HAPROXY_PORT" haproxy -db -f "$RUN/haproxy-$n.cfg"
            SERVER_PID=$LAST_PID
            URL=tcp://127.0.0.1:$HAPROXY_PORT
            ;;
        direct-ws)
            start ws_echo_tls "$WS_ECHO_TLS_PORT" "$BIN/examples/ws_echo" "127.0.0.1:$WS_ECHO_TLS_PORT" 1 "$CERT" "$KEY"
            SERVER_PID="$BACKEND_PID $LAST_PID"
            BACKEND_PID=""
            URL=ws://127.0.0.1:$WS_ECHO_PORT/
            TLS_URL=wss://127.0.0.1:$WS_ECHO_TLS_PORT/
            ;;
        direct-tcp)
            SERVER_PID=$BACKEND_PID
            BACKEND_PID=""
            URL=tcp://127.0.0.1:$TCP_ECHO_PORT
            ;;
    esac
    sleep 0.3
}

has_row() {
    local t=$1 row=$2
    case " $ROWS " in *" $row "*) ;; *) return 1 ;; esac
    case "$row" in
        hs_ws) [[ "$t" =~ ^(wsgate-raw|websockify|nginx|direct-ws)$ ]] ;;
        hs_wss | idle_tls | wss_echo64_c50 | wss_bulk64k_k4) [[ "$t" =~ ^(wsgate-raw|nginx|direct-ws)$ ]] ;;
        fairness) [[ "$t" =~ ^(wsgate-raw|nginx|haproxy)$ ]] ;;
        # websockify's select() cannot wait on descriptors >= 1024 (see WEBSOCKIFY_IDLE_SESSIONS).
        echo64_c1000) [[ "$t" != websockify ]] ;;
        idle_plain) [[ "$t" != wsgate-lp ]] ;;
        *) return 0 ;;
    esac
}

# wait_quiet: wait (at most QUIET_WAIT s) until the machine's busy CPU over one second is below
# QUIET_MAX (fraction of all CPUs); the servers under test are idle between runs.
wait_quiet() {
    local waited=0 busy
    while :; do
        busy=$(awk 'NR == 1 { b = $2 + $3 + $4 + $7 + $8 + $9; t = b + $5 + $6; print b, t }' /proc/stat)
        sleep 1
        busy=$(awk -v prev="$busy" 'NR == 1 { split(prev, p, " "); b = $2 + $3 + $4 + $7 + $8 + $9; t = b + $5 + $6;
            printf "%.3f", (t > p[2]) ? (b - p[1]) / (t - p[2]) : 0 }' /proc/stat)
        awk -v b="$busy" -v m="$QUIET_MAX" 'BEGIN { exit !(b < m) }' && return 0
        waited=$((waited + 1))
        if [ "$waited" -ge "$QUIET_WAIT" ]; then
            log "machine still busy ($busy of all CPUs) after ${QUIET_WAIT}s; running anyway"
            return 0
        fi
    done
}

# run_row TARGET ROW REP: one wsload run, its JSON appended to results.jsonl.
run_row() {
    local t=$1 row=$2 rep=$3 url=$URL args=() pids=() p
    for p in $SERVER_PID; do pids+=(--server-pid "$p"); done
    for p in $BACKEND_PID; do pids+=(--backend-pid "$p"); done
    case "$row" in
        echo64_c1) args=(-c 1 -s 64) ;;
        echo64_c10) args=(-c 10 -s 64) ;;
        echo64_c50) args=(-c 50 -s 64) ;;
        echo64_c200) args=(-c 200 -s 64) ;;
        echo64_c1000) args=(-c 1000 -s 64) ;;
        wss_echo64_c50) args=(-c 50 -s 64 --insecure); url=$TLS_URL ;;
        wss_bulk64k_k4) args=(-c 1 -s 64KiB -k 4 --insecure); url=$TLS_URL ;;
        fairness_alone | fairness_flood) args=(-c "$FAIR_CONNS" -s 64) ;;
        bulk64k_k1) args=(-c 1 -s 64KiB -k 1) ;;
        bulk64k_k4) args=(-c 1 -s 64KiB -k 4) ;;
        hs_ws) args=(--mode handshake -c "$HS_WORKERS") ;;
        hs_wss) args=(--mode handshake -c "$HS_WORKERS" --insecure); url=$TLS_URL ;;
        idle_plain | idle_tls)
            local n=$IDLE_SESSIONS
            [ "$t" = websockify ] && n=$WEBSOCKIFY_IDLE_SESSIONS
            args=(--mode idle -c "$n" --open-concurrency 64 --settle 1 --connect-timeout 20)
            if [ "$row" = idle_tls ]; then
                args+=(--insecure)
                url=$TLS_URL
            fi
            ;;
    esac
    local timing=(-d "$DURATION" --warmup "$WARMUP" --timeout $((${DURATION%.*} + 30)))
    [[ "$row" == idle_* ]] && timing=(-d "$IDLE_HOLD" --timeout 120)
    local json best="" best_other=999 other attempt
    # The machine may be shared: start on an idle machine, and repeat a run (at most twice)
    # when more than OTHER_MAX CPU-s went to anything else; keep the cleanest attempt.
    for attempt in 1 2 3; do
        wait_quiet
        json=$("$WSLOAD" "$url" "${args[@]}" "${EXTRA[@]}" "${timing[@]}" "${pids[@]}" \
            --json --label "$t/$row/$rep" 2>>"$RUN/wsload.log") || true
        if [ -z "$json" ]; then
            json="{\"label\":\"$t/$row/$rep\",\"errors\":1,\"error_kinds\":[[\"wsload produced no output\",1]]}"
        fi
        # The worker count the proxy ran with (see the tuning step).
        [ -n "$TUNING" ] && json="{\"tuning\":$TUNING,${json#\{}"
        other=$(python3 "$ROOT/bench/report.py" --other-cpu "$json")
        if [ -z "$best" ] || awk -v a="$other" -v b="$best_other" 'BEGIN { exit !(a < b) }'; then
            [ -n "$best" ] && echo "$best" >>"$RUN/discarded.jsonl"
            best=$json
            best_other=$other
        else
            echo "$json" >>"$RUN/discarded.jsonl"
        fi
        awk -v a="$best_other" -v m="$OTHER_MAX" 'BEGIN { exit !(a <= m) }' && break
        # Idle rows are not repeated; beside a flood, the flooding client and backend are other
        # processes by design.
        [[ "$row" == idle_* || "$row" == fairness_flood ]] && break
        log "$t $row rep $rep: $other CPU-s went to other processes; repeating"
    done
    echo "$best" >>"$OUT"
    log "$t $row rep $rep: $(python3 "$ROOT/bench/report.py" --one-line "$best") (other CPU-s $best_other)"
}

# --- flooding session (the fairness row) -----------------------------------------------------------
# bench/flood.py (the flooding backend) and bench/slow_client.py (its slow reader) say what they do.

# run_fairness TARGET REP: with the target started, the ping-pong alone, then beside one
# flooding session.
run_fairness() {
    local t=$1 rep=$2 mode=raw cmode=ws port=$WSGATE_PORT path=/flood slow
    case "$t" in
        nginx) mode=ws port=$NGINX_PORT ;;
        haproxy) cmode=tcp port=$HAPROXY_FLOOD_PORT path=- ;;
    esac
    start flood "$FLOOD_PORT" python3 "$ROOT/bench/flood.py" "$mode" "$FLOOD_PORT"
    run_row "$t" fairness_alone "$rep"
    python3 "$ROOT/bench/slow_client.py" "$cmode" "$port" "$path" $((${DURATION%.*} + ${WARMUP%.*} + 40)) \
        >>"$RUN/slow_client.log" 2>&1 &
    slow=$!
    STARTED+=("$slow")
    sleep 1
    kill -0 "$slow" 2>/dev/null || log "$t fairness rep $rep: the flooding client ended early (see $RUN/slow_client.log)"
    run_row "$t" fairness_flood "$rep"
    stop_pid "$slow"
}

# --- peer tuning -----------------------------------------------------------------------------------
# For every tuned peer among TARGETS: the worker count for the message rows (64 B ping-pong, 50
# connections) and for the handshake rows (hs_ws), from TUNE_REPS alternating probes per
# candidate, or forced (NGINX_WORKERS, HAPROXY_NBTHREAD, WSGATE_WORKERS), or one per CPU (TUNE=0).
declare -A FORCED=([wsgate]=${WSGATE_WORKERS:-} [nginx]=${NGINX_WORKERS:-} [haproxy]=${HAPROXY_NBTHREAD:-})
declare -A FORCED_VAR=([wsgate]=WSGATE_WORKERS [nginx]=NGINX_WORKERS [haproxy]=HAPROXY_NBTHREAD)
declare -A PROBE_TARGET=([wsgate]=wsgate-raw [nginx]=nginx [haproxy]=haproxy)
declare -A CHOICE
TUNE_LOG=$RUN/tuning.jsonl
: >"$TUNE_LOG"
PEERS=""
for t in $TARGETS; do
    p=$(peer_of "$t")
    [ "$p" = none ] && continue
    case " $PEERS " in *" $p "*) ;; *) PEERS="$PEERS $p" ;; esac
done

# tune_probe PEER CLASS COUNT REP: one short run against the started target, its JSON to tuning.jsonl.
tune_probe() {
    local peer=$1 class=$2 n=$3 rep=$4 args json pids=() p
    for p in $SERVER_PID; do pids+=(--server-pid "$p"); done
    case "$class" in
        msg) args=("$URL" -c 50 -s 64) ;;
        hs) args=("$URL" --mode handshake -c "$HS_WORKERS") ;;
    esac
    wait_quiet
    json=$("$WSLOAD" "${args[@]}" "${EXTRA[@]}" -d "$TUNE_DURATION" --warmup "$TUNE_WARMUP" \
        --timeout $((${TUNE_DURATION%.*} + 30)) "${pids[@]}" --json --label "tune/$peer/$class/$n/$rep" \
        2>>"$RUN/wsload.log") || true
    [ -n "$json" ] || json="{\"label\":\"tune/$peer/$class/$n/$rep\",\"errors\":1}"
    echo "{\"tune\":{\"peer\":\"$peer\",\"class\":\"$class\",\"value\":$n,\"rep\":$rep},${json#\{}" >>"$TUNE_LOG"
    log "tuning $peer $class ${KNOB[$peer]} $n rep $rep: $(python3 "$ROOT/bench/report.py" --one-line "$json")"
}

for p in $PEERS; do
    if [ -n "${FORCED[$p]}" ]; then
        echo "{\"fixed\":{\"peer\":\"$p\",\"value\":${FORCED[$p]},\"why\":\"forced (${FORCED_VAR[$p]}=${FORCED[$p]})\"}}" >>"$TUNE_LOG"
        continue
    fi
    if [ "$TUNE" = 0 ]; then
        echo "{\"fixed\":{\"peer\":\"$p\",\"value\":$NCPU,\"why\":\"TUNE=0: one per CPU\"}}" >>"$TUNE_LOG"
        continue
    fi
    t=${PROBE_TARGET[$p]}
    for rep in $(seq 1 "$TUNE_REPS"); do
        # Alternate the order from one repetition to the next, so that a drift of the machine
        # does not favour one candidate.
        order=$TUNE_CANDIDATES
        # shellcheck disable=SC2086
        [ $((rep % 2)) = 0 ] && order=$(printf '%s\n' $TUNE_CANDIDATES | tac | tr '\n' ' ')
        for n in $order; do
            start_target "$t" "$n"
            tune_probe "$p" msg "$n" "$rep"
            # HAProxy is driven with tcp://: no handshake rows, its message choice serves all.
            [ "$p" != haproxy ] && tune_probe "$p" hs "$n" "$rep"
            stop_all
        done
    done
done
if [ -n "$PEERS" ]; then
    while read -r p class n; do
        CHOICE[$p/$class]=$n
    done < <(python3 "$ROOT/bench/report.py" --tuning "$RUN")
    log "tuning: $(for k in "${!CHOICE[@]}"; do printf '%s=%s ' "$k" "${CHOICE[$k]}"; done)(RUN/tuning.md)"
fi

# count_for TARGET CLASS: the worker count the matrix runs TARGET with for rows of CLASS.
count_for() {
    local p
    p=$(peer_of "$1")
    if [ "$p" = none ]; then echo "$NCPU"; else echo "${CHOICE[$p/$2]:-$NCPU}"; fi
}

# --- the matrix ----------------------------------------------------------------------------------
# Rows run against one started server, by class: the message rows with the target's message
# count, the handshake rows with its handshake count.
MSG_ROWS="echo64_c1 echo64_c10 echo64_c50 echo64_c200 echo64_c1000 bulk64k_k1 bulk64k_k4 wss_echo64_c50 wss_bulk64k_k4"
HS_ROWS="hs_ws hs_wss"
# Repetitions outside, targets inside: every target's first repetition, then every target's
# second, ..., the order of the targets reversed every other repetition, so that a machine whose
# load drifts during the run (a shared VM) weighs on every target alike instead of on the ones
# measured in its busy minutes. Every repetition starts its servers afresh.
REVERSED=$(echo "$TARGETS" | tr ' ' '\n' | sed '/^$/d' | tac | tr '\n' ' ')
for rep in $(seq 1 "$REPS"); do
    order=$TARGETS
    [ $((rep % 2)) = 0 ] && order=$REVERSED
    for t in $order; do
        for class in msg hs; do
            rows=$MSG_ROWS
            [ "$class" = hs ] && rows=$HS_ROWS
            todo=""
            for row in $rows; do has_row "$t" "$row" && todo="$todo $row"; done
            [ -n "$todo" ] || continue
            n=$(count_for "$t" "$class")
            start_target "$t" "$n" "$class"
            p=$(peer_of "$t")
            what="$class rows"
            [ "$p" != none ] && what="$what, ${KNOB[$p]} $n"
            log "$t ($what, rep $rep): server pid(s) $SERVER_PID, backend pid ${BACKEND_PID:--}"
            for row in $todo; do run_row "$t" "$row" "$rep"; done
            stop_all
        done
        if has_row "$t" fairness; then
            start_target "$t" "$(count_for "$t" msg)" msg
            run_fairness "$t" "$rep"
            stop_all
        fi
        # Idle sessions: a freshly started server, so that RSS growth is not hidden by memory
        # an earlier run left allocated (the message rows' workers).
        for row in idle_plain idle_tls; do
            has_row "$t" "$row" || continue
            start_target "$t" "$(count_for "$t" msg)" msg
            run_row "$t" "$row" "$rep"
            stop_all
        done
    done
done

if [ "$INSTR" = 1 ]; then
    log "bench/instructions.sh (callgrind)"
    BUILD=0 bench/instructions.sh >"$RUN/instructions.md" 2>"$RUN/instructions.log" ||
        log "bench/instructions.sh failed (see $RUN/instructions.log)"
fi

if [ "$CODEC" = 1 ]; then
    log "codec micro-benchmarks (criterion)"
    cargo bench --bench codec -- --warm-up-time 1 --measurement-time 2 >"$RUN/codec.txt" 2>&1 || log "cargo bench failed (see $RUN/codec.txt)"
fi

log "report"
# REPORT_BASE: earlier run directories whose results this run completes (its rows replace theirs).
# DOCS=1 (the default for a full run): also BENCHMARKS.md's generated part and bench/*.svg.
DOCS=${DOCS:-$((1 - QUICK))}
docs=()
[ "$DOCS" = 1 ] && docs=(--docs)
# shellcheck disable=SC2086
python3 "$ROOT/bench/report.py" "${docs[@]}" ${REPORT_BASE:-} "$RUN"
log "done in $(($(date +%s) - START_TIME)) s"
