#!/usr/bin/env bash
# One-time setup on a fresh machine (CPU, pip): a virtual environment in .venv with the pinned CPU
# torch, the project's requirements and our native CPU rasterizer. Idempotent; safe to re-run.
# CUDA users: conda env create -f environment.yml instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# torch first and pinned, so nothing below can pull a multi-GB CUDA build.
python -m pip install -q torch==2.13.0
python -m pip install -q -r requirements.txt -r requirements-dev.txt
# Optional native pieces: each script exits 0 with a message when it cannot run here.
for step in scripts/setup.d/*.sh; do
  [ -e "$step" ] || continue
  bash "$step"
done
echo "setup done: source .venv/bin/activate"
