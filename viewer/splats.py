"""A model folder as the viewer sees it, and Gaussian PLY -> viser splat buffers.

Nothing here imports viser, so it is testable (and usable by other tools) without a server.
"""
import glob
import json
import math
import os

import numpy as np
import torch

from scene.gaussian_model import GaussianModel
from scene.scene import iteration_ply, list_iterations, resolve_iteration
from utils.errors import ModelNotFoundError
from utils.sh_utils import SH2RGB

DEFAULT_MAX_SPLATS = 500_000


# ---- the model folder --------------------------------------------------------------------------
def check_model_folder(model_path):
    """Raise ModelNotFoundError unless `model_path` is a model folder (cfg_args or point_cloud/)."""
    if not os.path.isdir(model_path):
        raise ModelNotFoundError(f"model folder {model_path} does not exist; pass the folder train.py wrote "
                                 f"(python view.py -m output/<scene>)")
    if not (os.path.isfile(os.path.join(model_path, "cfg_args"))
            or os.path.isdir(os.path.join(model_path, "point_cloud"))):
        raise ModelNotFoundError(f"{model_path} is not a model folder (no cfg_args, no point_cloud/); "
                                 f"pass the folder train.py wrote (python view.py -m output/<scene>)")


def viewer_iterations(model_path):
    """The iterations the viewer offers: the LR model's latest numeric iteration first, then every
    SR run ('sr', 'sr_bicubic', ...) in list_iterations order. Raises ModelNotFoundError if none."""
    check_model_folder(model_path)
    latest = resolve_iteration(model_path, -1)  # raises when nothing is saved
    names = [latest]
    names += [it for it in list_iterations(model_path) if not it.isdigit() and it != latest]
    return names


def iteration_label(iteration):
    return f"LR 3DGS (iteration {iteration})" if str(iteration).isdigit() else f"SR run '{iteration}'"


def read_cameras(model_path):
    """OUT/cameras.json entries (3DGS format), or [] when absent; a corrupt file raises."""
    path = os.path.join(model_path, "cameras.json")
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            entries = json.load(f)
        for e in entries:
            for key in ("img_name", "width", "height", "position", "rotation", "fx", "fy"):
                e[key]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(f"{path} is unreadable ({type(exc).__name__}: {exc}); "
                                 f"re-run train.py to rewrite it") from None
    return entries


def camera_split(model_path, entries):
    """{img_name: 'train' | 'test'} from the render folders' cameras.json (OUT/<split>/<method>/)."""
    split = {}
    for s in ("train", "test"):
        for cams in glob.glob(os.path.join(model_path, s, "*", "cameras.json")):
            try:
                with open(cams) as f:
                    for e in json.load(f):
                        split.setdefault(e.get("img_name"), s)
            except (OSError, ValueError):
                continue
    return {e["img_name"]: split.get(e["img_name"], "") for e in entries}


def view_records(model_path, img_name):
    """Where a view was rendered by render.py: [(split, method, render_name, method_dir)]."""
    out = []
    for s in ("test", "train"):
        for cams in sorted(glob.glob(os.path.join(model_path, s, "*", "cameras.json"))):
            try:
                with open(cams) as f:
                    entries = json.load(f)
            except (OSError, ValueError):
                continue
            for idx, e in enumerate(entries):
                if e.get("img_name") == img_name:
                    out.append((s, os.path.basename(os.path.dirname(cams)), e.get("render", f"{idx:05d}.png"),
                                os.path.dirname(cams)))
    return out


def ground_truth_path(model_path, img_name):
    """The view's ground-truth PNG (largest of the OUT/<split>/<method>/gt/ copies render.py wrote),
    else the dataset image (cfg_args source_path/images/<img_name>.*), else None."""
    best, best_px = None, -1
    for _split, _method, render_name, method_dir in view_records(model_path, img_name):
        gt = os.path.join(method_dir, "gt", render_name)
        if os.path.isfile(gt):
            try:
                from PIL import Image
                with Image.open(gt) as im:
                    px = im.size[0] * im.size[1]
            except Exception:
                continue
            if px > best_px:
                best, best_px = gt, px
    if best:
        return best
    try:
        from arguments import read_cfg_args
        cfg = read_cfg_args(model_path)
        source, images = getattr(cfg, "source_path", ""), getattr(cfg, "images", "images") or "images"
    except ModelNotFoundError:
        return None
    if source:
        for cand in (glob.glob(os.path.join(source, images, glob.escape(img_name) + ".*"))
                     + [os.path.join(source, images, img_name)]):
            if os.path.isfile(cand):
                return cand
    return None


