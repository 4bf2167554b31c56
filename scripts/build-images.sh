#!/usr/bin/env bash
# Builds the VM images of the end-to-end tests from Debian packages (Debian 12 host,
# run as root after scripts/install-deps.sh):
#
#   DIR/lab_ed25519{,.pub}     the lab's SSH key pair, made on this machine when absent;
#                              root's authorized key in both images
#   DIR/guest/vmlinuz          Debian kernel (linux-image-amd64)
#   DIR/guest/initramfs.cpio.gz  busybox system run from the initramfs: dropbear SSH on
#                              port 22 with sftp, root shell on ttyS0, prompt "guest:/# ".
#                              Nothing of the dispatcher's: its test shells get the
#                              lava-* shell helpers typed in. Fits in -m 256.
#   DIR/guest/login-initramfs.cpio.gz  the same guest with a login on ttyS0 (busybox
#                              getty and login; user root, password $GUEST_PASSWORD
#                              below), as distributions' images have it
#   DIR/guest/rootfs.tar.gz    the same guest tree as a root file system tarball (nfsrootfs),
#                              with /etc/rootfs-source, which the initramfs has not
#   DIR/guest/disk.img         the same guest as a bootable raw disk (image-only boots,
#                              `deploy_linaro_image`): FAT with SYSLINUX, no partitions
#   DIR/hostdev/vmlinuz, DIR/hostdev/initramfs.cpio.gz, DIR/hostdev/rootfs.img
#                              (and the same tree as DIR/hostdev/rootfs.tar.gz, with /init
#                              and /etc/rootfs-source, for nfsrootfs boots)
#                              "host device" VM: Debian minbase on a raw ext4 disk
#                              (virtio, /dev/vda) with OpenSSH, qemu-system-x86 and
#                              qemu-utils. Its init loads kvm_amd (so start it with
#                              -accel tcg -cpu max to get /dev/kvm inside), starts sshd
#                              and gives a bash on ttyS0, prompt "root@hostdev:/# ".
#   DIR/{guest,hostdev}/ssh_host_ed25519_key{,.pub,.fingerprint}
#                              each image's SSH host key, made once per machine, and its
#                              SHA256 fingerprint (as `ssh-keygen -lf` prints it)
#   DIR/manifest.env           name=value lines: the paths printed on stdout, plus
#                              guest_fingerprint, hostdev_fingerprint, guest_password,
#                              guest_prompt and
#                              hostdev_prompt (regular expressions for the end of the
#                              serial console output). The value is everything after
#                              the first "="; not meant to be sourced by a shell.
#
# Usage: scripts/build-images.sh [--out DIR]    (DIR defaults to .cache/images)
# Prints one `name=path` line per output on stdout, nothing else (progress goes to
# stderr). Cached: the outputs are rebuilt only when the input hash changes (this
# script, the Debian package versions, the login password, the keys); the
# debootstrap tree is cached on its own, keyed on its package list and versions.
#
# Kernel command line understood by both images (values: address, or "none"):
#   lava.ip=ADDR/PREFIX   eth0's address   (default 10.0.2.15/24, qemu user network)
#   lava.gw=ADDR          default route    (default 10.0.2.2)
#   lava.dns=ADDR         /etc/resolv.conf (default 10.0.2.3)
# and, host device only, root=DEV (default /dev/vda).
#
# Boot (TCG; this machine's KVM cannot run stock kernels, see docs):
#   qemu-system-x86_64 -accel tcg -m 256 -nodefaults -nographic -no-reboot -serial stdio
#     -kernel DIR/guest/vmlinuz -initrd DIR/guest/initramfs.cpio.gz
#     -append "console=ttyS0 panic=-1"
#     -netdev user,id=n0,hostfwd=tcp:127.0.0.1:PORT-:22 -device virtio-net-pci,netdev=n0,romfile=
#   host device: -accel tcg -cpu max -smp 2 -m 2048 ..., the hostdev kernel and initramfs,
#     and -drive file=DIR/hostdev/rootfs.img,if=virtio,format=raw,snapshot=on
set -euo pipefail

# stdout is for the result lines only; everything else goes to stderr.
exec 3>&1 1>&2

