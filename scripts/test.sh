#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test of the
# workspace. Installs what the tests need on a fresh Debian 12 machine first.
#
# On a fresh machine most of the time before the first test is spent waiting: apt
# downloading packages, debootstrap and the image builds downloading theirs. The
# build needs none of those packages (only the toolchain and gcc the machine has), so
# formatting, lints and the test build run beside them; each step's time is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

began=$SECONDS
step() {
    local start=$SECONDS
    "$@"
    echo "test.sh: $* took $((SECONDS - start)) s" >&2
}

build_log=$(mktemp)
building=
# However this script ends, the build in the background ends with it (its own process
# group, cargo and rustc included), and a failure shows the build's log.
finish() {
    local status=$?
    if [ -n "$building" ]; then
        kill -- "-$building" 2>/dev/null || true
        if [ "$status" != 0 ]; then cat "$build_log"; fi
    fi
    rm -f "$build_log"
}
trap finish EXIT
build() {
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    cargo test --workspace --locked --no-run
    # The node agent the tests install on hosts and in the guest image.
    bash scripts/build-node-agent-static.sh >/dev/null
}
export -f step build
setsid bash -euo pipefail -c 'step build' >"$build_log" 2>&1 &
building=$!

# System packages the tests need; see scripts/install-deps.sh for the list and why.
step bash scripts/install-deps.sh
# LAVA's own client code from Debian, for the coordinator compatibility tests.
step bash scripts/install-lava-clients.sh >/dev/null
# The VM images of the host/VM tests (cached by input hash; the tests would build them
# on first use too, but here the time shows on its own).
step bash scripts/build-images.sh >/dev/null
step bash scripts/build-arm-image.sh >/dev/null
step bash scripts/build-debian-image.sh >/dev/null
# The lava-* shell helpers run on guests' shells (dash, busybox ash...): POSIX sh only.
shellcheck -s sh node-agent/lava-helpers.sh

if ! wait "$building"; then
    echo "test.sh: formatting, lints or the build failed (its log follows)" >&2
    exit 1
fi
building=
cat "$build_log"
step cargo test --workspace --locked
echo "test.sh: all in $((SECONDS - began)) s" >&2
