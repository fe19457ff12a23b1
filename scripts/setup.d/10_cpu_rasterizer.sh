#!/usr/bin/env bash
# Build and install our C++/OpenMP CPU rasterizer (submodules/cpu_rasterizer) into the active
# environment. --no-build-isolation: build against the torch already installed (an isolated build
# would download another torch, possibly a multi-GB CUDA one). Needs the C++ compiler torch
# extensions need (C++20 for torch 2.13's headers; our sources are C++17) with OpenMP.
# Skipped when the installed build is of the same sources, flags and torch (a stamp in the venv).
# If the build fails, say so in one line and exit 0: the pure-PyTorch backend still works.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
SRC=submodules/cpu_rasterizer
stamp=$( { cat "$SRC"/setup.py "$SRC"/pyproject.toml "$SRC"/csrc/* "$SRC"/threedsr_cpu_rasterizer/*.py
           echo "arch=${THREEDSR_CPU_ARCH:-auto}"
           "$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null; } | sha256sum | cut -d' ' -f1)
stamp_file="$("$PY" -c 'import sys; print(sys.prefix)' 2>/dev/null)/.threedsr_cpu_rasterizer.stamp"
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] \
   && info=$("$PY" -c 'import threedsr_cpu_rasterizer as m; print(m.build_info())' 2>/dev/null); then
  echo "cpu rasterizer: up to date ($info)"
  exit 0
fi
log=$(mktemp)
if ! "$PY" -c "import setuptools" >/dev/null 2>&1; then
  "$PY" -m pip install -q setuptools >"$log" 2>&1 || true
fi
if "$PY" -m pip install --no-build-isolation -q "./$SRC" >"$log" 2>&1 \
   && info=$("$PY" -c 'import threedsr_cpu_rasterizer as m; print(m.build_info())' 2>>"$log"); then
  echo "$stamp" >"$stamp_file" 2>/dev/null || true
  echo "cpu rasterizer: built ($info)"
else
  last=$(grep -v '^\s*$' "$log" | tail -n 1)
  echo "cpu rasterizer: build failed (${last:-no output from $PY}); the torch backend still works"
fi
rm -f "$log"
# pip builds in the source tree; leave it clean.
rm -rf "$SRC/build" "$SRC"/*.egg-info
exit 0
