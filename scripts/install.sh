#!/usr/bin/env bash
# Takes a fresh Debian 12 machine (or the container image) to ready: system packages for the
# sandbox (bubblewrap, Python and its data stack, libseccomp's Python binding), then the Node
# dependencies and the build. Idempotent and quick when everything is already there.
#   scripts/install.sh            apt (if anything is missing) + npm ci (if needed) + build
#   SKIP_APT=1 scripts/install.sh  Node side only
#   SKIP_TEST_TOOLS=1 scripts/install.sh  without what only the tests use (the image)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  bubblewrap python3 python3-seccomp tini procps
  python3-numpy python3-pandas python3-scipy python3-matplotlib python3-sklearn python3-sympy
  python3-openpyxl python3-xlrd python3-xlsxwriter python3-bs4 python3-lxml python3-pypdf
  python3-docx python3-pil python3-requests python3-dateutil python3-tz
)
# Only the tests use these: a headless browser for the /docs page, and nginx for the
# scale-out proxy test. (Debian's nginx package starts no service where there is no init.)
if [ "${SKIP_TEST_TOOLS:-0}" != 1 ]; then
  APT_PACKAGES+=(chromium nginx)
fi

missing=()
if [ "${SKIP_APT:-0}" != 1 ]; then
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install: apt packages missing: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${SKIP_NPM:-0}" != 1 ]; then
  # npm ci only when the lockfile changed since the last install.
  stamp=node_modules/.install-stamp
  if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json "$stamp"
  fi
  npm run --silent build
fi
