#!/usr/bin/env bash
# Builds a Debian guest as distributions ship disk images, for the end-to-end tests of
# images that boot by themselves (Debian 12 host, run as root after
# scripts/install-deps.sh):
#
#   DIR/debian/disk.qcow2   qcow2 disk, GPT: an EFI system partition with systemd-boot
#                           (the image's own boot loader) and Debian's kernel and
#                           initramfs (initramfs-tools), and an ext4 root partition with
#                           Debian 12 minbase, systemd as PID 1, a getty login on ttyS0
#                           (root, password $DEBIAN_PASSWORD below), bash prompt
#                           "root@debian-uefi:~# ". Nothing of the dispatcher's.
#   DIR/debian.env          name=value lines: debian_disk, debian_manifest,
#                           debian_password, debian_prompt
#
# The disk is put together without a loop mount: mke2fs -d for the root, mtools for
# the EFI partition, sfdisk for the table, dd to place them.
#
# Usage: scripts/build-debian-image.sh [--out DIR]    (DIR defaults to .cache/images)
# Prints one `name=path` line per output on stdout (progress goes to stderr). Cached:
# rebuilt only when this script or the packages' versions change.
#
# Boot (TCG; OVMF from Debian's ovmf package; no -kernel: the firmware runs the boot
# loader from the disk):
#   qemu-system-x86_64 -accel tcg -m 256 -nodefaults -nographic -serial stdio
#     -bios /usr/share/ovmf/OVMF.fd -drive file=DIR/debian/disk.qcow2,if=virtio,snapshot=on
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
[ "$(id -u)" = 0 ] || { echo "build-debian-image.sh must run as root (debootstrap, chroot)" >&2; exit 1; }

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
DEBIAN_PASSWORD=debian-Pw-1
DEBIAN_PROMPT='root@debian-uefi:[^\r\n]*# $'
# minbase plus what a booting distribution has: systemd as init, udev, Debian's kernel
# and initramfs generator, systemd-boot's EFI binary.
PKGS=(systemd-sysv udev kmod linux-image-amd64 initramfs-tools systemd-boot-efi)
ESP_MIB=64

log() { echo "build-debian-image: $*" >&2; }
sha() { sha256sum | cut -d' ' -f1; }

mkdir -p "$OUT/debian"
OUT=$(realpath "$OUT")

versions() {
    LC_ALL=C apt-cache show --no-all-versions "${PKGS[@]}" 2>/dev/null |
        awk '/^Package: / {p = $2} /^Version: / {print p, $2}'
}
VERSIONS=$(versions)
if [ "$(echo "$VERSIONS" | wc -l)" -ne "${#PKGS[@]}" ]; then
    log "package lists incomplete, running apt-get update"
    apt-get update -qq
    VERSIONS=$(versions)
fi
DEBOOTSTRAP_VERSION=$(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null) ||
    { log "debootstrap is not installed (scripts/install-deps.sh)"; exit 1; }
HASH=$(printf '%s\n' "script $(sha <"$SELF")" "$SUITE $MIRROR" "debootstrap $DEBOOTSTRAP_VERSION" \
    "$VERSIONS" | sha)
RESULTS=(
    "debian_disk=$OUT/debian/disk.qcow2"
    "debian_manifest=$OUT/debian.env"
)
if [ "$(cat "$OUT/debian/.inputs-hash" 2>/dev/null)" = "$HASH" ] && [ -s "$OUT/debian/disk.qcow2" ] &&
    [ -s "$OUT/debian.env" ]; then
    printf '%s\n' "${RESULTS[@]}" >&3
    exit 0
fi

START=$SECONDS
BUILD=$OUT/.work-debian
# A debootstrap that was killed leaves /proc and /sys mounted in its tree: unmount
# whatever is mounted under the build directory (deepest first) before removing it,
# and never let rm cross into a file system that is still there.
clean_build() {
    awk -v dir="$BUILD/" 'index($2, dir) == 1 {print $2}' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m"; done
    rm -rf --one-file-system "$BUILD"
}
clean_build
trap clean_build EXIT
R=$BUILD/root
mkdir -p "$R"
log "debootstrap $SUITE (${PKGS[*]})"
debootstrap --variant=minbase --include="$(IFS=,; echo "${PKGS[*]}")" "$SUITE" "$R" "$MIRROR" >&2

