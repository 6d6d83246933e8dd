#!/usr/bin/env bash
# Install Label Studio 1.23.2 into its own virtualenv, .ls-venv (it pins Django, pytz and the SDK in
# ways that clash with the project's .venv). Used by backends/studio_process.py for the tests and
# the demo. Does nothing when that version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.23.2
if [ -x .ls-venv/bin/label-studio ] && [ "$(.ls-venv/bin/python -c \
    "import importlib.metadata as m; print(m.version('label-studio'))" 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
if [ ! -x .ls-venv/bin/python ]; then
  python3 -m venv .ls-venv
fi
.ls-venv/bin/python -m pip install --quiet --upgrade pip
.ls-venv/bin/python -m pip install --quiet "label-studio==$VERSION"
