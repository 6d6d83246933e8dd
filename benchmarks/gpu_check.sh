#!/usr/bin/env bash
# The GPU path, checked on a CUDA machine in one go: model speed (fp32 against mixed precision),
# pool scoring at T=20, and a short training on the GPU followed by /predict through the real
# backend over HTTP (benchmarks/predict_latency.py trains the cuda profile's U-Net for an epoch).
# Prints the figures and keeps them in OUT_DIR (default $OUT, else /tmp/gpu_check).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# A machine set up with scripts/setup.sh has everything. A machine that has CUDA torch but
# cannot reach PyPI takes the other dependencies as wheels in .whl/ (made where pip works, for
# the GPU machine's Python, e.g. 3.12):
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     rasterio fiona shapely sqlalchemy alembic fastapi uvicorn pydantic-settings label-studio-sdk
# and this script installs them into /tmp/site first (torch itself is never replaced).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && python=.venv/bin/python
if [ -d .whl ]; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
"$python" - <<'PY' | tee "$out/device.txt"
import importlib, sys
import torch
if not torch.cuda.is_available():
    sys.exit("no CUDA device: this check is for a GPU machine")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}")
missing = [m for m in ("rasterio", "fiona", "shapely", "sqlalchemy", "alembic", "fastapi", "uvicorn", "typer",
                       "rich", "httpx", "scipy", "pydantic_settings") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing on this machine: {', '.join(missing)}; carry them as wheels in .whl/ (see the header)")
PY
status=0
run() {  # name, then the command; a failing step is reported and the others still run
    local name=$1; shift
    echo "== $name"
    if ! "$@" 2>&1 | tee "$out/$name.txt"; then echo "!! $name failed"; status=1; fi
}
run model_speed "$python" benchmarks/model_speed.py --repeats 3
run pool_scoring "$python" benchmarks/pool_scoring.py --patches 32
run train_and_predict "$python" benchmarks/predict_latency.py --repeats 2
echo "figures in $out"
exit $status
