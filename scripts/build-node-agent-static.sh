#!/usr/bin/env bash
# Builds the node agent as a static executable (glibc linked in), so it runs in a
# busybox guest with no libraries, stripped (profile "agent" in Cargo.toml). Prints
# the path of the binary on stdout.
# Incremental: a second run with nothing changed builds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu
# A target of its own keeps these static objects apart from the normal (dynamic) build.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --locked -p node-agent \
    --target "$TARGET" --profile agent >&2
# cargo builds into CARGO_TARGET_DIR when it is set.
echo "${CARGO_TARGET_DIR:-$(pwd)/target}/$TARGET/agent/node-agent"
