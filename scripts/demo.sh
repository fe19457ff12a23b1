#!/usr/bin/env bash
# The main job on the embedded synthetic scene, no download: set up, make the scene, train 3DGS on
# the 1/8-resolution images, render the test views at the training resolution and at 4x.
# Usage: bash scripts/demo.sh [OUT_ROOT]   (default: output/)   ITERS=3000 to change the length.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-output}
ITERS=${ITERS:-3000}
bash scripts/setup.sh
. .venv/bin/activate
SCENE=data/synthetic
if [ ! -d "$SCENE/sparse" ]; then
  python tools/make_scene.py --out "$SCENE"
fi
MODEL="$OUT/synthetic"
python train.py -s "$SCENE" -m "$MODEL" -r 8 --eval --iterations "$ITERS" \
  --densify_until_iter $((ITERS / 2)) --opacity_reset_interval 100000 \
  --sh_increase_interval $((ITERS / 4)) --position_lr_max_steps "$ITERS" \
  --test_iterations 1 $((ITERS / 2)) "$ITERS" --save_iterations "$ITERS"
python render.py -m "$MODEL" --skip_train                 # LR test views (1/8)
python render.py -m "$MODEL" --skip_train -r 2            # the same LR model at 4x (images_2 size)
if [ -f metrics.py ]; then python metrics.py -m "$MODEL"; fi
echo "demo done: $MODEL"
