#!/usr/bin/env bash
# Installs the Debian packages the project needs, once per machine. Idempotent: a
# machine that has them all installs nothing and touches no package list.
set -euo pipefail

# Each package and why:
PACKAGES=(
    openssl          # the coordinator's TLS test makes a throw-away certificate
    openssh-server   # ssh-host devices in tests: sshd in a network namespace (needs /run/sshd)
    openssh-client   # ssh-keygen for the lab and host keys of build-images.sh; ssh/sftp in checks
    iproute2         # network namespaces and veth pairs for those test hosts
    debootstrap      # build-images.sh: the host-device VM's Debian root filesystem
    e2fsprogs        # build-images.sh: mke2fs -d makes the host-device root disk without a loop mount
    zstd             # build-images.sh: compresses the cached debootstrap tree
    dosfstools       # build-images.sh: mkfs.fat for the guest's bootable disk image
    mtools           # build-images.sh: copies files into that disk without a loop mount
    syslinux         # build-images.sh: the disk's boot loader (installed through mtools)
    xz-utils         # the image tests make .xz images with the real xz
    chromium         # the web page tests: headless, DOM and screenshots
    fonts-dejavu-core # readable screenshots
    perl             # TAP::Parser (perl-modules) reads the TAP results in tests
    git              # test definitions from git repositories (the dispatcher fetches with it); git daemon in tests
    brz              # test definitions from Bazaar branches (bzr-repo), as LAVA v1 fetched them with bzr
    busybox          # the lava-* shell helpers are tested under busybox's sh and applets, as guests run them
    shellcheck       # scripts/test.sh lints the lava-* shell helpers
    fdisk            # build-debian-image.sh: sfdisk writes the Debian disk's GPT
    ovmf             # UEFI firmware of kvm devices (bootloadertype "uefi"; device-types/kvm.toml)
    qemu-efi-aarch64 # UEFI firmware of kvm-aarch64 devices (device-types/kvm-aarch64.toml)
    tmux             # the CLI tests run `submit --follow` in a real terminal (a tmux pane)
    binutils         # build-deb.sh strips the binaries it packs
    systemd          # the package test: systemd-analyze verify of the unit
    man-db           # the package test: the installed manual pages are found (man -w)
    postgresql       # several workers on one database: tests start throwaway servers (initdb, postgres, psql)
)
# QEMU runs the test VMs (TCG; see scripts/build-images.sh). Installed as a pair, in a
# step of its own: machines may carry a backports qemu-utils (qemu-img 10.x) that
# Breaks qemu-system-common (<< 8.0), so a plain `apt-get install qemu-system-x86`
# would remove qemu-img. Asking for qemu-utils from the release itself, with
# --allow-downgrades, keeps both.
QEMU_PACKAGES=(
    qemu-system-x86  # qemu-system-x86_64: host-device VM and guests
    qemu-system-arm  # qemu-system-aarch64/-arm: kvm-aarch64 and kvm-arm guests (TCG here)
    qemu-utils       # qemu-img: overlays and image conversion
)

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
qemu_missing=0
for pkg in "${QEMU_PACKAGES[@]}"; do
    installed "$pkg" || qemu_missing=1
done
# A qemu-utils that is installed but newer than the release's qemu-system-x86 (the
# backports case above) only matters when qemu-system-x86 itself is missing, and then
# qemu_missing is already set.

if [ "${#missing[@]}" -gt 0 ] || [ "$qemu_missing" = 1 ]; then
    apt-get update -qq
fi
if [ "${#missing[@]}" -gt 0 ]; then
    # The tests make their own PostgreSQL clusters: the package's default one would
    # only be a server left running.
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/no-main-cluster.conf
    echo "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ "$qemu_missing" = 1 ]; then
    release=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    echo "installing: ${QEMU_PACKAGES[*]} (qemu-utils from $release)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        --allow-downgrades qemu-system-x86 qemu-system-arm "qemu-utils/$release"
fi
# Debian's arm64 and armhf packages (kernels, busybox) for the ARM test guests are
# downloaded, not installed: apt needs the architectures enabled to find them.
foreign=$(dpkg --print-foreign-architectures)
added=0
for arch in arm64 armhf; do
    if ! echo "$foreign" | grep -qx "$arch"; then
        echo "enabling the $arch architecture for downloads"
        dpkg --add-architecture "$arch"
        added=1
    fi
done
if [ "$added" = 1 ]; then
    apt-get update -qq
fi
