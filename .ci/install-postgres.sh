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

bash "$(dirname "$0")/apt-install.sh" postgres postgresql

if ! found_initdb; then
    echo "postgres: installed postgresql but found no /usr/lib/postgresql/*/bin/initdb" >&2
    exit 1
fi
echo "postgres: installed: $(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
