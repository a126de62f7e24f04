#!/usr/bin/env bash
# Debian's headless Chromium, for the test that opens /api/docs as a person
# would (order-api/tests/api/docs_page.rs). Installed when missing; not
# pinned: Debian replaces old chromium builds, so a pin would stop resolving.
# Needs root and apt-get, and says so otherwise.
set -euo pipefail

say() { echo "install-chromium: $*"; }
fail() { echo "install-chromium: $*" >&2; exit 1; }

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
[ "$(id -u)" -eq 0 ] || fail "chromium is not installed and this is not root; install it with: sudo apt-get install -y chromium"
command -v apt-get >/dev/null 2>&1 || fail "chromium is not installed and apt-get is not available"

log=$(mktemp)
apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        -o DPkg::Lock::Timeout=300 --no-install-recommends chromium >>"$log" 2>&1
}
say "installing Debian's chromium (log: $log)"
if ! apt_install; then
    # A fresh machine has empty package lists: refresh them once.
    say "apt-get install failed; running apt-get update and trying again"
    apt-get update -q >>"$log" 2>&1 || { tail -n 20 "$log" >&2; fail "apt-get update failed"; }
    apt_install || { tail -n 20 "$log" >&2; fail "apt-get install chromium failed"; }
fi
command -v chromium >/dev/null 2>&1 || fail "installed chromium but it is not on PATH"
say "$(chromium --version 2>/dev/null || echo chromium installed)"
