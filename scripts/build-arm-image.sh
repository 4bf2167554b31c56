#!/usr/bin/env bash
# Builds the ARM guests of the end-to-end tests from Debian's arm64 and armhf packages
# (Debian 12 host, run as root after scripts/install-deps.sh, which enables both
# architectures for downloads). For each ARCH of arm64 and armhf:
#
#   DIR/ARCH/vmlinuz            Debian's kernel: linux-image-arm64; for armhf
#                               linux-image-armmp-lpae (LPAE reaches the PCI devices
#                               qemu's virt machine puts above 4 GiB)
#   DIR/ARCH/initramfs.cpio.gz  busybox (busybox-static:ARCH) run from the initramfs, a
#                               getty login on ttyAMA0 (root, password $ARM_PASSWORD
#                               below), prompt "ARCH:/# "; nothing of the dispatcher's
#   DIR/ARCH.env                name=value lines: ARCH_kernel, ARCH_initramfs,
#                               ARCH_manifest, ARCH_password, ARCH_prompt
#
# The trees are made on this (x86_64) machine without running any ARM binary: busybox
# makes its applet links and modules.dep inside the guest, at boot.
#
# Usage: scripts/build-arm-image.sh [--out DIR]    (DIR defaults to .cache/images)
# Prints one `name=path` line per output on stdout (progress goes to stderr). Cached per
# architecture: rebuilt only when this script or the packages' versions change.
#
# Boot (TCG): qemu-system-aarch64 -machine virt -cpu cortex-a57 -m 512 -nographic
#   -serial stdio -kernel DIR/arm64/vmlinuz -initrd DIR/arm64/initramfs.cpio.gz
#   -append console=ttyAMA0        (armhf: qemu-system-arm -machine virt -cpu cortex-a15)
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
# Kernel modules the guests load (with their dependencies), for qemu's virt machine.
ARM_MODULES=(virtio_mmio virtio_pci virtio_net virtio_blk)

log() { echo "build-arm-image: $*" >&2; }
sha() { sha256sum | cut -d' ' -f1; }
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
# The build directory of the architecture being built, removed on any exit.
BUILD=
trap 'if [ -n "$BUILD" ]; then rm -rf "$BUILD"; fi' EXIT

# The guest's files that name its architecture; $1 is ARCH. Written to stdout.
guest_rcs() {
    echo '#!/bin/sh'
    echo '# One-shot set-up, run by busybox init before the console login.'
    echo 'export PATH=/bin'
    echo 'dmesg -n 1'
    echo "for m in ${ARM_MODULES[*]}; do modprobe \"\$m\" 2>/dev/null; done"
    echo "hostname $1"
    cat <<'RCS'
ip link set lo up
# qemu user networking on the first NIC, as the x86_64 guest has it.
if ip link set eth0 up 2>/dev/null; then
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
    echo "nameserver 10.0.2.3" >/etc/resolv.conf
fi
RCS
}