log "configuration"
KVER=$(ls "$R/lib/modules")
echo debian-uefi >"$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tdebian-uefi\n' >"$R/etc/hosts"
echo 'LABEL=debian-root / ext4 errors=remount-ro 0 1' >"$R/etc/fstab"
echo "root:$DEBIAN_PASSWORD" | chroot "$R" chpasswd
# Made at first boot, as in Debian's cloud images; systemd-firstboot would ask for a
# locale and a time zone on the console then, so it is masked.
: >"$R/etc/machine-id"
ln -sf /dev/null "$R/etc/systemd/system/systemd-firstboot.service"
# Drivers no virtual machine of the lab has (a third of the image).
rm -rf "$R/lib/modules/$KVER/kernel/sound" "$R/lib/modules/$KVER/kernel/drivers/gpu" \
    "$R/lib/modules/$KVER/kernel/drivers/media" "$R/lib/modules/$KVER/kernel/drivers/net/wireless" \
    "$R/lib/modules/$KVER/kernel/drivers/infiniband" "$R/lib/modules/$KVER/kernel/drivers/staging" \
    "$R/lib/modules/$KVER/kernel/drivers/bluetooth" "$R/lib/modules/$KVER/kernel/net/bluetooth"
chroot "$R" depmod "$KVER"
# The initramfs with what a virtio disk and ext4 need, not every storage driver.
echo MODULES=list >"$R/etc/initramfs-tools/conf.d/lab-vm"
printf '%s\n' virtio_pci virtio_blk crc32c_generic ext4 >>"$R/etc/initramfs-tools/modules"
chroot "$R" update-initramfs -u -k "$KVER" >&2
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/usr/share/doc/* \
    "$R"/usr/share/man/* "$R"/usr/share/info/* "$R"/usr/share/locale/*

log "EFI system partition (systemd-boot)"
cat >"$BUILD/loader.conf" <<'EOF'
default debian.conf
timeout 0
EOF
cat >"$BUILD/debian.conf" <<'EOF'
title   Debian GNU/Linux 12
linux   /vmlinuz
initrd  /initrd.img
options root=LABEL=debian-root ro console=ttyS0,115200
EOF
ESP=$BUILD/esp.img
mkfs.fat -C -n ESP "$ESP" $((ESP_MIB * 1024)) >/dev/null
mmd -i "$ESP" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
# The removable-media path: firmware without boot entries (a fresh VM's) runs it.
mcopy -i "$ESP" "$R/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$ESP" "$BUILD/loader.conf" ::/loader/loader.conf
mcopy -i "$ESP" "$BUILD/debian.conf" ::/loader/entries/debian.conf
mcopy -i "$ESP" "$R/boot/vmlinuz-$KVER" ::/vmlinuz
mcopy -i "$ESP" "$R/boot/initrd.img-$KVER" ::/initrd.img

log "root partition"
ROOT_MIB=$(( $(du -sm "$R" | cut -f1) * 13 / 10 + 256 ))
mke2fs -q -F -t ext4 -L debian-root -d "$R" "$BUILD/root.img" "${ROOT_MIB}M"

log "disk (GPT) and qcow2"
DISK=$BUILD/disk.raw
truncate -s $(( (1 + ESP_MIB + ROOT_MIB + 1) * 1024 * 1024 )) "$DISK"
# The root partition has the type of an x86-64 root (the Discoverable Partitions
# Specification), as systemd-based images give it.
sfdisk -q "$DISK" <<EOF
label: gpt
unit: sectors
start=2048, size=$((ESP_MIB * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system"
start=$(((1 + ESP_MIB) * 2048)), size=$((ROOT_MIB * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="root"
EOF
dd if="$ESP" of="$DISK" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$BUILD/root.img" of="$DISK" bs=1M seek=$((1 + ESP_MIB)) conv=notrunc,sparse status=none
qemu-img convert -c -O qcow2 "$DISK" "$BUILD/disk.qcow2"

mv -f "$BUILD/disk.qcow2" "$OUT/debian/disk.qcow2"
{
    printf '%s\n' "${RESULTS[@]}"
    echo "debian_password=$DEBIAN_PASSWORD"
    echo "debian_prompt=$DEBIAN_PROMPT"
} >"$OUT/debian.env"
echo "$HASH" >"$OUT/debian/.inputs-hash"
log "built in $((SECONDS - START)) s"
printf '%s\n' "${RESULTS[@]}" >&3
