#!/usr/bin/env bash
# Builds the arm64 guest of the end-to-end tests from Debian's arm64 packages (Debian 12
# host, run as root after scripts/install-deps.sh, which enables the arm64 architecture
# for downloads):
#
#   DIR/arm64/vmlinuz            Debian's arm64 kernel (linux-image-arm64)
#   DIR/arm64/initramfs.cpio.gz  busybox (busybox-static:arm64) run from the initramfs, a
#                                getty login on ttyAMA0 (root, password $ARM_PASSWORD
#                                below), prompt "arm64:/# "; nothing of the dispatcher's
#   DIR/arm64.env                name=value lines: arm64_kernel, arm64_initramfs,
#                                arm64_password, arm64_prompt
#
# The tree is made on this (x86_64) machine without running any arm64 binary: busybox
# makes its applet links and modules.dep inside the guest, at boot.
#
# Usage: scripts/build-arm-image.sh [--out DIR]    (DIR defaults to .cache/images)
# Prints one `name=path` line per output on stdout (progress goes to stderr). Cached:
# rebuilt only when this script or the packages' versions change.
#
# Boot (TCG): qemu-system-aarch64 -machine virt -cpu max -m 512 -nographic -serial stdio
#   -kernel DIR/arm64/vmlinuz -initrd DIR/arm64/initramfs.cpio.gz -append console=ttyAMA0
set -euo pipefail
exec 3>&1 1>&2

SELF=$(realpath "${BASH_SOURCE[0]}")
PROJECT=$(dirname "$(dirname "$SELF")")
OUT=$PROJECT/.cache/images
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || { echo "--out needs a directory" >&2; exit 2; }; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#--out=}; shift ;;
        *) echo "unknown argument: $1 (usage: $0 [--out DIR])" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "build-arm-image.sh must run as root (root-owned files)" >&2; exit 1; }

ARM_PASSWORD=arm-Pw-1
ARM_PROMPT='arm64:[^\r\n]*# $'
# Kernel modules the guest loads (with their dependencies), for qemu's virt machine.
ARM_MODULES=(virtio_mmio virtio_pci virtio_net virtio_blk)

log() { echo "build-arm-image: $*" >&2; }
sha() { sha256sum | cut -d' ' -f1; }

dpkg --print-foreign-architectures | grep -qx arm64 ||
    { log "arm64 is not enabled for downloads (scripts/install-deps.sh)"; exit 1; }
mkdir -p "$OUT/arm64"
OUT=$(realpath "$OUT")
WORK=$OUT/.work-arm64
mkdir -p "$WORK/debs"

# linux-image-arm64 is a metapackage: the kernel is the package it depends on.
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }
META=$(candidate linux-image-arm64:arm64)
BUSYBOX_VERSION=$(candidate busybox-static:arm64)
if [ -z "$META" ] || [ "$META" = "(none)" ] || [ -z "$BUSYBOX_VERSION" ]; then
    log "arm64 package lists missing, running apt-get update"
    apt-get update -qq
    META=$(candidate linux-image-arm64:arm64)
    BUSYBOX_VERSION=$(candidate busybox-static:arm64)
