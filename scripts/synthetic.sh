#!/usr/bin/env bash
# The evaluation protocol on the embedded synthetic scene (no download): set up, make the scene, train
# 3DGS on its 1/8 images, then LR-3DGS@HR, bicubic -> 3DGS, per-view SR -> 3DGS and 3DSR at x4,
# render the test views at HR (images_2), metrics, results table and figures.
# Usage: bash scripts/synthetic.sh [--quick] [OUT_ROOT] [-- run_scene.py flags]
#   --quick: a 480x360 scene and short schedules (a few minutes on 2 CPU cores); default: 960x720.
#   SR_MODEL=... picks the diffusion SR model (default embedded-x4, the small prior shipped in models/;
#   sd-x4-upscaler or a folder where present; missing weights make those rows say "unavailable").
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0; OUT=""; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) OUT=$1 ;;
  esac
  shift
done
bash scripts/setup.sh || exit 1
. scripts/lib/pyenv.sh
threedsr_activate || exit 1  # an active conda environment (not base) is kept, else .venv
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
SR_MODEL=${SR_MODEL:-embedded-x4}
if [ "$QUICK" = 1 ]; then
  OUT=${OUT:-output/synthetic_quick}; SCENE=data/synthetic_quick
  [ -d "$SCENE/sparse" ] || python tools/make_scene.py --out "$SCENE" --width 480 --height 360 --views 16 --quiet || exit 1
  FLAGS=(--train_iters 1500 --steps 4 --iters_per_step 100
         --extra_train="--densify_until_iter 750 --opacity_reset_interval 100000 --sh_increase_interval 375")
else
  OUT=${OUT:-output/synthetic_eval}; SCENE=data/synthetic
  [ -d "$SCENE/sparse" ] || python tools/make_scene.py --out "$SCENE" --quiet || exit 1
  FLAGS=(--train_iters 7000 --steps 4 --iters_per_step 1000
         --extra_train="--densify_until_iter 3500 --opacity_reset_interval 100000 --sh_increase_interval 1750")
fi
. scripts/lib/batch.sh
mkdir -p "$OUT"
run_batch "$(dirname "$SCENE")" "$OUT" "$(basename "$SCENE")" --lr_res 8 --scale 4 --sr_model "$SR_MODEL" \
  "${FLAGS[@]}" "${EXTRA[@]}" || exit 1
python tools/make_figures.py "$OUT/$(basename "$SCENE")" || exit 1
echo "results: $OUT/results.md; figures: $OUT/$(basename "$SCENE")/figures/"
echo "look at it: python view.py -m $OUT/$(basename "$SCENE")   (then open http://localhost:8080)"
