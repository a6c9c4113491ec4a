#!/usr/bin/env bash
# Idempotent setup for `make test-browser`:
#   Chromium        Debian's `chromium` package (apt, as root), or CAD_CHROMIUM=/path/to/chromium
#   Node.js >= 18   with npm (Debian's `nodejs`/`npm` when missing)
#   tests/browser/node_modules/   playwright-core pinned in tests/browser/package-lock.json (npm ci;
#                                 1.61.1: the newest release that still runs on Node 18, Debian 12's nodejs;
#                                 skipped when the lock file has not changed since the last install)
# Playwright's own browser download is never used: it needs the internet, Debian's build does not.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BROWSER_DIR="$ROOT/tests/browser"
CHROMIUM="${CAD_CHROMIUM:-/usr/bin/chromium}"

missing_packages=()
[ -x "$CHROMIUM" ] || missing_packages+=(chromium)
node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [ "$node_major" -lt 18 ] || ! command -v npm >/dev/null 2>&1; then
  missing_packages+=(nodejs npm)
fi

if [ "${#missing_packages[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[setup-browser] missing: ${missing_packages[*]}. Install them (Debian: apt-get install ${missing_packages[*]})," \
         "or set CAD_CHROMIUM to a Chromium binary." >&2
    exit 1
  fi
  echo "[setup-browser] apt-get install ${missing_packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_packages[@]}" >/dev/null
fi

LOCK_HASH="$(sha256sum "$BROWSER_DIR/package-lock.json" | cut -d' ' -f1)"
LOCK_STAMP="$BROWSER_DIR/node_modules/.cad_lock.sha256"
if [ "$(cat "$LOCK_STAMP" 2>/dev/null || true)" != "$LOCK_HASH" ]; then
  echo "[setup-browser] npm ci in tests/browser"
  (cd "$BROWSER_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
  echo "$LOCK_HASH" > "$LOCK_STAMP"
fi
echo "[setup-browser] $("$CHROMIUM" --version 2>/dev/null | head -n1), node $(node --version)"
