#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs al-loop (with the ray extra), Label Studio
# (in .ls-venv) and a PostgreSQL server (the tests start throwaway ones on loopback) and Debian's chromium (browser
# tests), then the lint and type gates (ruff and mypy, configured in pyproject.toml) and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install --quiet -e ".[test,ray]"  # the Ray scoring tests start a local cluster
bash scripts/install-label-studio.sh
bash .ci/install-postgres.sh
bash .ci/install-chromium.sh
.venv/bin/ruff check .
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest "$@"