SELF=$(realpath "${BASH_SOURCE[0]}")
PROJECT=$(dirname "$(dirname "$SELF")")
OUT=$PROJECT/.cache/images
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || { echo "--out needs a directory" >&2; exit 2; }; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#--out=}; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (usage: $0 [--out DIR])" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "build-images.sh must run as root (debootstrap, chroot, root-owned files)" >&2; exit 1; }

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
DISK_SIZE=3G
# Guest userland, unpacked from the .debs (not installed on this machine). dropbear's and
# sftp-server's libraries come from these packages too, not from the host.
GUEST_PKGS=(busybox-static dropbear-bin openssh-sftp-server libtomcrypt1 libtommath1 libgmp10 zlib1g libcrypt1 libc6)
# Host device: debootstrap --variant=minbase plus these (with their Depends).
HOSTDEV_PKGS=(openssh-server openssl qemu-system-x86 qemu-system-arm qemu-utils iproute2 procps kmod)
# Kernel modules (with their dependencies): all virtio drivers are modules in Debian.
GUEST_MODULES=(virtio_pci virtio_net virtio_blk virtio_console virtio-rng)
INITRD_MODULES=(virtio_pci virtio_blk crc32c_generic ext4)
HOSTDEV_MODULES=(virtio_pci virtio_blk virtio_net virtio_console virtio-rng crc32c_generic ext4
    kvm-amd kvm-intel tun vhost_net bridge veth)
GUEST_PROMPT='guest:[^\r\n]*# $'
HOSTDEV_PROMPT='root@hostdev:[^\r\n]*# $'

mkdir -p "$OUT" "$OUT/guest" "$OUT/hostdev"
OUT=$(realpath "$OUT")
WORK=$OUT/.work
mkdir -p "$WORK/debs"
exec 9>"$OUT/.lock"
flock 9

log() { echo "build-images: $*" >&2; }
sha() { sha256sum | cut -d' ' -f1; }

# --- keys (made once per machine) -----------------------------------------------------
keypair() {  # FILE COMMENT
    if [ ! -s "$1" ]; then
        rm -f "$1" "$1.pub"
        ssh-keygen -q -t ed25519 -N '' -C "$2" -f "$1"
    fi
    [ -s "$1.pub" ] || ssh-keygen -y -f "$1" >"$1.pub"
    chmod 600 "$1"
}
keypair "$OUT/lab_ed25519" lava-lab
keypair "$OUT/guest/ssh_host_ed25519_key" root@guest
keypair "$OUT/hostdev/ssh_host_ed25519_key" root@hostdev

# --- inputs -----------------------------------------------------------------------------
# The login guest's root password: a test image's, known to its tests.
GUEST_PASSWORD=guest-Pw-1

# Candidate versions, in one apt-cache call (each call costs ~0.5 s of cache loading).
# linux-image-amd64 is a metapackage: the kernel is the package it depends on (at =VERSION).
resolve_versions() {
    local info
    info=$(LC_ALL=C apt-cache show --no-all-versions linux-image-amd64 "${GUEST_PKGS[@]}" \
        "${HOSTDEV_PKGS[@]}" 2>/dev/null | awk '
            /^Package: / { pkg = $2 }
            /^Version: / { print pkg, $2 }
            /^Depends: linux-image-/ && pkg == "linux-image-amd64" {
                if (match($0, /^Depends: linux-image-[^ ,]+ \(= [^)]+\)/)) {
                    split(substr($0, 10, RLENGTH - 10), d, " ")
                    print "kernel", d[1], d[3]
                }
            }') || return 1
    KPKG=$(echo "$info" | awk '$1 == "kernel" {print $2}')
    [ -n "$KPKG" ] || return 1
    local p v
    GUEST_VERSIONS=$(echo "$info" | awk '$1 == "kernel" {print $2, $3}')
    for p in "${GUEST_PKGS[@]}"; do
        v=$(echo "$info" | awk -v p="$p" '$1 == p {print $2; exit}')
        [ -n "$v" ] || return 1
        GUEST_VERSIONS+=$'\n'"$p $v"
    done
    HOSTDEV_VERSIONS=
    for p in "${HOSTDEV_PKGS[@]}"; do
        v=$(echo "$info" | awk -v p="$p" '$1 == p {print $2; exit}')
        [ -n "$v" ] || return 1
        HOSTDEV_VERSIONS+="$p $v"$'\n'
    done
    HOSTDEV_VERSIONS=${HOSTDEV_VERSIONS%$'\n'}
}
if ! resolve_versions; then
    log "package lists incomplete, running apt-get update"
    apt-get update -qq
    resolve_versions || { log "cannot resolve package versions (${GUEST_PKGS[*]} ${HOSTDEV_PKGS[*]})"; exit 1; }
