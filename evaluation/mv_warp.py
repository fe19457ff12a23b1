"""MV-warp: our labelled multi-view consistency proxy (NOT MEt3R; lower = more consistent).

MV-warp: every pixel of test view j is lifted with its rendered depth, reprojected into the previous test view
i = j-1, and where view i's rendered depth agrees (co-visible) the two renders' colours are compared;
MV-warp = mean |RGB_j - RGB_i(warped)| in [0,1] over co-visible pixels, averaged over both directions of every
consecutive pair.

Details: pixel (u, v) has its centre at (u + 0.5, v + 0.5) (intrinsics with the pixel-corner origin, OpenCV
axes, as in scene/cameras.py); colours are sampled bilinearly, depths at the nearest pixel; a point is
co-visible when it projects inside view i, in front of it, and |z_i - depth_i| <= `rel_tol` * z_i (default 2%).
A direction with fewer than `min_covisible` (1%) co-visible pixels is skipped. It measures photometric
agreement of the renders through the model's own geometry: a model with wrong but self-consistent geometry can
score well, so report it beside, not instead of, the image metrics.

Inputs written by the renderer into a method folder `<split>/ours_<it>/`:
  depth/<stem>.npy  float [H, W] camera-space z of each render (0 or non-finite = no surface)
  cameras.json      a list of the rendered views' cameras in `Camera.to_json` form (position = camera centre,
                    rotation = camera-to-world 3x3, fx, fy, optional cx, cy (default W/2, H/2), width, height),
                    either with a "render" key naming the image file or in the order of the sorted renders.
                    Intrinsics are rescaled when an entry's width/height differ from the render's.
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from evaluation import MetricUnavailable

__all__ = ["ViewGeometry", "warp_disagreement", "mv_warp", "load_view_geometry"]


class ViewGeometry:
    """A rendered view's pinhole camera: K (pixel-corner origin) and world-to-camera R, t."""

    def __init__(self, fx, fy, cx, cy, R_w2c, t_w2c, width, height):
        self.fx, self.fy, self.cx, self.cy = float(fx), float(fy), float(cx), float(cy)
        self.R = torch.as_tensor(np.asarray(R_w2c, dtype=np.float64), device="cpu")
        self.t = torch.as_tensor(np.asarray(t_w2c, dtype=np.float64), device="cpu").reshape(3)
        self.width, self.height = int(width), int(height)

    @classmethod
    def from_json(cls, entry, width, height):
        """From a `cameras.json` entry (camera centre + camera-to-world rotation), at a render's size."""
        try:
            R_c2w = np.asarray(entry["rotation"], dtype=np.float64).reshape(3, 3)
            C = np.asarray(entry["position"], dtype=np.float64).reshape(3)
            ew, eh = float(entry["width"]), float(entry["height"])
            fx, fy = float(entry["fx"]), float(entry["fy"])
            cx, cy = float(entry.get("cx", ew / 2.0)), float(entry.get("cy", eh / 2.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise MetricUnavailable(f"a cameras.json entry lacks or mangles {exc}") from None
        sx, sy = width / ew, height / eh
        R = R_c2w.T
        return cls(fx * sx, fy * sy, cx * sx, cy * sy, R, -R @ C, width, height)


def _warp_one(img_j, depth_j, cam_j, img_i, depth_i, cam_i, rel_tol):
    """Colour error of view j's pixels against view i: (sum of |diff| over co-visible pixels, count, total)."""
    H, W = depth_j.shape
    dev = depth_j.device
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64, device=dev), torch.arange(W, dtype=torch.float64, device=dev),
                          indexing="ij")
    d = depth_j.to(torch.float64)
    valid = torch.isfinite(d) & (d > 0)
    d = torch.where(valid, d, torch.zeros_like(d))
    x_cam = torch.stack([(u + 0.5 - cam_j.cx) / cam_j.fx * d, (v + 0.5 - cam_j.cy) / cam_j.fy * d, d], -1)
    x_world = (x_cam - cam_j.t) @ cam_j.R  # R^T (x - t), row-vector form
    x_i = x_world @ cam_i.R.T + cam_i.t
    z = x_i[..., 2]
    front = z > 1e-8
    zs = torch.where(front, z, torch.ones_like(z))
    pu = cam_i.fx * x_i[..., 0] / zs + cam_i.cx
    pv = cam_i.fy * x_i[..., 1] / zs + cam_i.cy
    Hi, Wi = depth_i.shape
    inside = (pu >= 0) & (pu < Wi) & (pv >= 0) & (pv < Hi)
    ui = pu.floor().clamp(0, Wi - 1).long()
    vi = pv.floor().clamp(0, Hi - 1).long()
    di = depth_i.to(torch.float64)[vi, ui]
    covis = valid & front & inside & torch.isfinite(di) & (di > 0) & ((di - z).abs() <= rel_tol * z)
    grid = torch.stack([2.0 * pu / Wi - 1.0, 2.0 * pv / Hi - 1.0], -1).to(torch.float32)[None]
    warped = F.grid_sample(img_i[None].to(torch.float32), grid, mode="bilinear", padding_mode="border",
                           align_corners=False)[0]
    diff = (img_j.to(torch.float32) - warped).abs().mean(0)
    return float(diff[covis].double().sum()), int(covis.sum()), H * W


