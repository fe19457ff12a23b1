#!/usr/bin/env bash
# LLFF with the paper's protocol: LR = images_8, x4 SR, GT = images_2, every 8th view held out,
# LR 3DGS 30K iterations, 4 SR steps x 5K iterations; methods LR-3DGS@HR, bicubic, per-view SR, 3DSR.
# Usage: bash scripts/llff.sh DATA_ROOT OUT_ROOT [scene ...] [-- run_scene.py flags]
#   DATA_ROOT holds fern/ flower/ ... (scripts/download_llff.sh); results in OUT_ROOT/results.md
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bash scripts/llff.sh DATA_ROOT OUT_ROOT [scene ...] [-- run_scene.py flags]"; exit 2; }
DATA=$1; OUT=$2; shift 2
SCENES=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do SCENES+=("$1"); shift; done; [ "${1:-}" = "--" ] && shift
[ ${#SCENES[@]} -gt 0 ] || SCENES=(fern flower fortress horns leaves orchids room trex)
. scripts/lib/pyenv.sh; threedsr_activate || true  # an active conda environment (not base) is kept, else .venv
. scripts/lib/batch.sh
run_batch "$DATA" "$OUT" "${SCENES[*]}" --lr_res 8 --scale 4 "$@"
