#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl, postgres) exist, for the
# throwaway test server in tests/postgres_server.py. Idempotent: does nothing when a
# /usr/lib/postgresql/<version>/bin/initdb is already there. Debian/Ubuntu (apt) only.
set -euo pipefail

found_initdb() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' > /dev/null
}

if found_initdb; then
    echo "postgres: server binaries present: $(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    exit 0
fi

if ! command -v apt-get > /dev/null 2>&1; then
    echo "postgres: no /usr/lib/postgresql/*/bin/initdb and no apt-get; install the PostgreSQL server by hand" >&2
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo > /dev/null 2>&1; then
        echo "postgres: not root and no sudo; cannot install the postgresql package" >&2
        exit 1
    fi
    SUDO=(sudo -n)
fi

echo "postgres: installing the postgresql package with apt-get..."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { ${SUDO[@]+"${SUDO[@]}"} apt-get update -qq \
       && ${SUDO[@]+"${SUDO[@]}"} env DEBIAN_FRONTEND=noninteractive \
              apt-get install -y -qq --no-install-recommends postgresql; } > "$log" 2>&1; then
    echo "postgres: apt-get failed:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi

if ! found_initdb; then
    echo "postgres: installed postgresql but found no /usr/lib/postgresql/*/bin/initdb" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
echo "postgres: installed: $(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
