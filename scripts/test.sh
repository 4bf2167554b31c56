#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test of the
# workspace. Installs what the tests need on a fresh Debian 12 machine first.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests need (none beyond the Rust toolchain yet); see
# scripts/install-deps.sh for the list and why each is there.
bash scripts/install-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
