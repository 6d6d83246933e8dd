#!/usr/bin/env bash
# Create .venv and install al-loop into it. torch goes first and pinned: 2.13.0 is a CPU build
# that lies on this machine's disk, while a bare `torch` could pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