# Copies the kernel modules the guest needs from the unpacked kernel K into the tree R:
# those named, every virtio module (the PCI transports are split in several) and
# virtio_net's failover, whatever directory they are in. Built-in ones are listed in
# modules.builtin and need nothing; modules.dep is made by busybox at boot.
copy_modules() {  # K R KVER
    local k=$1/lib/modules/$3 r=$2/lib/modules/$3 m ko rel
    mkdir -p "$r"
    cp "$k"/modules.builtin* "$k/modules.order" "$r/"
    {
        for m in "${ARM_MODULES[@]}"; do find "$k/kernel" -name "$m.ko*"; done
        find "$k/kernel" \( -path '*/drivers/virtio/*.ko*' -o -name 'net_failover.ko*' \
            -o -name 'failover.ko*' \)
    } | sort -u | while read -r ko; do
        rel=${ko#"$k/"}
        mkdir -p "$r/$(dirname "$rel")"
        cp "$ko" "$r/$rel"
    done
}

# Builds the guest of ARCH (kernel metapackage KMETA) into OUT/ARCH and OUT/ARCH.env,
# unless its inputs are unchanged; prints its result lines on fd 3.
build_arch() {  # ARCH KMETA
    local arch=$1 kmeta=$2
    # Read whole before grep: with pipefail, `grep -q` leaving at the first match can
    # kill dpkg with SIGPIPE mid-list and fail the test (arm64 comes first).
    local foreign
    foreign=$(dpkg --print-foreign-architectures)
    grep -qx "$arch" <<<"$foreign" ||
        { log "$arch is not enabled for downloads (scripts/install-deps.sh)"; return 1; }
    mkdir -p "$OUT/$arch"
    local work=$OUT/.work-$arch
    mkdir -p "$work/debs"

    # The metapackage depends on the kernel package proper.
    local meta busybox kpkg kversion
    meta=$(candidate "$kmeta:$arch")
    busybox=$(candidate "busybox-static:$arch")
    if [ -z "$meta" ] || [ "$meta" = "(none)" ] || [ -z "$busybox" ]; then
        log "$arch package lists missing, running apt-get update"
        apt-get update -qq
        meta=$(candidate "$kmeta:$arch")
        busybox=$(candidate "busybox-static:$arch")
    fi
    kpkg=$(apt-cache depends "$kmeta:$arch=$meta" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    kpkg=${kpkg%:"$arch"}
    kversion=$(candidate "$kpkg:$arch")
    { [ -n "$kpkg" ] && [ -n "$kversion" ]; } || { log "cannot resolve the $arch kernel package"; return 1; }

    local hash
    hash=$(printf '%s\n' "script $(sha <"$SELF")" "$arch" "$kpkg $kversion" "busybox-static $busybox" | sha)
    local results=(
        "${arch}_kernel=$OUT/$arch/vmlinuz"
        "${arch}_initramfs=$OUT/$arch/initramfs.cpio.gz"
        "${arch}_manifest=$OUT/$arch.env"
    )
    if [ "$(cat "$OUT/$arch/.inputs-hash" 2>/dev/null)" = "$hash" ] && [ -s "$OUT/$arch/vmlinuz" ] &&
        [ -s "$OUT/$arch/initramfs.cpio.gz" ] && [ -s "$OUT/$arch.env" ]; then
        printf '%s\n' "${results[@]}" >&3
        return 0
    fi

    local start=$SECONDS want name version
    deb() { echo "$work/debs/${1}_${2//:/%3a}_$arch.deb"; }
    for want in "$kpkg=$kversion" "busybox-static=$busybox"; do
        name=${want%%=*} version=${want#*=}
        if [ ! -s "$(deb "$name" "$version")" ]; then
            log "downloading $name:$arch $version"
            rm -f "$work/debs/${name}_"*.deb
            chown _apt "$work/debs" 2>/dev/null || true
            (cd "$work/debs" && apt-get download -q=2 "$name:$arch=$version")
        fi
    done

    BUILD=$work/build
    rm -rf "$BUILD"
    local k=$BUILD/kernel r=$BUILD/root kver
    mkdir -p "$k" "$r"
    log "extracting kernel $kpkg:$arch"
    dpkg-deb --fsys-tarfile "$(deb "$kpkg" "$kversion")" |
        tar -x -C "$k" --wildcards './boot/vmlinuz-*' './lib/modules/*/modules.builtin*' \
            './lib/modules/*/modules.order' './lib/modules/*/kernel/drivers/virtio/*' \
            './lib/modules/*/kernel/drivers/net/*' './lib/modules/*/kernel/drivers/block/*' \
            './lib/modules/*/kernel/net/core/*' './lib/modules/*/kernel/lib/*'
    kver=$(ls "$k/lib/modules")
    dpkg-deb -x "$(deb busybox-static "$busybox")" "$BUILD/busybox"

    mkdir -p "$r"/{bin,dev,etc/init.d,proc,sys,tmp,run,root,usr}
    ln -s bin "$r/sbin"
    ln -s ../bin "$r/usr/bin"
    ln -s ../bin "$r/usr/sbin"
    cp "$BUILD/busybox/bin/busybox" "$r/bin/busybox"
    ln -s busybox "$r/bin/sh"
    copy_modules "$k" "$r" "$kver"
    cat >"$r/init" <<'INIT'
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
INIT
    guest_rcs "$arch" >"$r/etc/init.d/rcS"
    cat >"$r/etc/inittab" <<'INITTAB'
::sysinit:/etc/init.d/rcS
ttyAMA0::respawn:/bin/getty -L 115200 ttyAMA0 vt100
::shutdown:/bin/umount -a -r
INITTAB
    echo "root:$(openssl passwd -1 -salt lavaarm "$ARM_PASSWORD"):0:0:root:/root:/bin/sh" >"$r/etc/passwd"
    echo 'root:x:0:' >"$r/etc/group"
    echo /bin/sh >"$r/etc/shells"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$arch" >"$r/etc/hosts"
    printf 'export PATH=/bin\nPS1='\''%s:\\w# '\''\n' "$arch" >"$r/etc/profile"
    chmod 755 "$r/init" "$r/etc/init.d/rcS"
    chmod 700 "$r/root"
    chmod 1777 "$r/tmp"
    (cd "$r" && find . | LC_ALL=C sort | busybox cpio -o -H newc 2>/dev/null) |
        gzip -6 -n >"$BUILD/initramfs.cpio.gz"

    mv -f "$BUILD/initramfs.cpio.gz" "$OUT/$arch/initramfs.cpio.gz"
    cp "$k/boot/vmlinuz-$kver" "$OUT/$arch/vmlinuz"
    {
        printf '%s\n' "${results[@]}"
        echo "${arch}_password=$ARM_PASSWORD"
        printf '%s\n' "${arch}_prompt=$arch:[^\\r\\n]*# \$"
    } >"$OUT/$arch.env"
    echo "$hash" >"$OUT/$arch/.inputs-hash"
    rm -rf "$BUILD"
    BUILD=
    log "$arch built in $((SECONDS - start)) s"
    printf '%s\n' "${results[@]}" >&3
}

build_arch arm64 linux-image-arm64
build_arch armhf linux-image-armmp-lpae
