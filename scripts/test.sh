#!/usr/bin/env bash
# The one test command of wsgate: ./scripts/test.sh
#
# On a fresh Debian 12 machine with only the Rust toolchain it installs what the tests need
# (Debian packages chromium for tests/it/browser.rs, redis-server for
# tests/it/targets_sources.rs, nginx for tests/it/fallback_browser.rs, systemd and prometheus for
# tests/it/systemd.rs and tests/it/deploy.rs; Python venv .venv with kosoku for
# tests/it/autobahn.rs, websockets for scripts/check_readme_demo.py and kubernetes-validate for
# tests/it/deploy.rs), then runs the format
# check, clippy, every test, and README's first command (the demo). Exits non-zero if anything
# fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

step() { printf '\n==> %s\n' "$*"; }

# Run a command quietly; show its output only if it fails.
quiet() {
    local out
    out=$(mktemp)
    if ! "$@" >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        echo "test.sh: failed: $*" >&2
        return 1
    fi
    rm -f "$out"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        env DEBIAN_FRONTEND=noninteractive "$@"
    else
        sudo env DEBIAN_FRONTEND=noninteractive "$@"
    fi
}

# --- the release build, in the background ----------------------------------------------------
# README's first command runs a release build (the release profile optimises the gateway and its
# libraries as one unit: about 6 minutes on 2 CPUs, most of it one single-threaded step). Started
# first, it overlaps with the installs, the checks and the tests, which build the dev profile in
# their own directory (target/debug), so neither waits for the other's lock. The README step
# waits for it.
release_log=$(mktemp)
setsid cargo build --release --bin wsgate >"$release_log" 2>&1 &
release_pid=$!
# If this script stops early, the build (cargo and its compilers, one process group) stops too.
trap 'kill -- -"$release_pid" 2>/dev/null || true; rm -f "$release_log"' EXIT

# --- what the tests need ---------------------------------------------------------------------
apt_packages=()
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    apt_packages+=(chromium)
fi
# openssl s_server: an independent TLS backend (tests/it/backend_tls.rs).
if ! command -v openssl >/dev/null 2>&1; then
    apt_packages+=(openssl)
fi
# redis-server (and redis-cli) for tests/it/targets_sources.rs.
if [ ! -x /usr/bin/redis-server ] || [ ! -x /usr/bin/redis-cli ]; then
    apt_packages+=(redis-server)
fi
# websockify (its option list, tests/it/websockify_cli.rs); noVNC's pages and TigerVNC's Xvnc
# (tests/it/novnc.rs).
if ! command -v websockify >/dev/null 2>&1; then
    apt_packages+=(websockify)
fi
if [ ! -f /usr/share/novnc/vnc_lite.html ]; then
    apt_packages+=(novnc)
fi
if [ ! -x /usr/bin/Xvnc ]; then
    apt_packages+=(tigervnc-standalone-server)
fi
# nginx: a reverse proxy that does not pass Upgrade (tests/it/fallback_browser.rs), and an L7
# proxy setting X-Forwarded-For (tests/it/balancer.rs); haproxy: a real load balancer sending
# PROXY headers (tests/it/balancer.rs, tests/it/fleet.rs). The tests start their own copies.
if [ ! -x /usr/sbin/nginx ]; then
    apt_packages+=(nginx)
fi
if [ ! -x /usr/sbin/haproxy ]; then
    apt_packages+=(haproxy)
fi
# systemd-socket-activate and systemd-analyze (tests/it/systemd.rs, tests/it/deploy.rs).
if ! command -v systemd-socket-activate >/dev/null 2>&1 || ! command -v systemd-analyze >/dev/null 2>&1; then
    apt_packages+=(systemd)
fi
# promtool and the Prometheus server (tests/it/deploy.rs); installed without starting its service.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    apt_packages+=(prometheus)
fi
# ip (network namespaces and veth links for tests/it/fleet.rs, which needs root).
if ! command -v ip >/dev/null 2>&1; then
    apt_packages+=(iproute2)
fi
# Python packages in .venv: kosoku (Autobahn runner) and websockets (the README check's client).
KOSOKU_PIN=kosoku==0.1.0
WEBSOCKETS_VERSION=15.0.1
venv_packages=()
if [ -n "${KOSOKU:-}" ] && [ -x "$KOSOKU" ]; then
    :