def view_metrics(model_path, img_name):
    """{method: {metric: value}} for this view from OUT/per_view.json (test) / per_view_train.json."""
    out = {}
    records = view_records(model_path, img_name)
    for split, suffix in (("test", ""), ("train", "_train")):
        path = os.path.join(model_path, f"per_view{suffix}.json")
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                pv = json.load(f)
        except (OSError, ValueError):
            continue
        for s, method, render_name, _ in records:
            if s != split or method not in pv:
                continue
            vals = {m: v[render_name] for m, v in pv[method].items() if isinstance(v, dict) and render_name in v}
            if vals:
                out[method] = vals
    return out


def format_metrics(metrics):
    if not metrics:
        return "_no per-view metrics (run `python metrics.py -m OUT`)_"
    lines = ["| method | " + " | ".join(sorted({k for v in metrics.values() for k in v})) + " |"]
    keys = sorted({k for v in metrics.values() for k in v})
    lines.append("|" + "---|" * (len(keys) + 1))
    for method, vals in sorted(metrics.items()):
        lines.append(f"| {method} | " + " | ".join(f"{vals[k]:.4f}" if k in vals else "" for k in keys) + " |")
    return "\n".join(lines)


# ---- camera snapping ---------------------------------------------------------------------------
def rotmat_to_wxyz(R):
    """A 3x3 rotation matrix -> unit quaternion (w, x, y, z), w >= 0."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif R[1, 1] > R[2, 2]:
        s = math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def snap_pose(entry, look_distance=1.0):
    """The viser camera pose of a cameras.json entry.

    cameras.json rotation is camera-to-world in OpenCV axes (x right, y down, z forward); viser's
    camera follows the same convention (wxyz = R_world_camera, look = +Z, up = -Y), so the rotation
    carries over unchanged. fov is viser's vertical field of view in radians."""
    R = np.asarray(entry["rotation"], dtype=np.float64)
    C = np.asarray(entry["position"], dtype=np.float64)
    return {"position": C, "wxyz": rotmat_to_wxyz(R), "look_at": C + R[:, 2] * look_distance,
            "up_direction": -R[:, 1], "fov": 2.0 * math.atan(entry["height"] / (2.0 * entry["fy"])),
            "aspect": entry["width"] / entry["height"]}


def apply_pose(camera, pose):
    """Set a viser camera handle (client.camera) to `pose` from snap_pose."""
    camera.fov = float(pose["fov"])
    camera.position = pose["position"]
    camera.look_at = pose["look_at"]
    camera.up_direction = pose["up_direction"]


def scene_up(entries):
    """The mean camera up (-Y) direction, normalised: the scene's up for the orbit controls."""
    if not entries:
        return None
    up = -np.mean([np.asarray(e["rotation"], dtype=np.float64)[:, 1] for e in entries], axis=0)
    n = np.linalg.norm(up)
    return up / n if n > 1e-6 else None


def camera_from_entry(entry, factor=1.0, device="cpu"):
    """scene.cameras.Camera of a cameras.json entry, at `factor` x its size."""
    from scene.cameras import Camera
    R = np.asarray(entry["rotation"], dtype=np.float64)
    C = np.asarray(entry["position"], dtype=np.float64)
    w2c = np.eye(4)
    w2c[:3, :3] = R.T
    w2c[:3, 3] = -R.T @ C
    w, h = int(entry["width"]), int(entry["height"])
    cam = Camera(uid=int(entry.get("id", 0)), image_name=entry["img_name"],
                 world_to_camera=torch.tensor(w2c, dtype=torch.float32, device=device),
                 fx=float(entry["fx"]), fy=float(entry["fy"]),
                 cx=float(entry.get("cx", w / 2)), cy=float(entry.get("cy", h / 2)), width=w, height=h)
    return cam if factor == 1 else cam.scaled(factor)


# ---- splats ------------------------------------------------------------------------------------
def load_gaussians(model_path, iteration, device="cpu"):
    """GaussianModel of an iteration (number or SR run name), with the model's 2D filter convention."""
    from scene.conventions import model_filter_2d
    ply = iteration_ply(model_path, iteration)
    if not os.path.isfile(ply):
        raise ModelNotFoundError(f"iteration {iteration} not found in {model_path} (no {ply}); "
                                 f"saved: {', '.join(list_iterations(model_path)) or 'none'}")
    g = GaussianModel(3, device=device)
    g.load_ply(ply)  # PlyFormatError on a corrupt file
    g.filter_2d = model_filter_2d(model_path, ply, "auto", announce=False)
    return g


