#!/usr/bin/env bash
# apt-get install PACKAGES as root or through sudo -n, quietly; on failure the log's tail.
# Usage: bash .ci/apt-install.sh LABEL PACKAGE...   (LABEL prefixes the messages). Debian/Ubuntu only.
set -euo pipefail
label="$1"
shift

if ! command -v apt-get > /dev/null 2>&1; then
    echo "$label: no apt-get; install $* by hand" >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo > /dev/null 2>&1; then
        echo "$label: not root and no sudo; cannot install $*" >&2
        exit 1
    fi
    SUDO=(sudo -n)
fi
echo "$label: installing $* with apt-get..."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { ${SUDO[@]+"${SUDO[@]}"} apt-get update -qq \
       && ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive \
              apt-get install -y -qq --no-install-recommends "$@"; } > "$log" 2>&1; then
    echo "$label: apt-get failed:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
