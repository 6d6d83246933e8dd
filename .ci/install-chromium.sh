#!/usr/bin/env bash
# Make sure Debian's chromium and chromium-driver exist, for the browser tests (selenium, headless)
# in tests/test_browser.py. Idempotent: does nothing when both are on PATH. Debian/Ubuntu (apt) only.
set -euo pipefail

if command -v chromium > /dev/null 2>&1 && command -v chromedriver > /dev/null 2>&1; then
    echo "chromium: present ($(command -v chromium), $(command -v chromedriver))"
    exit 0
fi
bash "$(dirname "$0")/apt-install.sh" chromium chromium chromium-driver
echo "chromium: installed: $(command -v chromium) $(command -v chromedriver)"
