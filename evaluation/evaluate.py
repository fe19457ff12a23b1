"""Evaluation of render folders: validation, per-view metrics, summaries, results files, the table.

The logic behind `metrics.py` (which only parses flags and loops over model folders); conventions are listed
in metrics.py's docstring. Input problems raise ThreeDSRError (one line, exit 2 at the CLI); a metric that
cannot be computed becomes {"unavailable": reason}.
"""
import json
import math
import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from evaluation import MetricUnavailable
from utils.errors import ThreeDSRError
from utils.image_utils import load_image, psnr
from utils.loss_utils import ssim_skimage_compatible
from utils.system_utils import atomic_write

__all__ = ["METRICS", "KEYS", "PSNR_CAP_DB", "IMAGE_EXTS", "find_methods", "scan_method", "load_rgb",
           "evaluate_method", "merge_json", "print_table"]

METRICS = ("psnr", "ssim", "lpips-alex", "lpips-vgg", "niqe", "fid", "mv-warp", "met3r")
KEYS = {"psnr": "PSNR", "ssim": "SSIM", "lpips-alex": "LPIPS-alex", "lpips-vgg": "LPIPS-vgg", "niqe": "NIQE",
        "fid": "FID", "mv-warp": "MV-warp", "met3r": "MEt3R"}
PSNR_CAP_DB = 100.0
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _unavailable(reason):
    return {"unavailable": str(reason)}


def find_methods(model_dir, split):
    """[(method name, folder)] of OUT/<split>/*/ holding renders/; ThreeDSRError if there is none."""
    if not os.path.isdir(model_dir):
        raise ThreeDSRError(f"model folder {model_dir} does not exist; pass the -m folder of a trained model")
    split_dir = os.path.join(model_dir, split)
    if not os.path.isdir(split_dir):
        raise ThreeDSRError(f"{model_dir} has no {split}/ folder; run `python render.py -m {model_dir}` first")
    methods = [(name, os.path.join(split_dir, name)) for name in sorted(os.listdir(split_dir))
               if os.path.isdir(os.path.join(split_dir, name, "renders"))]
    if not methods:
        raise ThreeDSRError(f"{split_dir} has no <method>/renders/ folder (e.g. ours_30000/renders); "
                            f"run `python render.py -m {model_dir}` first")
    return methods


def _image_names(folder):
    return sorted(f for f in os.listdir(folder)
                  if os.path.splitext(f)[1].lower() in IMAGE_EXTS and os.path.isfile(os.path.join(folder, f)))


def _image_size(path):
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ThreeDSRError(f"{path} is not a readable image ({exc.__class__.__name__}); delete it or "
                            f"re-render") from None


def scan_method(method_dir):
    """Validate renders/ against gt/: names and sizes. Returns (names, [(W, H)])."""
    rdir, gdir = os.path.join(method_dir, "renders"), os.path.join(method_dir, "gt")
    if not os.path.isdir(gdir):
        raise ThreeDSRError(f"{method_dir} has renders/ but no gt/ folder; re-run render.py (it writes both)")
    renders, gts = _image_names(rdir), _image_names(gdir)
    if not renders:
        raise ThreeDSRError(f"{rdir} holds no images ({', '.join(IMAGE_EXTS)}); re-run render.py")
    if not gts:
        raise ThreeDSRError(f"{gdir} holds no images ({', '.join(IMAGE_EXTS)}); re-run render.py")
    if renders != gts:
        only_r = sorted(set(renders) - set(gts))
        only_g = sorted(set(gts) - set(renders))
        what = (f"{only_r[0]} has no ground truth" if only_r else f"gt/{only_g[0]} has no render")
        raise ThreeDSRError(f"{method_dir}: renders/ has {len(renders)} images and gt/ has {len(gts)} "
                            f"with different names ({what}); renders and gt must pair up by file name")
    sizes = []
    for name in renders:
        rs, gs = _image_size(os.path.join(rdir, name)), _image_size(os.path.join(gdir, name))
        if rs != gs:
            raise ThreeDSRError(f"{method_dir}: {name} is {rs[0]}x{rs[1]} in renders/ but {gs[0]}x{gs[1]} in gt/; "
                                f"render at the ground truth's resolution")
        sizes.append(rs)
    return renders, sizes


