#!/usr/bin/env bash
# Installs the Debian packages the project needs, once per machine. Idempotent: a
# machine that has them all installs nothing and touches no package list.
set -euo pipefail

# Each package and why:
PACKAGES=(
    openssl          # the coordinator's TLS test makes a throw-away certificate
    openssh-server   # ssh-host devices in tests: sshd in a network namespace
    iproute2         # network namespaces and veth pairs for those test hosts
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
