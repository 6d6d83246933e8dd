#!/usr/bin/env bash
# Make sure Debian's chromium and chromium-driver exist, for the browser tests (selenium, headless)
# in tests/test_browser.py. Idempotent: does nothing when both are on PATH. Debian/Ubuntu (apt) only.
set -euo pipefail

if command -v chromium > /dev/null 2>&1 && command -v chromedriver > /dev/null 2>&1; then
    echo "chromium: present ($(command -v chromium), $(command -v chromedriver))"
    exit 0
fi
if ! command -v apt-get > /dev/null 2>&1; then
    echo "chromium: no chromium/chromedriver and no apt-get; install them by hand" >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo > /dev/null 2>&1; then
        echo "chromium: not root and no sudo; cannot install chromium" >&2
        exit 1
    fi
    SUDO=(sudo -n)
fi
echo "chromium: installing chromium and chromium-driver with apt-get..."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { ${SUDO[@]+"${SUDO[@]}"} apt-get update -qq \
       && ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive \
              apt-get install -y -qq --no-install-recommends chromium chromium-driver; } > "$log" 2>&1; then
    echo "chromium: apt-get failed:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
echo "chromium: installed: $(command -v chromium) $(command -v chromedriver)"
