#!/usr/bin/env bash
# Set up (idempotent) and run the test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/lib/pyenv.sh
threedsr_activate  # an active conda environment (not base) is kept, else .venv
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # no spinning threads when test processes share cores
python -m pytest tests -q "$@"