def load_rgb(path):
    """An image as torch float32 [3,H,W] in [0,1]; greyscale replicated, RGBA composited on black."""
    arr = load_image(path)
    if arr.shape[2] == 4:
        arr = arr[:, :, :3] * arr[:, :, 3:4]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class _Metric:
    """One metric over a method folder: per-view values, and a summary or the reason it is unavailable."""

    def __init__(self, key):
        self.key = key
        self.per_view = {}
        self.reason = None

    def fail(self, reason):
        if self.reason is None:
            self.reason = str(reason)

    def add(self, name, fn):
        if self.reason is not None:
            return
        try:
            value = float(fn())
        except MetricUnavailable as exc:
            self.fail(exc.reason)
            return
        except (ValueError, RuntimeError) as exc:  # e.g. an image smaller than the network's receptive field
            self.fail(f"could not be computed on {name}: {str(exc).splitlines()[0]}")
            return
        if not math.isfinite(value):
            self.fail(f"non-finite value on {name}")
            return
        self.per_view[name] = value

    def summary(self):
        if self.reason is not None:
            return _unavailable(self.reason)
        if not self.per_view:
            return _unavailable("no values")
        return float(np.mean(list(self.per_view.values())))


def _prepare(metrics, fid_weights, device, method_dir, names, sizes):
    """Load what each metric needs before the image loop; returns {metric: state} and fills failures."""
    state = {}
    for m in metrics:
        try:
            if m in ("lpips-alex", "lpips-vgg"):
                from evaluation.lpips import load_lpips

                state[m] = load_lpips(m.split("-")[1], device)
            elif m == "niqe":
                from evaluation.niqe import load_niqe_params

                state[m] = load_niqe_params()
            elif m == "fid":
                from evaluation.fid import find_weights, load_inception

                if len(names) < 2:
                    raise MetricUnavailable(f"FID needs at least 2 images per set, this folder has {len(names)}")
                state[m] = load_inception(find_weights(fid_weights), device)
            elif m == "mv-warp":
                from evaluation.mv_warp import load_view_geometry

                if len(names) < 2:
                    raise MetricUnavailable(f"MV-warp needs at least two views, this folder has {len(names)}")
                state[m] = load_view_geometry(method_dir, names, sizes)
            elif m == "met3r":
                from evaluation.met3r import load_met3r

                if len(names) < 2:
                    raise MetricUnavailable(f"MEt3R needs at least two views, this folder has {len(names)}")
                state[m] = load_met3r(device)
            else:
                state[m] = None
        except MetricUnavailable as exc:
            state[m] = exc
    return state


