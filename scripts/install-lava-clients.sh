#!/usr/bin/env bash
# Fetches LAVA's own client code (and its reference coordinator) from Debian 12's
# packages, for the compatibility tests in tests/lava-compat/. Nothing of LAVA is kept
# in this repository: the .debs are downloaded into .cache/lava-debs/ (git-ignored)
# and unpacked there with dpkg-deb -x; nothing of LAVA is installed system-wide (no
# "apt-get install lava-dispatcher": that pulls systemd and ~180 packages).
#
# Idempotent: with the cache in place and the Python modules present it downloads
# and installs nothing. Prints ONLY the directory to use as PYTHONPATH on stdout,
# so this works:   PYTHONPATH=$(bash scripts/install-lava-clients.sh)
# Everything else goes to stderr. Exits non-zero, saying why, on any failure.
#
# Interpreter: Debian's /usr/bin/python3 (3.11 on bookworm), the one these packages
# are built for; their third-party imports come from these Debian packages:
#   python3-yaml      lava_common.compat / lava_common.log (yaml)
#   python3-pexpect   lava_dispatcher.action imports pexpect (pulled in by
#                     lava_dispatcher.connection, the base of MultinodeProtocol)
#   python3-requests  lava_common.log imports requests at module level
# (lava-coordinator and its status.py use the standard library only.)
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${LAVA_DEBS_DIR:-$ROOT_DIR/.cache/lava-debs}"
EXTRACT="$CACHE/root"
SITE="$EXTRACT/usr/lib/python3/dist-packages"
LAVA_PKGS=(lava-coordinator lava-common lava-dispatcher)
PY_PKGS=(python3 python3-yaml python3-pexpect python3-requests)
PY=/usr/bin/python3

log() { echo "install-lava-clients: $*" >&2; }
die() { echo "install-lava-clients: error: $*" >&2; exit 1; }

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || die "needs a Debian system (apt-get and dpkg-deb not found)"

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed"
        apt_updated=1
    fi
}

# 1. Debian's python3 and the minimal python3-* modules LAVA's code imports.
missing=()
for pkg in "${PY_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "must run as root to install: ${missing[*]}"
    log "installing: ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >&2; then
        apt_update_once
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
    fi
fi
[ -x "$PY" ] || die "$PY not found even after installing python3"

# 2. Download the three .debs (skipped when all three are cached).
mkdir -p "$CACHE"
have_all_debs() {
    local p
    for p in "${LAVA_PKGS[@]}"; do
        compgen -G "$CACHE/${p}_*.deb" >/dev/null || return 1
    done
}
if ! have_all_debs; then
    log "downloading ${LAVA_PKGS[*]} into $CACHE"
    # Sandbox::User=root: the cache dir need not be readable by the _apt user.
    download() { (cd "$CACHE" && apt-get download -q -o APT::Sandbox::User=root \
        "${LAVA_PKGS[@]}" >&2); }
    if ! download; then
        apt_update_once
        download || die "apt-get download ${LAVA_PKGS[*]} failed (no Debian archive access?)"
    fi
    have_all_debs || die "apt-get download did not produce all of ${LAVA_PKGS[*]}"
fi

# 3. Extract them (skipped when the stamp matches the cached .debs).
stamp_want="$(cd "$CACHE" && ls -1 ./*.deb | sort | xargs sha256sum)"
if [ ! -f "$EXTRACT/.stamp" ] || [ "$(cat "$EXTRACT/.stamp")" != "$stamp_want" ]; then
    log "extracting into $EXTRACT"
    tmp="$(mktemp -d "$CACHE/.extract.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    for p in "${LAVA_PKGS[@]}"; do
        deb="$(ls -1 "$CACHE/${p}"_*.deb | sort -V | tail -n 1)"
        dpkg-deb -x "$deb" "$tmp" || die "dpkg-deb -x $deb failed"
    done
    printf '%s\n' "$stamp_want" >"$tmp/.stamp"
    rm -rf "$EXTRACT"
    mv "$tmp" "$EXTRACT"
    trap - EXIT
fi

# 4. Check that LAVA's code paths the tests use import under Debian's python3.
for f in "$SITE/lava/coordinator/status.py" "$SITE/lava/coordinator/__init__.py" \
         "$SITE/lava_dispatcher/protocols/multinode.py" "$EXTRACT/usr/bin/lava-coordinator"; do
    [ -f "$f" ] || die "missing $f in the extracted packages"
done
PYTHONPATH="$SITE" "$PY" -c '
import lava.coordinator, lava.coordinator.status
from lava_dispatcher.protocols.multinode import MultinodeProtocol
' >&2 || die "LAVA modules do not import with $PY (PYTHONPATH=$SITE)"
log "ok: LAVA $(cat "$SITE/lava_common/VERSION" 2>/dev/null || echo '?') with $PY ($("$PY" -c 'import platform; print(platform.python_version())'))"

echo "$SITE"