fi
KPKG=$(apt-cache depends "linux-image-arm64:arm64=$META" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
KPKG=${KPKG%:arm64}
KVERSION=$(candidate "$KPKG:arm64")
{ [ -n "$KPKG" ] && [ -n "$KVERSION" ]; } || { log "cannot resolve the arm64 kernel package"; exit 1; }

HASH=$(printf '%s\n' "script $(sha <"$SELF")" "$KPKG $KVERSION" "busybox-static $BUSYBOX_VERSION" | sha)
RESULTS=(
    "arm64_kernel=$OUT/arm64/vmlinuz"
    "arm64_initramfs=$OUT/arm64/initramfs.cpio.gz"
    "arm64_manifest=$OUT/arm64.env"
)
if [ "$(cat "$OUT/arm64/.inputs-hash" 2>/dev/null)" = "$HASH" ] && [ -s "$OUT/arm64/vmlinuz" ] &&
    [ -s "$OUT/arm64/initramfs.cpio.gz" ] && [ -s "$OUT/arm64.env" ]; then
    printf '%s\n' "${RESULTS[@]}" >&3
    exit 0
fi

START=$SECONDS
deb() { echo "$WORK/debs/${1}_${2//:/%3a}_arm64.deb"; }
for want in "$KPKG=$KVERSION" "busybox-static=$BUSYBOX_VERSION"; do
    name=${want%%=*} version=${want#*=}
    if [ ! -s "$(deb "$name" "$version")" ]; then
        log "downloading $name:arm64 $version"
        rm -f "$WORK/debs/${name}_"*.deb
        chown _apt "$WORK/debs" 2>/dev/null || true
        (cd "$WORK/debs" && apt-get download -q=2 "$name:arm64=$version")
    fi
done

BUILD=$WORK/build
rm -rf "$BUILD"
trap 'rm -rf "$BUILD"' EXIT
K=$BUILD/kernel
R=$BUILD/root
mkdir -p "$K" "$R"
log "extracting kernel $KPKG"
dpkg-deb --fsys-tarfile "$(deb "$KPKG" "$KVERSION")" |
    tar -x -C "$K" --wildcards './boot/vmlinuz-*' './lib/modules/*/modules.builtin*' \
        './lib/modules/*/modules.order' './lib/modules/*/kernel/drivers/virtio/*' \
        './lib/modules/*/kernel/drivers/net/*' './lib/modules/*/kernel/drivers/block/*' \
        './lib/modules/*/kernel/net/core/*' './lib/modules/*/kernel/lib/*'
KVER=$(ls "$K/lib/modules")
dpkg-deb -x "$(deb busybox-static "$BUSYBOX_VERSION")" "$BUILD/busybox"

mkdir -p "$R"/{bin,dev,etc/init.d,proc,sys,tmp,run,root,lib/modules}
ln -s bin "$R/sbin"
mkdir -p "$R/usr"
ln -s ../bin "$R/usr/bin"
ln -s ../bin "$R/usr/sbin"
cp "$BUILD/busybox/bin/busybox" "$R/bin/busybox"
ln -s busybox "$R/bin/sh"
# The modules the guest needs, whatever they are named under (built in ones are in
# modules.builtin and need nothing); modules.dep is made by busybox at boot.
mkdir -p "$R/lib/modules/$KVER"
cp "$K/lib/modules/$KVER"/modules.builtin* "$K/lib/modules/$KVER/modules.order" "$R/lib/modules/$KVER/"
for m in "${ARM_MODULES[@]}"; do
    find "$K/lib/modules/$KVER/kernel" -name "$m.ko*" | while read -r ko; do
        rel=${ko#"$K/lib/modules/$KVER/"}
        mkdir -p "$R/lib/modules/$KVER/$(dirname "$rel")"
        cp "$ko" "$R/lib/modules/$KVER/$rel"
    done
done
# What they depend on: every virtio module (the PCI transports are split in several)
# and virtio_net's failover.
find "$K/lib/modules/$KVER/kernel" \( -path '*/drivers/virtio/*.ko*' -o -name 'net_failover.ko*' \
    -o -name 'failover.ko*' \) | while read -r ko; do
    rel=${ko#"$K/lib/modules/$KVER/"}
    mkdir -p "$R/lib/modules/$KVER/$(dirname "$rel")"
    cp "$ko" "$R/lib/modules/$KVER/$rel"
done

cat >"$R/init" <<'EOF'
#!/bin/busybox sh
# PID 1: applet links and modules.dep (made here, on the guest's own CPU), the kernel
# file systems, then busybox init runs /etc/inittab.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
depmod -a 2>/dev/null
exec /bin/init
EOF
cat >"$R/etc/init.d/rcS" <<'EOF'
#!/bin/sh
# One-shot set-up, run by busybox init before the console login.
export PATH=/bin
dmesg -n 1
for m in virtio_mmio virtio_pci virtio_net virtio_blk; do modprobe "$m" 2>/dev/null; done
hostname arm64
ip link set lo up
# qemu user networking on the first NIC, as the x86_64 guest has it.
if ip link set eth0 up 2>/dev/null; then
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
    echo "nameserver 10.0.2.3" >/etc/resolv.conf
fi
EOF
cat >"$R/etc/inittab" <<'EOF'
::sysinit:/etc/init.d/rcS
ttyAMA0::respawn:/bin/getty -L 115200 ttyAMA0 vt100
::shutdown:/bin/umount -a -r
EOF
echo "root:$(openssl passwd -1 -salt lavaarm "$ARM_PASSWORD"):0:0:root:/root:/bin/sh" >"$R/etc/passwd"
echo 'root:x:0:' >"$R/etc/group"
echo /bin/sh >"$R/etc/shells"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tarm64\n' >"$R/etc/hosts"
cat >"$R/etc/profile" <<'EOF'
export PATH=/bin
PS1='arm64:\w# '
EOF
chmod 755 "$R/init" "$R/etc/init.d/rcS"
chmod 700 "$R/root"
chmod 1777 "$R/tmp"
(cd "$R" && find . | LC_ALL=C sort | busybox cpio -o -H newc 2>/dev/null) | gzip -6 -n >"$BUILD/initramfs.cpio.gz"

mv -f "$BUILD/initramfs.cpio.gz" "$OUT/arm64/initramfs.cpio.gz"
cp "$K/boot/vmlinuz-$KVER" "$OUT/arm64/vmlinuz"
{
    printf '%s\n' "${RESULTS[@]}"
    echo "arm64_password=$ARM_PASSWORD"
    echo "arm64_prompt=$ARM_PROMPT"
} >"$OUT/arm64.env"
echo "$HASH" >"$OUT/arm64/.inputs-hash"
log "built in $((SECONDS - START)) s"
printf '%s\n' "${RESULTS[@]}" >&3