@torch.no_grad()
def evaluate_method(method_dir, names, sizes, metrics, device, fid_weights=None, quiet=False):
    """(results {KEY: value | {"unavailable"} | {"value", "num_images"}}, per_view {KEY: {name: value}})."""
    state = _prepare(metrics, fid_weights, device, method_dir, names, sizes)
    per = {m: _Metric(KEYS[m]) for m in metrics if m not in ("fid", "mv-warp", "met3r")}
    for m, mm in per.items():
        if isinstance(state[m], MetricUnavailable):
            mm.fail(state[m].reason)
    want = {m: not isinstance(state.get(m), MetricUnavailable) for m in metrics}
    feats_r, feats_g = [], []
    pair_metrics = {m: _Metric(KEYS[m]) for m in ("mv-warp", "met3r") if m in metrics}
    prev = None
    rdir, gdir = os.path.join(method_dir, "renders"), os.path.join(method_dir, "gt")
    fid_error = None
    for k, name in enumerate(tqdm(names, desc=os.path.basename(method_dir), leave=False, disable=quiet)):
        r, g = load_rgb(os.path.join(rdir, name)), load_rgb(os.path.join(gdir, name))
        if "psnr" in per:
            per["psnr"].add(name, lambda: min(float(psnr(r.double(), g.double())), PSNR_CAP_DB))
        if "ssim" in per:
            per["ssim"].add(name, lambda: ssim_skimage_compatible(r.double(), g.double()))
        for m in ("lpips-alex", "lpips-vgg"):
            if m in per and want[m]:
                per[m].add(name, lambda: state[m](r[None].to(device), g[None].to(device))[0])
        if "niqe" in per and want["niqe"]:
            from evaluation.niqe import niqe

            per["niqe"].add(name, lambda: niqe(r, state["niqe"]))
        if "fid" in metrics and want["fid"] and fid_error is None:
            from evaluation.fid import inception_features

            try:
                feats_r.append(inception_features(state["fid"], [r], device))
                feats_g.append(inception_features(state["fid"], [g], device))
            except RuntimeError as exc:
                fid_error = f"Inception failed on {name}: {str(exc).splitlines()[0]}"
        if prev is not None:
            pname, pr = prev
            key = f"{pname}->{name}"
            if "mv-warp" in pair_metrics and want["mv-warp"]:
                from evaluation.mv_warp import warp_disagreement

                depths, cams = state["mv-warp"]
                val, _ = warp_disagreement(pr, depths[k - 1], cams[k - 1], r, depths[k], cams[k])
                if val is not None:
                    pair_metrics["mv-warp"].per_view[key] = val
            if "met3r" in pair_metrics and want["met3r"]:
                from evaluation.met3r import met3r_score

                pair_metrics["met3r"].add(key, lambda: met3r_score([pr, r], [pname, name], device)[0])
        prev = (name, r)

    results, per_view = {"views": len(names)}, {}
    for m in metrics:
        key = KEYS[m]
        if m in per:
            results[key] = per[m].summary()
            per_view[key] = per[m].per_view
        elif m == "fid":
            if isinstance(state["fid"], MetricUnavailable):
                results[key] = _unavailable(state["fid"].reason)
            elif fid_error is not None:
                results[key] = _unavailable(fid_error)
            else:
                from evaluation.fid import fid_from_features

                try:
                    value = fid_from_features(np.concatenate(feats_r), np.concatenate(feats_g))
                    results[key] = ({"value": value, "num_images": len(names)} if math.isfinite(value)
                                    else _unavailable("non-finite FID (degenerate Inception features)"))
                except MetricUnavailable as exc:
                    results[key] = _unavailable(exc.reason)
        else:  # mv-warp, met3r
            pm = pair_metrics[m]
            if isinstance(state[m], MetricUnavailable):
                results[key] = _unavailable(state[m].reason)
            elif pm.reason is not None:
                results[key] = _unavailable(pm.reason)
            elif not pm.per_view:
                results[key] = _unavailable("no pair of consecutive views shares enough co-visible pixels"
                                            if m == "mv-warp" else "no pair could be scored")
            else:
                results[key] = {"value": float(np.mean(list(pm.per_view.values()))), "pairs": len(pm.per_view)}
            per_view[key] = pm.per_view
    return results, per_view


def merge_json(path, new):
    """Merge {method: {metric: ...}} into an existing JSON file (metric level); unreadable files are replaced."""
    data = {}
    if os.path.isfile(path):
        try:
            with open(path) as f:
                data = json.load(f)
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
    for method, entry in new.items():
        old = data.get(method) if isinstance(data.get(method), dict) else {}
        data[method] = {**old, **entry}
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, allow_nan=False)
        f.write("\n")


def _fmt(value, key):
    if isinstance(value, dict):
        if "unavailable" in value:
            return "n/a"
        value = value.get("value")
    if value is None:
        return "n/a"
    return f"{value:.3f}" if key in ("PSNR", "NIQE", "FID") else f"{value:.4f}"


def print_table(rows, metrics):
    """rows: [(model, method, results)]. Unavailable metrics show n/a with their reasons below."""
    keys = [KEYS[m] for m in metrics]
    head = ["model", "method"] + keys
    body = [[model, method] + [_fmt(res.get(k), k) for k in keys] for model, method, res in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w)  # noqa: E731
                                    for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(head))
    for b in body:
        print(line(b))
    reasons = {}
    for _, _, res in rows:
        for k in keys:
            v = res.get(k)
            if isinstance(v, dict) and "unavailable" in v:
                reasons.setdefault(k, v["unavailable"])
    for k, why in reasons.items():
        print(f"  {k} n/a: {why}")
    print("  (PSNR/SSIM higher is better; LPIPS, NIQE, FID, MV-warp, MEt3R lower is better)")
