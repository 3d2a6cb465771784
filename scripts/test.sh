#!/usr/bin/env bash
# The one test command of wsgate: ./scripts/test.sh
#
# On a fresh Debian 12 machine with only the Rust toolchain it installs what the tests need
# (Debian package chromium for tests/browser.rs, Python venv .venv with kosoku for
# tests/autobahn.rs), then runs the format check, clippy, and every test. Exits non-zero if
# anything fails.
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

# --- what the tests need ---------------------------------------------------------------------
apt_packages=()
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    apt_packages+=(chromium)
fi
need_venv=0
if [ -n "${KOSOKU:-}" ] && [ -x "$KOSOKU" ]; then
    :
elif [ ! -x .venv/bin/kosoku ]; then
    need_venv=1
    if ! command -v python3 >/dev/null 2>&1; then
        apt_packages+=(python3 python3-venv)
    elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_packages+=(python3-venv)
    fi
fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
    step "installing Debian packages: ${apt_packages[*]}"
    quiet as_root apt-get update
    quiet as_root apt-get install -y --no-install-recommends "${apt_packages[@]}"
fi
if [ "$need_venv" -eq 1 ]; then
    step "installing kosoku==0.1.0 into .venv"
    if [ ! -x .venv/bin/pip ]; then
        rm -rf .venv
        quiet python3 -m venv .venv
    fi
    quiet .venv/bin/pip install --disable-pip-version-check kosoku==0.1.0
fi

# --- checks and tests ------------------------------------------------------------------------
# Every step runs even if an earlier one failed; the script fails at the end if any did.
failed=()

step "cargo fmt --all --check"
cargo fmt --all --check || failed+=("cargo fmt --check")

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --quiet --workspace --all-targets -- -D warnings || failed+=("cargo clippy")

# The Autobahn conformance test on its own, so that its summary table is shown.
step "Autobahn conformance (tests/autobahn.rs)"
cargo test --test autobahn -- --nocapture --exact autobahn_conformance || failed+=("autobahn")

step "doc tests"
cargo test --workspace --doc || failed+=("doc tests")

# Everything else (the Autobahn test already ran above).
step "all tests"
# Every target but the criterion benchmarks (they measure; `cargo bench` runs them).
cargo test --workspace --lib --bins --tests --examples --no-fail-fast -- --skip autobahn_conformance --exact || failed+=("cargo test")

if [ "${#failed[@]}" -gt 0 ]; then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
