#!/usr/bin/env bash
# Mip-NeRF 360 with the paper's protocol: LR = images_8, x4 SR, GT = images_2, every 8th view held out,
# LR 3DGS 30K iterations, 4 SR steps x 5K iterations; methods LR-3DGS@HR, bicubic, per-view SR, 3DSR.
# Usage: bash scripts/mipnerf360.sh DATA_ROOT OUT_ROOT [scene ...] [launcher flags] [-- run_scene.py flags]
#   DATA_ROOT holds bicycle/ garden/ ... (scripts/download_mipnerf360.sh); results in OUT_ROOT/results.md
#   launcher flags (tools/launch.py --help): --launcher local|gpus|slurm (default local: one scene after
#   another here), e.g. --launcher gpus [--gpus 0,1], --launcher slurm --partition gpu --time 24:00:00 [--dry_run]
set -uo pipefail
cd "$(dirname "$0")/.."
USAGE="usage: bash scripts/mipnerf360.sh DATA_ROOT OUT_ROOT [scene ...] [launcher flags] [-- run_scene.py flags]"
[ $# -ge 2 ] || { echo "$USAGE"; exit 2; }
DATA=$1; OUT=$2; shift 2
SCENES=(); LAUNCH=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do  # scene names, then (from the first -flag) launcher flags
  if [ ${#LAUNCH[@]} -eq 0 ] && [ "${1#-}" = "$1" ]; then SCENES+=("$1"); else LAUNCH+=("$1"); fi; shift
done
[ "${1:-}" = "--" ] && shift
[ ${#SCENES[@]} -gt 0 ] || SCENES=(bicycle flowers garden stump treehill room counter kitchen bonsai)
. scripts/lib/pyenv.sh; threedsr_activate || true  # an active conda environment (not base) is kept, else .venv
python tools/launch.py --scenes "$DATA" "$OUT" "${SCENES[@]}" "${LAUNCH[@]}" -- --lr_res 8 --scale 4 "$@"