fi
DEBOOTSTRAP_VERSION=$(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null) ||
    { log "debootstrap is not installed (scripts/install-deps.sh)"; exit 1; }
# The debootstrap tree depends on these only.
DEBOOTSTRAP_KEY=$(printf '%s\n' "$SUITE" "$MIRROR" "debootstrap $DEBOOTSTRAP_VERSION" \
    "$HOSTDEV_VERSIONS" | sha | cut -c1-16)
INPUTS=$(
    echo "script $(sha <"$SELF")"
    echo "guest-password $GUEST_PASSWORD"
    echo "lab-key $(cat "$OUT/lab_ed25519.pub")"
    echo "guest-host-key $(cat "$OUT/guest/ssh_host_ed25519_key.pub")"
    echo "hostdev-host-key $(cat "$OUT/hostdev/ssh_host_ed25519_key.pub")"
    echo "debootstrap-tree $DEBOOTSTRAP_KEY"
    echo "disk $DISK_SIZE"
    echo "$GUEST_VERSIONS"
)
HASH=$(echo "$INPUTS" | sha)

RESULTS=(
    "lab_key=$OUT/lab_ed25519"
    "lab_pubkey=$OUT/lab_ed25519.pub"
    "guest_kernel=$OUT/guest/vmlinuz"
    "guest_initramfs=$OUT/guest/initramfs.cpio.gz"
    "guest_login_initramfs=$OUT/guest/login-initramfs.cpio.gz"
    "guest_disk=$OUT/guest/disk.img"
    "guest_rootfs_tar=$OUT/guest/rootfs.tar.gz"
    "guest_fingerprint_file=$OUT/guest/ssh_host_ed25519_key.fingerprint"
    "hostdev_kernel=$OUT/hostdev/vmlinuz"
    "hostdev_initramfs=$OUT/hostdev/initramfs.cpio.gz"
    "hostdev_rootfs=$OUT/hostdev/rootfs.img"
    "hostdev_rootfs_tar=$OUT/hostdev/rootfs.tar.gz"
    "hostdev_fingerprint_file=$OUT/hostdev/ssh_host_ed25519_key.fingerprint"
    "manifest=$OUT/manifest.env"
)
up_to_date() {
    [ "$(cat "$OUT/.inputs-hash" 2>/dev/null)" = "$HASH" ] || return 1
    local r
    for r in "${RESULTS[@]}"; do [ -s "${r#*=}" ] || return 1; done
}
if up_to_date; then
    printf '%s\n' "${RESULTS[@]}" >&3
    exit 0
fi

# --- build ------------------------------------------------------------------------------
START=$SECONDS
rm -f "$OUT/.inputs-hash"
BUILD=$WORK/build
rm -rf "$BUILD"
trap 'rm -rf "$BUILD"' EXIT
mkdir -p "$BUILD"

# Downloads (cached in .work/debs by exact file name; old versions are dropped).
deb_file() { echo "$WORK/debs/${1}_${2//:/%3a}_amd64.deb"; }
want=() keep=()
while read -r pkg ver; do
    f=$(deb_file "$pkg" "$ver")
    keep+=("$(basename "$f")")
    [ -s "$f" ] || want+=("$pkg=$ver")
done <<<"$GUEST_VERSIONS"
if [ "${#want[@]}" -gt 0 ]; then
    log "downloading ${want[*]}"
    # As root, apt downloads as _apt: give it the directory (else it warns).
    chown _apt "$WORK/debs" 2>/dev/null || true
    (cd "$WORK/debs" && apt-get download -q=2 "${want[@]}")
