# Which Python environment the scripts run in (sourced by setup.sh, test.sh, synthetic.sh, gpu_smoke.sh,
# the dataset scripts and setup.d steps). An active conda environment other than base (conda, mamba or
# micromamba; e.g. `conda activate 3dsr` after `conda env create -f environment.yml`) is used as it is and
# is never swapped for the project's CPU .venv; otherwise the scripts use .venv.
# THREEDSR_USE_VENV=1 forces .venv even inside a conda environment.

# True when an active conda environment (not base) is to be used.
threedsr_conda_env() {
  [ -z "${THREEDSR_USE_VENV:-}" ] || return 1
  [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ] || return 1
  [ "${CONDA_DEFAULT_ENV:-}" != base ] || return 1
  # base activated by path, or micromamba's root prefix
  if [ -n "${CONDA_EXE:-}" ] && [ "$CONDA_PREFIX" = "$(dirname "$(dirname "$CONDA_EXE")")" ]; then return 1; fi
  if [ -n "${MAMBA_ROOT_PREFIX:-}" ] && [ "$CONDA_PREFIX" = "$MAMBA_ROOT_PREFIX" ]; then return 1; fi
  return 0
}

# Make `python` the project's interpreter: the active conda environment, else .venv (activated).
# Returns 1 when neither exists (run bash scripts/setup.sh first).
threedsr_activate() {
  if threedsr_conda_env; then
    return 0
  fi
  [ -f .venv/bin/activate ] || return 1
  # shellcheck disable=SC1091
  . .venv/bin/activate
}

# One line naming the environment, for logs.
threedsr_env_name() {
  if threedsr_conda_env; then
    echo "conda environment ${CONDA_DEFAULT_ENV:-$CONDA_PREFIX} ($CONDA_PREFIX)"
  else
    echo ".venv ($(pwd)/.venv)"
  fi
}

# The interpreter for a setup step: `python` when setup.sh (or a conda environment) has one active, else
# .venv's when it exists (a step run by hand).
threedsr_step_python() {
  if [ -z "${VIRTUAL_ENV:-}" ] && ! threedsr_conda_env && [ -x .venv/bin/python ]; then
    echo .venv/bin/python
  else
    echo python
  fi
}
