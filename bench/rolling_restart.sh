#!/usr/bin/env bash
# bench/rolling_restart.sh: a rolling restart of three gateways behind HAProxy, at scale.
#
#   sudo bench/rolling_restart.sh [CLIENTS] [PAUSE_MS]
#
# Runs the scenario of tests/it/fleet.rs with the release build: three gateways, each in its
# own network namespace behind a veth pair, HAProxy in front (mode tcp, roundrobin,
# send-proxy-v2, health checks on /readyz every 200 ms); CLIENTS WebSocket clients (default
# 1000) exchanging numbered messages, one in flight, PAUSE_MS apart (default 50), reconnecting
# when closed, while each gateway in turn is drained with SIGTERM and started again. The test's
# own assertions hold at any size (no refused attempt, no gap or repeat, every drained session
# closed with 1001, the client's address in the access lines); this script prints its report
# as a Markdown table on stdout and keeps the whole output in bench/results/.
#
# Needs root (network namespaces, veth links) and haproxy (Debian package haproxy).
set -euo pipefail

cd "$(dirname "$0")/.."
CLIENTS=${1:-1000}
PAUSE_MS=${2:-50}
if [ "$(id -u)" -ne 0 ]; then
    echo "bench/rolling_restart.sh needs root: it creates network namespaces and veth links" >&2
    exit 1
fi
# Every client is a socket in the test process; HAProxy raises its own limit from maxconn.
ulimit -n "$(ulimit -Hn)"
mkdir -p bench/results
OUT=bench/results/rolling-restart-$(date +%Y%m%d-%H%M%S).txt

status=0
WSGATE_FLEET_CLIENTS=$CLIENTS WSGATE_FLEET_PAUSE_MS=$PAUSE_MS \
    cargo test --release --quiet --test it fleet::rolling_restart -- --nocapture \
    >"$OUT" 2>&1 || status=$?
line=$(grep -m1 '^fleet report:' "$OUT" || true)
if [ -z "$line" ]; then
    cat "$OUT" >&2
    echo "bench/rolling_restart.sh: no report (exit $status); output in $OUT" >&2
    exit 1
fi
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
verdict=passed
[ "$status" -eq 0 ] || verdict="FAILED (see $OUT)"

echo "Rolling restart of $(field instances) gateways behind HAProxy: $(field clients) clients," \
    "one message in flight each, ${PAUSE_MS} ms apart; release build; test $verdict."
echo
echo "| clients | connection attempts | refused | reconnects | re-established after Close, p50 | p99 | max | messages exchanged | HAProxy redispatches | marked down after SIGTERM (max) | run |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
echo "| $(field clients) | $(field attempts) | $(field refused) | $(field reconnects) |" \
    "$(field reestablish_p50_ms) ms | $(field reestablish_p99_ms) ms | $(field reestablish_max_ms) ms |" \
    "$(field messages) | $(field haproxy_redispatches) | $(field down_after_max_ms) ms | $(field seconds) s |"
exit "$status"