fi
for f in "$WORK"/debs/*.deb; do
    [[ " ${keep[*]} " == *" $(basename "$f") "* ]] || rm -f "$f"
done

STAGE=$BUILD/stage
mkdir -p "$STAGE"
while read -r pkg ver; do
    [ "$pkg" = "$KPKG" ] || dpkg-deb -x "$(deb_file "$pkg" "$ver")" "$STAGE"
done <<<"$GUEST_VERSIONS"
BUSYBOX=$STAGE/bin/busybox

# Kernel: vmlinuz and the module directories we may need (the whole .deb is ~400 MB of
# modules). The .deb has no modules.dep (depmod runs in its postinst): busybox makes one.
log "extracting kernel $KPKG"
K=$BUILD/kernel
mkdir -p "$K"
dpkg-deb --fsys-tarfile "$(deb_file "$KPKG" "$(echo "$GUEST_VERSIONS" | awk -v p="$KPKG" '$1 == p {print $2}')")" |
    tar -x -C "$K" --wildcards './boot/vmlinuz-*' './lib/modules/*/modules.builtin*' \
        './lib/modules/*/modules.order' './lib/modules/*/kernel/drivers/virtio/*' \
        './lib/modules/*/kernel/drivers/net/*' './lib/modules/*/kernel/drivers/block/*' \
        './lib/modules/*/kernel/drivers/char/*' './lib/modules/*/kernel/drivers/vhost/*' \
        './lib/modules/*/kernel/drivers/crypto/*' './lib/modules/*/kernel/net/*' \
        './lib/modules/*/kernel/fs/*' './lib/modules/*/kernel/lib/*' './lib/modules/*/kernel/crypto/*' \
        './lib/modules/*/kernel/arch/x86/*' './lib/modules/*/kernel/virt/*'
KVER=$(ls "$K/lib/modules")
"$BUSYBOX" depmod -b "$K" "$KVER"

# Copies modules NAME... and what they depend on into ROOT/lib/modules/KVER.
install_modules() {  # ROOT NAME...
    local root=$1 name path
    shift
    local dest=$root/lib/modules/$KVER
    local -A seen=()
    add() {
        local line dep
        [ -n "${seen[$1]:-}" ] && return
        seen[$1]=1
        line=$(grep -E "^$1:" "$K/lib/modules/$KVER/modules.dep")
        for dep in ${line#*:}; do add "$dep"; done
        mkdir -p "$dest/$(dirname "$1")"
        cp "$K/lib/modules/$KVER/$1" "$dest/$1"
    }
    for name in "$@"; do
        path=$(grep -E "(^|/)$name\.ko:" "$K/lib/modules/$KVER/modules.dep" | head -1 | cut -d: -f1)
        [ -n "$path" ] || { log "kernel module $name not found"; return 1; }
        add "$path"
    done
    cp "$K/lib/modules/$KVER"/modules.builtin* "$K/lib/modules/$KVER/modules.order" "$dest/"
}

# Makes ROOT/bin/busybox with a relative link per applet (not `busybox --install`,
# which would link to this machine's path).
install_busybox() {  # ROOT BINDIR(relative)
    local dir=$1/$2 a
    mkdir -p "$dir"
    cp "$BUSYBOX" "$dir/busybox"
    for a in $("$BUSYBOX" --list); do
        [ -e "$dir/$a" ] || ln -s busybox "$dir/$a"
    done
}

pack_cpio() {  # DIR OUTPUT
    (cd "$1" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) | gzip -6 -n >"$2"
}

# Network set-up from the kernel command line, shared by both images (POSIX sh).
network_script() {
    cat <<'EOF'
# lava.ip=ADDR/PREFIX lava.gw=ADDR lava.dns=ADDR on the kernel command line ("none": skip)
lava_ip=10.0.2.15/24 lava_gw=10.0.2.2 lava_dns=10.0.2.3
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        lava.ip=*) lava_ip=${arg#lava.ip=} ;;
        lava.gw=*) lava_gw=${arg#lava.gw=} ;;
        lava.dns=*) lava_dns=${arg#lava.dns=} ;;
    esac
done
ip link set lo up
if ip link set eth0 up 2>/dev/null; then
    [ "$lava_ip" = none ] || ip addr add "$lava_ip" dev eth0
    [ "$lava_gw" = none ] || ip route add default via "$lava_gw" ||
        echo "network: no route via $lava_gw" >&2
fi
[ "$lava_dns" = none ] || echo "nameserver $lava_dns" >/etc/resolv.conf
EOF
}

# --- guest: busybox + dropbear in an initramfs ------------------------------
log "guest image"
G=$BUILD/guest-root
mkdir -p "$G"/{bin,dev,etc/dropbear,etc/init.d,lib/x86_64-linux-gnu,proc,sys,tmp,run,root/.ssh,var/log,usr/lib/openssh,usr/local/bin}
ln -s bin "$G/sbin"
ln -s ../bin "$G/usr/bin"
ln -s ../bin "$G/usr/sbin"
ln -s lib "$G/lib64"
ln -s ../run "$G/var/run"
install_busybox "$G" bin
cp "$STAGE/usr/sbin/dropbear" "$G/bin/"
cp "$STAGE/usr/lib/openssh/sftp-server" "$G/usr/lib/openssh/"
ln -s openssh/sftp-server "$G/usr/lib/sftp-server"   # the path dropbear has built in
# Their shared libraries, all from the unpacked packages.
for bin in "$G/bin/dropbear" "$G/usr/lib/openssh/sftp-server"; do
    LD_LIBRARY_PATH=$STAGE/lib/x86_64-linux-gnu:$STAGE/usr/lib/x86_64-linux-gnu ldd "$bin" |
        awk '$2 == "=>" && $3 ~ /^\// {print $1}'
done | sort -u | while read -r lib; do
    src=
    for d in lib usr/lib; do
        [ -e "$STAGE/$d/x86_64-linux-gnu/$lib" ] && src=$STAGE/$d/x86_64-linux-gnu/$lib && break
    done
    [ -n "$src" ] || { log "library $lib is not in the unpacked packages"; exit 1; }
    cp -L "$src" "$G/lib/x86_64-linux-gnu/$lib"
done
cp -L "$STAGE/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$G/lib/x86_64-linux-gnu/"
ln -s x86_64-linux-gnu/ld-linux-x86-64.so.2 "$G/lib/ld-linux-x86-64.so.2"   # = /lib64/...
# Host key (made once per machine) in dropbear's format.
LD_LIBRARY_PATH=$STAGE/usr/lib/x86_64-linux-gnu "$STAGE/usr/bin/dropbearconvert" openssh dropbear \
    "$OUT/guest/ssh_host_ed25519_key" "$G/etc/dropbear/dropbear_ed25519_host_key" 2>/dev/null
install_modules "$G" "${GUEST_MODULES[@]}"
"$BUSYBOX" depmod -b "$G" "$KVER"
echo 'root:x:0:0:root:/root:/bin/sh' >"$G/etc/passwd"
echo 'root:x:0:' >"$G/etc/group"
printf '/bin/sh\n/bin/ash\n' >"$G/etc/shells"   # dropbear wants the login shell listed
echo guest >"$G/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tguest\n' >"$G/etc/hosts"
cp "$OUT/lab_ed25519.pub" "$G/root/.ssh/authorized_keys"
chmod 700 "$G/root" "$G/root/.ssh"
chmod 600 "$G/root/.ssh/authorized_keys"
chmod 1777 "$G/tmp"
cat >"$G/init" <<'EOF'
#!/bin/sh
# PID 1: mount the kernel file systems, then busybox init runs /etc/inittab.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
ln -sf /proc/self/fd /dev/fd
exec /sbin/init
EOF
{
    cat <<'EOF'
#!/bin/sh
# One-shot set-up, run by busybox init before the console shell.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
dmesg -n 1   # keep late kernel messages off the console (the prompt is matched there)
EOF
    echo "for m in ${GUEST_MODULES[*]}; do modprobe \"\$m\"; done"
    cat <<'EOF'
hostname guest
EOF
    network_script
    cat <<'EOF'
# SSH for root with the lab key; sftp via /usr/lib/sftp-server. -W: bigger window, faster sftp.
dropbear -r /etc/dropbear/dropbear_ed25519_host_key -p 22 -s -W 1048576 -P /run/dropbear.pid \
    -E 2>>/var/log/dropbear.log
EOF
} >"$G/etc/init.d/rcS"
chmod 755 "$G/init" "$G/etc/init.d/rcS"
cat >"$G/etc/inittab" <<'EOF'
::sysinit:/etc/init.d/rcS
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
EOF
cat >"$G/etc/profile" <<'EOF'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
[ "$HOME" = / ] && export HOME=/root
PS1='guest:\w# '
EOF
pack_cpio "$G" "$BUILD/guest-initramfs.cpio.gz"
# The login variant: getty on the console, root with a password (MD5 crypt, which
# busybox's login reads from /etc/passwd), the same tree otherwise.
cp "$G/etc/inittab" "$BUILD/inittab" && cp "$G/etc/passwd" "$BUILD/passwd"
sed -i 's|^ttyS0::respawn:-/bin/sh$|ttyS0::respawn:/bin/getty -L 115200 ttyS0 vt100|' "$G/etc/inittab"
grep -q getty "$G/etc/inittab" || { log "the login guest's inittab has no getty"; exit 1; }
echo "root:$(openssl passwd -1 -salt lavaguest "$GUEST_PASSWORD"):0:0:root:/root:/bin/sh" >"$G/etc/passwd"
pack_cpio "$G" "$BUILD/guest-login-initramfs.cpio.gz"
mv "$BUILD/inittab" "$G/etc/inittab" && mv "$BUILD/passwd" "$G/etc/passwd"
cp "$K/boot/vmlinuz-$KVER" "$BUILD/guest-vmlinuz"
# The same tree as a root file system tarball (a job's nfsrootfs), owned by root as a
# distribution's would be, with a file the initramfs does not have: a guest booted from
# the tarball can tell.
echo tarball >"$G/etc/rootfs-source"
tar -C "$G" --numeric-owner --owner=0 --group=0 -czf "$BUILD/guest-rootfs.tar.gz" .
rm "$G/etc/rootfs-source"

# The same guest as a disk that boots by itself, for jobs that deploy an image and no
# kernel: FAT with SYSLINUX in its boot sector and no partition table (SeaBIOS boots
# sector 0), made without a loop mount (mtools).
log "guest disk image"
GD=$BUILD/guest-disk.img
GD_KB=$(( ($(stat -c %s "$BUILD/guest-vmlinuz") + $(stat -c %s "$BUILD/guest-initramfs.cpio.gz")) / 1024 + 2048 ))
mkfs.fat -C -n GUEST "$GD" "$GD_KB" >/dev/null
cat >"$BUILD/syslinux.cfg" <<'CFG'
DEFAULT guest
PROMPT 0
TIMEOUT 0
LABEL guest
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=ttyS0 panic=-1 quiet no_timer_check
CFG
mcopy -i "$GD" "$BUILD/guest-vmlinuz" ::vmlinuz
mcopy -i "$GD" "$BUILD/guest-initramfs.cpio.gz" ::initrd.gz
mcopy -i "$GD" "$BUILD/syslinux.cfg" ::syslinux.cfg
syslinux --install "$GD"

# --- host device: debootstrap tree (cached) ----------------------------------------------
H=$BUILD/hostdev-root
TARBALL=$WORK/debootstrap-$DEBOOTSTRAP_KEY.tar.zst
if [ -s "$TARBALL" ]; then
    log "host device: unpacking cached debootstrap tree"
    mkdir -p "$H"
    zstd -dc -q "$TARBALL" | tar -x --numeric-owner --xattrs --xattrs-include='*' -C "$H"
else
    log "host device: debootstrap $SUITE (${HOSTDEV_PKGS[*]})"
    debootstrap --variant=minbase --include="$(IFS=,; echo "${HOSTDEV_PKGS[*]}")" \
        "$SUITE" "$H" "$MIRROR" >&2
    # Trim: package archives and lists, documentation, locales; host keys made by the
    # postinst (the image gets its own below).
    rm -rf "$H"/var/cache/apt/archives/*.deb "$H"/var/lib/apt/lists/* "$H"/usr/share/doc/* \
        "$H"/usr/share/man/* "$H"/usr/share/info/* "$H"/usr/share/locale/* "$H"/etc/ssh/ssh_host_*
    rm -f "$WORK"/debootstrap-*.tar.zst
    tar -c --numeric-owner --xattrs --xattrs-include='*' -C "$H" . | zstd -q -T0 -3 >"$TARBALL.tmp"
    mv "$TARBALL.tmp" "$TARBALL"
fi

# --- host device: configuration -----------------------------------------------------------
log "host device image"
echo hostdev >"$H/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\thostdev\n' >"$H/etc/hosts"
echo 'nameserver 10.0.2.3' >"$H/etc/resolv.conf"
install -m 600 "$OUT/hostdev/ssh_host_ed25519_key" "$H/etc/ssh/ssh_host_ed25519_key"
install -m 644 "$OUT/hostdev/ssh_host_ed25519_key.pub" "$H/etc/ssh/ssh_host_ed25519_key.pub"
cat >"$H/etc/ssh/sshd_config.d/lava.conf" <<'EOF'
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxSessions 64
AcceptEnv LAVA_*
EOF
install -d -m 700 "$H/root/.ssh"
install -m 600 "$OUT/lab_ed25519.pub" "$H/root/.ssh/authorized_keys"
# busybox: PID 1 (minbase has no init system) and poweroff/reboot/halt.
cp "$BUSYBOX" "$H/usr/local/bin/busybox"
for a in poweroff reboot halt; do ln -sf ../bin/busybox "$H/usr/local/sbin/$a"; done
cat >"$H/etc/inittab" <<'EOF'
::sysinit:/usr/local/sbin/hostdev-rc
ttyS0::respawn:-/bin/bash
::ctrlaltdel:/usr/local/bin/busybox reboot
::shutdown:/usr/local/sbin/hostdev-shutdown
EOF
# busybox init runs the shutdown action before it kills the processes: stop them first,
# so that the root file system can be remounted read-only (clean) before power-off.
cat >"$H/usr/local/sbin/hostdev-shutdown" <<'EOF'
#!/bin/sh
kill -TERM -1 2>/dev/null
sleep 1
kill -KILL -1 2>/dev/null
sync
/usr/local/bin/busybox umount -a -r 2>/dev/null
EOF
chmod 755 "$H/usr/local/sbin/hostdev-shutdown"
{
    cat <<'EOF'
#!/bin/sh
# One-shot system set-up (what systemd would do), run by busybox init.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -o remount,rw /
dmesg -n 1   # keep late kernel messages off the console (the prompt is matched there)
hostname hostdev
modprobe -a virtio_net virtio_rng virtio_console tun vhost_net bridge veth
# /dev/kvm: the CPU offers SVM under TCG with -cpu max (nested KVM).
if grep -qw svm /proc/cpuinfo; then
    modprobe kvm_amd
elif grep -qw vmx /proc/cpuinfo; then
    modprobe kvm_intel
fi
EOF
    network_script
    cat <<'EOF'
mkdir -p /run/sshd
chmod 755 /run/sshd
/usr/sbin/sshd -E /var/log/sshd.log
EOF
} >"$H/usr/local/sbin/hostdev-rc"
chmod 755 "$H/usr/local/sbin/hostdev-rc"
# Console shell: bash prompt "root@hostdev:/# " (init starts it in / with HOME=/).
cat >"$H/etc/profile.d/lava.sh" <<'EOF'
[ "$HOME" = / ] && HOME=/root && export HOME
if [ -n "${BASH_VERSION:-}" ] && [ -n "${PS1:-}" ]; then PS1='\u@\h:\w\$ '; fi
EOF
echo 'set enable-bracketed-paste off' >>"$H/etc/inputrc"
install_modules "$H" "${HOSTDEV_MODULES[@]}"
chroot "$H" /sbin/depmod "$KVER"

# --- host device: initramfs (modules for the root disk, then switch_root) ------------------
I=$BUILD/hostdev-initrd
mkdir -p "$I"/{dev,proc,sys,newroot}
install_busybox "$I" bin
ln -s bin "$I/sbin"
install_modules "$I" "${INITRD_MODULES[@]}"
"$BUSYBOX" depmod -b "$I" "$KVER"
{
    cat <<'EOF'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
EOF
    echo "for m in ${INITRD_MODULES[*]}; do modprobe \"\$m\"; done"
    cat <<'EOF'
root=/dev/vda
for arg in $(cat /proc/cmdline); do
    case "$arg" in root=/dev/*) root=${arg#root=} ;; esac
done
n=0
while [ ! -b "$root" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
if ! mount -t ext4 -o rw "$root" /newroot; then
    echo "initramfs: cannot mount $root; here is a shell"
    exec sh
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /usr/local/bin/busybox init
EOF
} >"$I/init"
chmod 755 "$I/init"
pack_cpio "$I" "$BUILD/hostdev-initramfs.cpio.gz"

log "host device: mke2fs ($DISK_SIZE, sparse)"
mke2fs -q -F -t ext4 -L hostdev-root -d "$H" "$BUILD/rootfs.img" "$DISK_SIZE"
log "host device: root file system tarball"
# The same tree as a job's nfsrootfs for a qemu-host, booted as its initramfs: an /init
# that gives busybox init a /dev and loads virtio_pci (the disk boot's initramfs does), and
# a file the disk has not, so a test can tell.
printf '#!/bin/sh\nmount -t devtmpfs devtmpfs /dev\nmodprobe virtio_pci\nexec /usr/local/bin/busybox init\n' >"$H/init"
chmod 755 "$H/init"
echo tarball >"$H/etc/rootfs-source"
tar -C "$H" --numeric-owner -cf - . | gzip -1 -n >"$BUILD/hostdev-rootfs.tar.gz"
rm "$H/init" "$H/etc/rootfs-source"

# --- results ------------------------------------------------------------------------------
fingerprint() { ssh-keygen -lf "$1" | awk '{print $2}'; }
mv -f "$BUILD/guest-vmlinuz" "$OUT/guest/vmlinuz"
mv -f "$BUILD/guest-initramfs.cpio.gz" "$OUT/guest/initramfs.cpio.gz"
mv -f "$BUILD/guest-login-initramfs.cpio.gz" "$OUT/guest/login-initramfs.cpio.gz"
mv -f "$BUILD/guest-disk.img" "$OUT/guest/disk.img"
mv -f "$BUILD/guest-rootfs.tar.gz" "$OUT/guest/rootfs.tar.gz"
cp "$K/boot/vmlinuz-$KVER" "$OUT/hostdev/vmlinuz"
mv -f "$BUILD/hostdev-initramfs.cpio.gz" "$OUT/hostdev/initramfs.cpio.gz"
mv -f "$BUILD/rootfs.img" "$OUT/hostdev/rootfs.img"
mv -f "$BUILD/hostdev-rootfs.tar.gz" "$OUT/hostdev/rootfs.tar.gz"
fingerprint "$OUT/guest/ssh_host_ed25519_key.pub" >"$OUT/guest/ssh_host_ed25519_key.fingerprint"
fingerprint "$OUT/hostdev/ssh_host_ed25519_key.pub" >"$OUT/hostdev/ssh_host_ed25519_key.fingerprint"
{
    printf '%s\n' "${RESULTS[@]}"
    echo "guest_fingerprint=$(cat "$OUT/guest/ssh_host_ed25519_key.fingerprint")"
    echo "hostdev_fingerprint=$(cat "$OUT/hostdev/ssh_host_ed25519_key.fingerprint")"
    echo "guest_password=$GUEST_PASSWORD"
    echo "guest_prompt=$GUEST_PROMPT"
    echo "hostdev_prompt=$HOSTDEV_PROMPT"
} >"$OUT/manifest.env"
echo "$INPUTS" >"$OUT/.inputs"
echo "$HASH" >"$OUT/.inputs-hash"
log "built in $((SECONDS - START)) s"
printf '%s\n' "${RESULTS[@]}" >&3