elif [ ! -x .venv/bin/kosoku ]; then
    venv_packages+=("$KOSOKU_PIN")
fi
if ! .venv/bin/python -c "import sys, websockets; sys.exit(websockets.__version__ != '$WEBSOCKETS_VERSION')" \
    >/dev/null 2>&1; then
    venv_packages+=("websockets==$WEBSOCKETS_VERSION")
fi
# kubernetes-validate: deploy/kubernetes against the Kubernetes schemas it ships (offline).
KUBERNETES_VALIDATE_PIN=kubernetes-validate==1.37.0
if [ ! -x .venv/bin/kubernetes-validate ]; then
    venv_packages+=("$KUBERNETES_VALIDATE_PIN")
fi
if [ "${#venv_packages[@]}" -gt 0 ]; then
    if ! command -v python3 >/dev/null 2>&1; then
        apt_packages+=(python3 python3-venv)
    elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_packages+=(python3-venv)
    fi
fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
    step "installing Debian packages: ${apt_packages[*]}"
    quiet as_root apt-get update
    # No package starts a system service (nginx would take port 80, haproxy and prometheus
    # theirs): a policy-rc.d that refuses, for the time of the install, unless the machine
    # already has one.
    policy_rc_d=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy_rc_d=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy_rc_d" >/dev/null
        as_root chmod 755 "$policy_rc_d"
    fi
    install_status=0
    quiet as_root apt-get install -y --no-install-recommends "${apt_packages[@]}" || install_status=$?
    if [ -n "$policy_rc_d" ]; then
        as_root rm -f "$policy_rc_d"
    fi
    if [ "$install_status" -ne 0 ]; then
        exit "$install_status"
    fi
fi
if [ "${#venv_packages[@]}" -gt 0 ]; then
    if [ ! -x .venv/bin/pip ]; then
        rm -rf .venv
        quiet python3 -m venv .venv
        # A new venv has neither package.
        venv_packages=("websockets==$WEBSOCKETS_VERSION" "$KUBERNETES_VALIDATE_PIN")
        if [ -z "${KOSOKU:-}" ] || [ ! -x "$KOSOKU" ]; then
            venv_packages+=("$KOSOKU_PIN")
        fi
    fi
    step "installing ${venv_packages[*]} into .venv"
    quiet .venv/bin/pip install --disable-pip-version-check "${venv_packages[@]}"
fi

# --- checks and tests ------------------------------------------------------------------------
# Every step runs even if an earlier one failed; the script fails at the end if any did.
failed=()

step "cargo fmt --all --check"
cargo fmt --all --check || failed+=("cargo fmt --check")

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --quiet --workspace --all-targets -- -D warnings || failed+=("cargo clippy")

step "no cycles between modules (scripts/check_module_cycles.py)"
python3 scripts/check_module_cycles.py || failed+=("module cycles")

# The binaries the tests run: the gateway (cargo builds it for its own tests) and the load
# generator, another workspace member, which `cargo test` does not build as a program.
step "cargo build --workspace --bins"
cargo build --quiet --workspace --bins || failed+=("cargo build")

# The Autobahn conformance test on its own, so that its summary table is shown.
step "Autobahn conformance (tests/it/autobahn.rs)"
cargo test --test it -- --nocapture --exact autobahn::autobahn_conformance || failed+=("autobahn")

step "doc tests"
cargo test --workspace --doc || failed+=("doc tests")

# Everything else (the Autobahn test already ran above).
step "all tests"
# Every target but the criterion benchmarks (they measure; `cargo bench` runs them).
cargo test --workspace --lib --bins --tests --examples --no-fail-fast -- --skip autobahn::autobahn_conformance --exact || failed+=("cargo test")

# README's first command, run as written (a release build), with an independent WebSocket client.
step "README first command (scripts/check_readme_demo.py)"
if ! wait "$release_pid"; then
    cat "$release_log" >&2
    failed+=("cargo build --release")
fi
.venv/bin/python scripts/check_readme_demo.py || failed+=("README first command")

if [ "${#failed[@]}" -gt 0 ]; then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
