#!/usr/bin/env bash
# GPU smoke test (tools/gpu_smoke.py): gsplat's kernels load; gsplat matches the PyTorch reference (images
# and gradients); the embedded scene runs end to end on the GPU (train, render, sr_refine in its three
# modes, metrics); real-size SD-x4-upscaler and StableSR-Turbo (random weights) do one SR step on 17 views
# of 2016x1512 within a 24 GB card's memory with the tiling flags and an 80 GB card's without.
# Prints PASS / FAIL / SKIP per stage with wall time and peak GPU memory, writes
# output/gpu_smoke/results.json and exits 1 if a stage fails. No downloads; < 8 min on one H100-class GPU
# once gsplat's kernels are built (bash scripts/setup.sh --cuda builds them).
# Usage: bash scripts/gpu_smoke.sh [tools/gpu_smoke.py flags, e.g. --stages 2 4, --device cuda:1, --keep_work]
#   Without a GPU: bash scripts/gpu_smoke.sh --device cpu --tiny (toy sizes, seconds).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/pyenv.sh
PY=python
if threedsr_activate; then
  echo "environment: $(threedsr_env_name)"
elif command -v python3 >/dev/null 2>&1 && python3 -c 'import torch' 2>/dev/null; then
  PY=python3  # a machine whose own Python holds torch (no .venv, no conda environment)
  echo "environment: $(command -v python3) (no .venv or conda environment)"
else
  echo "no Python environment with torch: run bash scripts/setup.sh --cuda (or activate the conda environment)" >&2
  exit 2
fi
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
fi
"$PY" tools/gpu_smoke.py "$@"
