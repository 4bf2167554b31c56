#!/usr/bin/env bash
# Builds the Debian package of the dispatcher and prints its path:
#   target/debian/lava-dispatcher_VERSION_ARCH.deb
# It installs /usr/bin/dispatcher, the static node agent and the standalone coordinator
# under /usr/lib/lava-dispatcher/, the device types under /usr/share/lava-dispatcher/,
# a default configuration (/etc/lava-dispatcher/dispatcher.toml, a conffile), the
# systemd unit lava-dispatcher.service, manual pages and shell completions (generated
# from the binary's own command definitions). Files and maintainer scripts are in
# packaging/.
#
# PROFILE=release (default) builds optimised binaries; PROFILE=dev packs the debug
# build the tests already made (stripped all the same).
set -euo pipefail
cd "$(dirname "$0")/.."
# The package's modes are the files' modes: the same whatever the caller's umask.
umask 022

PROFILE="${PROFILE:-release}"
# A dev package is for the tests: compressed fast (xz takes half a minute on a debug
# binary), as the release one is compressed small.
case "$PROFILE" in
    dev) OUT=debug COMPRESS=(-Zgzip -z1) ;;
    *) OUT="$PROFILE" COMPRESS=(-Zxz) ;;
esac
TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"
cargo build --quiet --locked --profile "$PROFILE" -p dispatcher -p coordinator >&2
AGENT="$(bash scripts/build-node-agent-static.sh)"

VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
ARCH="$(dpkg --print-architecture)"
STAGE="$TARGET_DIR/debian/lava-dispatcher"
DEB="$TARGET_DIR/debian/lava-dispatcher_${VERSION}_${ARCH}.deb"
rm -rf "$STAGE"
mkdir -p "$STAGE/DEBIAN"

# Binaries, stripped: a debug build is hundreds of MiB of symbols.
install -D -m 755 "$TARGET_DIR/$OUT/dispatcher" "$STAGE/usr/bin/dispatcher"
install -D -m 755 "$TARGET_DIR/$OUT/coordinator" "$STAGE/usr/lib/lava-dispatcher/coordinator"
install -D -m 755 "$AGENT" "$STAGE/usr/lib/lava-dispatcher/node-agent-static"
strip --strip-unneeded "$STAGE/usr/bin/dispatcher" "$STAGE/usr/lib/lava-dispatcher/coordinator"

# The lab: device types (with their health-check jobs), the configuration, and an
# empty devices directory for the admin's device files.
mkdir -p "$STAGE/usr/share/lava-dispatcher/device-types" "$STAGE/etc/lava-dispatcher/devices"
find device-types -maxdepth 1 -type f ! -name README.md \
    -exec install -m 644 -t "$STAGE/usr/share/lava-dispatcher/device-types" {} +
install -D -m 644 packaging/dispatcher.toml "$STAGE/etc/lava-dispatcher/dispatcher.toml"
install -D -m 644 packaging/lava-dispatcher.service \
    "$STAGE/lib/systemd/system/lava-dispatcher.service"

# Documentation: manual pages and completions from the clap definitions.
DOC="$STAGE/usr/share/doc/lava-dispatcher"
install -D -m 644 README.md "$DOC/README.md"
install -D -m 644 device-types/README.md "$DOC/device-types.md"
mkdir -p "$STAGE/usr/share/lava-dispatcher/examples"
cp -r device-types/devices "$STAGE/usr/share/lava-dispatcher/examples/devices"
MAN="$STAGE/usr/share/man/man1"
"$STAGE/usr/bin/dispatcher" manpage --dir "$MAN"
gzip -9n "$MAN"/*.1
"$STAGE/usr/bin/dispatcher" completions bash |
    install -D -m 644 /dev/stdin "$STAGE/usr/share/bash-completion/completions/dispatcher"
"$STAGE/usr/bin/dispatcher" completions zsh |
    install -D -m 644 /dev/stdin "$STAGE/usr/share/zsh/vendor-completions/_dispatcher"
"$STAGE/usr/bin/dispatcher" completions fish |
    install -D -m 644 /dev/stdin "$STAGE/usr/share/fish/vendor_completions.d/dispatcher.fish"

# Control files.
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" packaging/debian/control >"$STAGE/DEBIAN/control"
echo "Installed-Size: $(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)" >>"$STAGE/DEBIAN/control"
install -m 644 packaging/debian/conffiles "$STAGE/DEBIAN/conffiles"
install -m 755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$STAGE/DEBIAN/"

dpkg-deb --root-owner-group "${COMPRESS[@]}" --build "$STAGE" "$DEB" >&2
echo "$DEB"
