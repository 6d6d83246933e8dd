#!/usr/bin/env bash
# The main job on the embedded default (SQLite, built-in synthetic scenes, in ./workspace): a first
# model and round, then a real Label Studio and the al-loop backend serving it, until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-label-studio.sh
exec .venv/bin/al-loop demo --workspace "${AL_LOOP_WORKSPACE:-workspace}" "$@"