def warp_disagreement(img_a, depth_a, cam_a, img_b, depth_b, cam_b, rel_tol=0.02, min_covisible=0.01):
    """Symmetric MV-warp of one pair: (mean |diff| over co-visible pixels of both directions, co-visible
    fraction); value None when too few pixels are co-visible. Images [3,H,W] in [0,1], depths [H,W]."""
    total_sum, total_n, used = 0.0, 0, 0
    fractions = []
    for args in ((img_b, depth_b, cam_b, img_a, depth_a, cam_a), (img_a, depth_a, cam_a, img_b, depth_b, cam_b)):
        s, n, tot = _warp_one(*args, rel_tol)
        fractions.append(n / tot)
        if n >= min_covisible * tot and n > 0:
            total_sum, total_n, used = total_sum + s, total_n + n, used + 1
    frac = float(np.mean(fractions))
    if used == 0:
        return None, frac
    return total_sum / total_n, frac


def mv_warp(images, depths, cams, names=None, rel_tol=0.02, min_covisible=0.01):
    """MV-warp over consecutive views. Returns (mean over usable pairs, {"a->b": value or None}).

    Raises MetricUnavailable when fewer than two views are given or no pair shares enough pixels.
    """
    n = len(images)
    if n < 2:
        raise MetricUnavailable(f"MV-warp needs at least two views, got {n}")
    names = names or [str(k) for k in range(n)]
    per_pair, vals = {}, []
    for k in range(n - 1):
        val, _ = warp_disagreement(images[k], depths[k], cams[k], images[k + 1], depths[k + 1], cams[k + 1],
                                   rel_tol, min_covisible)
        per_pair[f"{names[k]}->{names[k + 1]}"] = val
        if val is not None:
            vals.append(val)
    if not vals:
        raise MetricUnavailable("MV-warp: no pair of consecutive views shares enough co-visible pixels")
    return float(np.mean(vals)), per_pair


def load_view_geometry(method_dir, names, sizes):
    """Depths and cameras for the renders `names` (sizes [(W, H)]) of a method folder, or MetricUnavailable."""
    depth_dir = os.path.join(method_dir, "depth")
    cam_path = os.path.join(method_dir, "cameras.json")
    how = ("render.py must write depth/<name>.npy (camera-space z) and cameras.json (one Camera.to_json "
           "entry per render) beside renders/")
    if not os.path.isdir(depth_dir) or not os.path.isfile(cam_path):
        raise MetricUnavailable(f"no depth/ and cameras.json in {method_dir}; {how}")
    try:
        with open(cam_path) as f:
            entries = json.load(f)
    except (OSError, ValueError) as exc:
        raise MetricUnavailable(f"cannot read {cam_path}: {exc}") from None
    if not isinstance(entries, list):
        raise MetricUnavailable(f"{cam_path} must hold a list of camera entries")
    by_render = {e.get("render"): e for e in entries if isinstance(e, dict) and e.get("render")}
    if not by_render and len(entries) != len(names):
        raise MetricUnavailable(f"{cam_path} has {len(entries)} cameras for {len(names)} renders and no "
                                f"'render' keys to match them")
    depths, cams = [], []
    for k, (name, (w, h)) in enumerate(zip(names, sizes)):
        entry = by_render.get(name) if by_render else entries[k]
        if entry is None:
            raise MetricUnavailable(f"{cam_path} has no camera for render {name}")
        p = os.path.join(depth_dir, os.path.splitext(name)[0] + ".npy")
        try:
            d = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise MetricUnavailable(f"cannot read depth map {p}: {exc}; {how}") from None
        d = np.squeeze(d)
        if d.shape != (h, w):
            raise MetricUnavailable(f"depth map {p} is {d.shape}, its render is {h}x{w}")
        depths.append(torch.from_numpy(np.asarray(d, dtype=np.float32)))
        cams.append(ViewGeometry.from_json(entry, w, h))
    return depths, cams
