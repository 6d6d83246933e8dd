#!/usr/bin/env bash
# The main job on the embedded default: SQLite and the built-in synthetic scene, in ./workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/al-loop demo --workspace "${AL_LOOP_WORKSPACE:-workspace}" "$@"