def quat_to_rotmat(q):
    """[N, 4] (w, x, y, z) quaternions (any norm) -> [N, 3, 3] rotation matrices."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


def subsample_indices(n, max_splats, seed=0):
    """All of range(n) when n <= max_splats (or no cap), else a sorted random subset (fixed seed)."""
    if not max_splats or max_splats <= 0 or n <= max_splats:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_splats), replace=False))


@torch.no_grad()
def splat_buffers(gaussians, max_splats=DEFAULT_MAX_SPLATS, seed=0):
    """viser buffers of a GaussianModel: centers [M,3], covariances [M,3,3] = R diag(s'^2) R^T with
    s' the scale with the 3D filter, rgbs [M,3] = SH2RGB(f_dc) in [0,1], opacities [M,1] with the
    3D filter; plus total (N) and shown (M <= max_splats, a fixed-seed random subset)."""
    n = gaussians.num_points
    idx = subsample_indices(n, max_splats, seed)
    t = torch.from_numpy(idx).to(gaussians.get_xyz.device)
    xyz = gaussians.get_xyz[t].detach().cpu().double().numpy()
    scale = gaussians.get_scaling_with_3D_filter[t].detach().cpu().double().numpy()
    rot = quat_to_rotmat(gaussians.params["rotation"][t].detach().cpu().double().numpy())
    cov = np.einsum("nij,nj,nkj->nik", rot, scale ** 2, rot)
    rgb = np.clip(SH2RGB(gaussians.params["f_dc"][t].detach().cpu().double().numpy().reshape(-1, 3)), 0, 1)
    opac = gaussians.get_opacity_with_3D_filter[t].detach().cpu().double().numpy().reshape(-1, 1)
    return {"centers": xyz.astype(np.float32), "covariances": cov.astype(np.float32),
            "rgbs": rgb.astype(np.float32), "opacities": opac.astype(np.float32), "total": n, "shown": len(idx)}


def splat_note(buffers):
    if buffers["shown"] < buffers["total"]:
        return (f"Preview: {buffers['shown']:,} of {buffers['total']:,} splats (random subset, fixed seed; "
                f"raise --max_splats to see more). Colours are SH degree 0.")
    return f"{buffers['total']:,} splats. Colours are SH degree 0."


def render_output_path(model_path, iteration, img_name, factor):
    tag = f"{factor:g}"
    safe = os.path.splitext(os.path.basename(str(img_name)))[0].replace(os.sep, "_")
    return os.path.join(model_path, "view_renders", f"{iteration}_{safe}_x{tag}.png")


def render_settings(model_path):
    """(kernel_size, white_background) of the model's cfg_args; (None, False) without one."""
    from arguments import read_cfg_args
    try:
        cfg = read_cfg_args(model_path)
    except ModelNotFoundError:
        return None, False
    return getattr(cfg, "kernel_size", None), bool(getattr(cfg, "white_background", False))


@torch.no_grad()
def render_view(gaussians, entry, factor=1.0, kernel_size=None, white=False, backend="auto"):
    """Our renderer's image (HxWx3 float32 in [0, 1]) of a cameras.json entry at `factor` x its size."""
    from argparse import Namespace
    from gaussian_renderer import render
    from utils.image_utils import to_numpy_hwc
    cam = camera_from_entry(entry, factor, device=gaussians.get_xyz.device)
    bg = torch.ones(3) if white else torch.zeros(3)
    out = render(cam, gaussians, Namespace(backend=backend, debug=False), bg, kernel_size=kernel_size)
    return to_numpy_hwc(out["render"].clamp(0, 1))


def to_uint8(img):
    return np.round(np.asarray(img) * 255).clip(0, 255).astype(np.uint8)


@torch.no_grad()
def render_entry(model_path, iteration, gaussians, entry, factor, kernel_size=None, backend="auto"):
    """Render a cameras.json view at `factor` x with our renderer; write it to
    OUT/view_renders/<iteration>_<view>_x<N>.png. Returns (image HxWx3 uint8, path)."""
    from utils.image_utils import save_image
    if kernel_size is None:
        kernel_size, white = render_settings(model_path)
    else:
        white = False
    img = render_view(gaussians, entry, factor, kernel_size, white, backend)
    path = render_output_path(model_path, iteration, entry["img_name"], factor)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_image(path, img)
    return to_uint8(img), path
