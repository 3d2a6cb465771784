# bench/common.sh: what the single-gateway benchmark scripts share (sourced, not run).
#
#   . "$(dirname "$0")/common.sh"   # after `cd` to the repository root and setting OUT
#
# - `pids`: every process a script starts goes in here; all are stopped by PID at exit.
# - `wait_port PORT`: wait (at most 20 s) until something listens on 127.0.0.1:PORT.
# - `bench_build`: unless BUILD=0, the release binaries the scripts run (wsgate, the TCP echo
#   example, wsload); `BIN` is where they are.
# - `need_valgrind`: install valgrind (Debian) when it is missing.
# - `start_tcp_echo PORT`: the TCP echo example on 127.0.0.1:PORT, started and waited for.

BENCH_NAME=$(basename "$0")
BIN=target/release

pids=()
bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap bench_cleanup EXIT

wait_port() {
    for _ in $(seq 1 400); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "$BENCH_NAME: nothing listens on port $1" >&2
    exit 1
}

bench_build() {
    if [ "${BUILD:-1}" != 0 ]; then
        cargo build --release --quiet --bin wsgate --example tcp_echo
        cargo build --release --quiet -p wsload
    fi
}

need_valgrind() {
    if ! command -v valgrind >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
    fi
}

start_tcp_echo() {
    "$BIN/examples/tcp_echo" "127.0.0.1:$1" >/dev/null &
    pids+=($!)
    wait_port "$1"
}
