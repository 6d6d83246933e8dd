#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs al-loop and a PostgreSQL server (the
# store tests start a throwaway one on loopback), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash .ci/install-postgres.sh
exec .venv/bin/python -m pytest "$@"
