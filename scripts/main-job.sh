#!/usr/bin/env bash
# Runs the main job: a host device plus a server and a client VM whose test shells
# talk through the MultiNode API (lava-send/lava-wait, lava-sync), end to end on real
# qemu. Nothing to set up by hand: the packages and test images are installed/built
# here, and the lab is one built-in `qemu-host` device (a host-device VM this machine
# boots, whose VMs run with nested KVM).
#
# Prints one line per test case (`node.suite.case -- PASS`) and the job's health;
# exits 0 when the job completed with every case passing.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --quiet --locked --bin dispatcher
AGENT=$(bash scripts/build-node-agent-static.sh)
MANIFEST=$(bash scripts/build-images.sh | sed -n 's/^manifest=//p')
# name=value lines; values may hold shell syntax (prompt regexes), so read, not source.
get() { sed -n "s/^$1=//p" "$MANIFEST"; }
lab_key=$(get lab_key)
hostdev_fingerprint=$(get hostdev_fingerprint)
hostdev_kernel=$(get hostdev_kernel)
hostdev_initramfs=$(get hostdev_initramfs)
hostdev_rootfs=$(get hostdev_rootfs)
guest_kernel=$(get guest_kernel)
guest_initramfs=$(get guest_initramfs)

STATE=${LAVA_STATE_DIR:-$PWD/.cache/main-job}
mkdir -p "$STATE/devices"
# A free local port for the host-device VM's SSH.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$STATE/devices/qemu-host-01.toml" <<TOML
# Written by scripts/main-job.sh: the host-device VM built by scripts/build-images.sh.
hostname = "qemu-host-01"
device_type = "qemu-host"

[ssh]
address = "127.0.0.1"
port = $PORT
identity_file = "$lab_key"
host_key = "$hostdev_fingerprint"

[qemu]
kernel = "$hostdev_kernel"
ramdisk = "$hostdev_initramfs"
rootfs = "$hostdev_rootfs"
TOML

JOB="$STATE/main-job.json"
sed -e "s|@GUEST_KERNEL@|$guest_kernel|g" \
    -e "s|@GUEST_INITRD@|$guest_initramfs|g" \
    -e "s|@HOST_TYPE@|qemu-host|g" \
    tests/jobs/e2e/seed-vm-group.json >"$JOB"

exec ./target/debug/dispatcher run "$JOB" \
    --devices "$STATE/devices" \
    --state-dir "$STATE" \
    --node-agent "$AGENT"
