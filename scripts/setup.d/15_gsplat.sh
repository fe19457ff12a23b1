#!/usr/bin/env bash
# gsplat's CUDA kernels (the `gsplat` rasterizer backend), where gsplat is installed (bash scripts/setup.sh
# --cuda, or a conda environment made from environment.yml). gsplat 1.5.3 compiles them with torch's
# extension builder the first time it is used (a few minutes; cached in ~/.cache/torch_extensions, rebuilt
# only when torch or gsplat change); this step does it now, so the first training run does not.
# In a conda environment with its own nvcc (conda-forge's cuda-nvcc) it first installs an activation hook
# that points torch's builder at that toolkit: CUDA_HOME, and CUDA_INC_PATH for the headers, which
# conda-forge's CUDA packages keep in targets/<arch>/include where torch does not look by itself.
# Silent when gsplat is not installed (the CPU setup). A build that cannot happen is one line; it fails
# the setup (exit 1) only under `setup.sh --cuda` (THREEDSR_SETUP_CUDA=1).
set -uo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib/pyenv.sh
python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("gsplat") is None)' 2>/dev/null || exit 0
strict=${THREEDSR_SETUP_CUDA:-0}

if threedsr_conda_env && [ -x "$CONDA_PREFIX/bin/nvcc" ]; then
  inc=""
  for d in "$CONDA_PREFIX"/targets/*/include; do
    if [ -f "$d/cuda_runtime_api.h" ]; then inc=${d#"$CONDA_PREFIX"/}; break; fi
  done
  mkdir -p "$CONDA_PREFIX/etc/conda/activate.d" "$CONDA_PREFIX/etc/conda/deactivate.d"
  {
    echo "# Written by 3dsr (scripts/setup.d/15_gsplat.sh): torch's extension builder, which compiles gsplat's"
    echo "# kernels, uses this environment's CUDA toolkit and headers."
    echo 'export _THREEDSR_OLD_CUDA_HOME="${CUDA_HOME-}" _THREEDSR_OLD_CUDA_INC_PATH="${CUDA_INC_PATH-}"'
    echo 'export CUDA_HOME="$CONDA_PREFIX"'
    if [ -n "$inc" ]; then echo "export CUDA_INC_PATH=\"\$CONDA_PREFIX/$inc\""; fi
  } >"$CONDA_PREFIX/etc/conda/activate.d/threedsr_cuda.sh"
  {
    echo "# Written by 3dsr (scripts/setup.d/15_gsplat.sh): undoes activate.d/threedsr_cuda.sh."
    echo 'if [ -n "${_THREEDSR_OLD_CUDA_HOME-}" ]; then export CUDA_HOME="$_THREEDSR_OLD_CUDA_HOME"; else unset CUDA_HOME; fi'
    echo 'if [ -n "${_THREEDSR_OLD_CUDA_INC_PATH-}" ]; then export CUDA_INC_PATH="$_THREEDSR_OLD_CUDA_INC_PATH"; else unset CUDA_INC_PATH; fi'
    echo 'unset _THREEDSR_OLD_CUDA_HOME _THREEDSR_OLD_CUDA_INC_PATH'
  } >"$CONDA_PREFIX/etc/conda/deactivate.d/threedsr_cuda.sh"
  export CUDA_HOME="$CONDA_PREFIX"
  if [ -n "$inc" ]; then export CUDA_INC_PATH="$CONDA_PREFIX/$inc"; fi
fi

log="${TMPDIR:-/tmp}/3dsr_gsplat_build.$$.log"
python - >"$log" 2>&1 <<'PY'
import os
import shutil
import sys

import torch

if torch.version.cuda is None:
    print(f"RESULT torch {torch.__version__} is a CPU build; bash scripts/setup.sh --cuda installs the CUDA one")
    sys.exit(3)
from torch.utils.cpp_extension import CUDA_HOME

import re
import subprocess

nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
if not (nvcc and os.path.isfile(nvcc)):
    nvcc = shutil.which("nvcc")
want = torch.version.cuda.split(".")[0]
remedy = (f"torch {torch.__version__} needs a CUDA {want}.x toolkit: use the conda environment (environment.yml), "
          "or install one and set CUDA_HOME, then rerun bash scripts/setup.sh")
if nvcc is None:
    print(f"RESULT no CUDA toolkit (nvcc) for the one-time kernel build; {remedy}")
    sys.exit(4)
try:
    found = re.search(r"release (\d+)\.(\d+)", subprocess.run([nvcc, "--version"], capture_output=True,
                                                              text=True).stdout)
except OSError:
    found = None
if found and found.group(1) != want:  # torch's extension builder refuses a different major version
    print(f"RESULT {nvcc} is CUDA {found.group(1)}.{found.group(2)}; {remedy}")
    sys.exit(4)
if not torch.cuda.is_available():
    print(f"RESULT no GPU visible here; the kernels build on first use (toolkit: {CUDA_HOME})")
    sys.exit(5)
import gsplat
from gsplat.cuda._backend import _C

if _C is None:
    print("RESULT the kernel build failed (this log has the compiler output)")
    sys.exit(6)
print(f"RESULT gsplat {gsplat.__version__}: CUDA kernels ready (torch {torch.__version__}, CUDA "
      f"{torch.version.cuda}, toolkit {CUDA_HOME}, {torch.cuda.get_device_name(0)})")
PY
status=$?
msg=$(grep '^RESULT ' "$log" | tail -n 1 | cut -c8-)
if [ "$status" -eq 0 ]; then
  echo "gsplat: $msg"
  rm -f "$log"
  exit 0
fi
if [ "$status" -eq 5 ]; then  # no GPU here: not an error
  echo "gsplat: $msg"
  rm -f "$log"
  exit 0
fi
if [ "$status" -eq 3 ] || [ "$status" -eq 4 ]; then  # nothing was compiled: the message says it all
  rm -f "$log"
  echo "gsplat: $msg; the torch backend still works (--backend torch)"
else
  [ -n "$msg" ] || msg="the kernel build failed: $(grep -v '^\s*$' "$log" | tail -n 1)"
  echo "gsplat: $msg (log: $log); the torch backend still works (--backend torch)"
fi
[ "$strict" = 1 ] && exit 1
exit 0
