#!/usr/bin/env bash
# One-time setup on a fresh machine. Idempotent; safe to re-run.
#   bash scripts/setup.sh          CPU (pip): a virtual environment in .venv with the pinned CPU torch, the
#                                  project's requirements and our native CPU rasterizer.
#   bash scripts/setup.sh --cuda   GPU (pip): CUDA torch + gsplat + the rest (requirements-cuda.txt), gsplat's
#                                  kernels built, into the active conda environment, else into .venv.
# An active conda environment other than base (e.g. `conda env create -f environment.yml && conda activate
# 3dsr`) is used as it is and never swapped for .venv: without --cuda only torch-free requirements are
# added to it, then the setup.d steps run (gsplat's kernels, metric weights, the optional CPU rasterizer).
# Details: docs/GPU.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA=0
for arg in "$@"; do
  case "$arg" in
    --cuda) CUDA=1 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (usage: bash scripts/setup.sh [--cuda])" >&2; exit 2 ;;
  esac
done
. scripts/lib/pyenv.sh
PY=${PYTHON:-python3}
if threedsr_conda_env; then
  echo "setup: using the active $(threedsr_env_name)"
else
  if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
  fi
  . .venv/bin/activate
  python -m pip install -q --upgrade pip >/dev/null
fi
# Set by --cuda in the environment it set up, so that a later plain run (scripts/test.sh runs one) keeps
# the CUDA torch instead of putting the CPU one back.
cuda_marker="$(python -c 'import sys; print(sys.prefix)')/.threedsr_cuda"
if [ "$CUDA" = 1 ]; then
  if python -c 'import sys, torch; sys.exit(torch.version.cuda is not None)' 2>/dev/null; then
    echo "setup: replacing the CPU torch of this environment with the CUDA one (requirements-cuda.txt)"
  fi
  python -m pip install -q -r requirements-cuda.txt -r requirements-dev.txt
  touch "$cuda_marker"
  export THREEDSR_SETUP_CUDA=1  # setup.d/15_gsplat.sh: a kernel build that cannot happen is an error
elif threedsr_conda_env || [ -f "$cuda_marker" ]; then
  if ! python -c 'import torch' 2>/dev/null; then
    echo "setup: no torch in $(threedsr_env_name); install the GPU stack with bash scripts/setup.sh --cuda," \
         "or create the environment from environment.yml (THREEDSR_USE_VENV=1 uses the CPU .venv instead)" >&2
    exit 1
  fi
  echo "setup: keeping this environment's torch $(python -c 'import torch; print(torch.__version__)')"
  python -m pip install -q -r requirements-common.txt -r requirements-dev.txt
else
  # torch first and pinned, so nothing below can pull a multi-GB CUDA build.
  python -m pip install -q torch==2.13.0
  python -m pip install -q -r requirements.txt -r requirements-dev.txt
fi
# Native pieces and weights: each script exits 0 with a message when it cannot run here (15_gsplat.sh
# exits 1 under --cuda when gsplat's kernels cannot be built).
failed=()
for step in scripts/setup.d/*.sh; do
  [ -e "$step" ] || continue
  bash "$step" || failed+=("$step")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "setup incomplete: ${failed[*]} failed (see above)" >&2
  exit 1
fi
if threedsr_conda_env; then
  echo "setup done: $(threedsr_env_name)"
else
  echo "setup done: source .venv/bin/activate"
fi
