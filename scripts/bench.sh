#!/usr/bin/env bash
# The benchmarks side by side with LAVA's coordinator, OpenSSH and qemu by hand: builds
# in release mode, makes sure the peers and images are here, runs `bench all` and writes
# the tables into BENCHMARKS.md. Extra arguments go to `bench` instead of `all`
# (e.g. `bash scripts/bench.sh barrier 2 16`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash scripts/install-lava-clients.sh >/dev/null
bash scripts/build-images.sh >/dev/null
cargo build --release --locked -p bench -p dispatcher
if [ $# -eq 0 ]; then set -- all; fi
exec target/release/bench "$@"
