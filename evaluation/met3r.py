"""MEt3R (Asim et al. 2025) through the official `met3r` package, only if it is importable with its weights.

MEt3R compares DINO/FeatUp features of two views after aligning them with DUSt3R point maps; lower = more
consistent. Its backbones (DUSt3R/MASt3R, DINO, FeatUp) come from the Hugging Face / torch hub caches; we
never download them: the hub is put offline while the metric is built, so missing weights become
`MetricUnavailable`. We score consecutive test renders (centre square crop resized to 256x256, in [-1,1]).
Untested here: no machine of this project has the package or its weights.
"""
import importlib.util
import os

import numpy as np
import torch

from evaluation import MetricUnavailable

__all__ = ["met3r_score", "load_met3r", "HOW_TO_GET"]

HOW_TO_GET = ("install the official package (pip install git+<MEt3R repository>, it needs a CUDA GPU) and put "
              "its DUSt3R and FeatUp weights in the Hugging Face / torch hub caches")
_METRIC = {}


def load_met3r(device):
    if importlib.util.find_spec("met3r") is None:
        raise MetricUnavailable(f"the `met3r` package is not installed; {HOW_TO_GET}")
    key = str(device)
    if key in _METRIC:
        return _METRIC[key]
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from met3r import MEt3R

        with torch.device("cpu"):  # built on the CPU whatever the default device, then moved
            metric = MEt3R(img_size=256)
        metric = metric.to(device).eval()
    except Exception as exc:  # missing weights, incompatible versions, no GPU...
        raise MetricUnavailable(f"met3r is installed but could not be built ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); {HOW_TO_GET}") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _METRIC[key] = metric
    return metric


@torch.no_grad()
def met3r_score(images, names=None, device="cpu"):
    """Mean MEt3R over consecutive pairs of renders ([3,H,W] in [0,1], same size). Returns (mean, per pair)."""
    if len(images) < 2:
        raise MetricUnavailable(f"MEt3R needs at least two views, got {len(images)}")
    metric = load_met3r(device)
    names = names or [str(k) for k in range(len(images))]
    per_pair = {}
    for k in range(len(images) - 1):
        pair = torch.stack([images[k], images[k + 1]]).to(device) * 2.0 - 1.0  # [2, 3, H, W] in [-1, 1]
        h, w = pair.shape[-2:]
        s = min(h, w)  # centre square crop, then 256x256 (MEt3R's input size)
        pair = pair[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        pair = torch.nn.functional.interpolate(pair, size=(256, 256), mode="bilinear", align_corners=False,
                                               antialias=True)[None]  # [1, 2, 3, 256, 256]
        try:
            out = metric(images=pair, return_overlap_mask=False, return_score_map=False, return_projections=False)
        except Exception as exc:
            raise MetricUnavailable(f"met3r failed on {names[k]}->{names[k + 1]} ({type(exc).__name__}: {exc})") from None
        score = out[0] if isinstance(out, (tuple, list)) else out
        per_pair[f"{names[k]}->{names[k + 1]}"] = float(torch.as_tensor(score).float().mean())
    return float(np.mean(list(per_pair.values()))), per_pair
