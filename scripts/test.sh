#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test of the
# workspace. Installs what the tests need on a fresh Debian 12 machine first.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests need; see scripts/install-deps.sh for the list and why.
bash scripts/install-deps.sh
# LAVA's own client code from Debian, for the coordinator compatibility tests.
bash scripts/install-lava-clients.sh >/dev/null
# The VM images of the host/VM tests (cached by input hash; the tests would build them
# on first use too, but here the time shows on its own).
bash scripts/build-images.sh >/dev/null
bash scripts/build-arm-image.sh >/dev/null
bash scripts/build-debian-image.sh >/dev/null

cargo fmt --all -- --check
# The lava-* shell helpers run on guests' shells (dash, busybox ash...): POSIX sh only.
shellcheck -s sh node-agent/lava-helpers.sh
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
