#!/usr/bin/env python
"""Render the train/test views of a saved model, at its training resolution or any other.

    python render.py -m output/fern                       # latest iteration, training resolution
    python render.py -m output/fern --upscale 4           # the LR model at 4x -> lr-3dgs/
    python render.py -m output/fern --iteration sr        # the SR run at its own scale -> 3dsr/
    python render.py -m output/fern -r 2 --video          # a fly-through video instead of the views
Writes OUT/{train,test}/<method>/{renders,gt}/<index>.png, gt only where images exist at the rendered
size (images_N, or -r). <method> is ours_<iteration> at the training resolution (3DGS), lr-3dgs for the
LR model at x4, 3dsr / per-view-sr / bicubic for SR runs (the names metrics.py, tools/summarize.py and
tools/make_figures.py use), with _x<factor> at other sizes; --method names it.

--video renders only a path through the train cameras (name order; centres moved linearly, rotations
slerped, utils/camera_path.py) with the first camera's intrinsics at the -r resolution, and writes
OUT/video/<method>.mp4 (H.264, imageio-ffmpeg); without imageio-ffmpeg it writes
OUT/video/<method>_frames/<index>.png and says so.
"""
import json
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from arguments import CLIArgumentParser, ModelParams, PipelineParams, get_combined_args, read_cfg_args, show_defaults
from gaussian_renderer import render, resolve_backend
from scene import GaussianModel, Scene
from scene.cameras import Camera
from scene.scene import SR_ROOT, hr_gt_resolution, resolve_iteration
from utils.camera_path import interpolate_poses
from utils.device import add_device_args, resolve_device
from utils.errors import ThreeDSRError
from utils.image_utils import save_image, to_numpy_hwc
from utils.system_utils import atomic_write, run_cli
from utils.video_utils import write_video


def render_set(model_path, split, method, cameras, gaussians, pipe, background, kernel_size, quiet=False):
    """Write renders/, gt/, depth/<idx>.npy (camera z where the render is opaque, else 0) and
    cameras.json (the views' poses and intrinsics, for multi-view metrics)."""
    root = os.path.join(model_path, split, method)
    for sub in ("renders", "gt", "depth"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    entries = []
    for idx, cam in enumerate(tqdm(cameras, desc=f"Rendering {split}", disable=quiet)):
        with torch.no_grad():
            out = render(cam, gaussians, pipe, background, kernel_size=kernel_size)
        save_image(os.path.join(root, "renders", f"{idx:05d}.png"), out["render"].clamp(0, 1))
        if cam.image is not None:
            save_image(os.path.join(root, "gt", f"{idx:05d}.png"), cam.image)
        alpha = out["alpha"][0]
        depth = torch.where(alpha > 0.5, out["depth"][0] / alpha.clamp_min(1e-6), torch.zeros_like(alpha))
        with atomic_write(os.path.join(root, "depth", f"{idx:05d}.npy"), "wb") as f:
            np.save(f, depth.cpu().numpy().astype(np.float32))
        entries.append({**cam.to_json(idx), "render": f"{idx:05d}.png"})
    with atomic_write(os.path.join(root, "cameras.json"), "w") as f:
        json.dump(entries, f, indent=1)
    return root


def video_cameras(train_cameras, num_frames):
    """`num_frames` Cameras along the path through `train_cameras` sorted by image name, all with the
    first (by name) camera's intrinsics and size."""
    keys = sorted(train_cameras, key=lambda c: c.image_name)
    first = keys[0]
    poses = interpolate_poses([c.world_to_camera.double().cpu().numpy() for c in keys], num_frames)
    device = first.world_to_camera.device
    return [Camera(uid=i, image_name=f"frame_{i:05d}",
                   world_to_camera=torch.tensor(w2c, dtype=torch.float32, device=device),
                   fx=first.fx, fy=first.fy, cx=first.cx, cy=first.cy, width=first.width, height=first.height)
            for i, w2c in enumerate(poses)]


def render_video(path, cameras, gaussians, pipe, background, kernel_size, fps, quiet=False):
    """Render `cameras` in order and write them as a video (or PNG frames); see write_video."""
    def frames():
        for cam in tqdm(cameras, desc="Rendering video", disable=quiet):
            with torch.no_grad():
                out = render(cam, gaussians, pipe, background, kernel_size=kernel_size)
            yield to_numpy_hwc(out["render"].clamp(0, 1))

    return write_video(frames(), path, fps=fps)


# Method folders of SR runs: the names metrics.py, tools/summarize.py and tools/make_figures.py show.
SR_METHOD_FOLDERS = {"sr": "3dsr", "sr_per-view": "per-view-sr", "sr_bicubic": "bicubic",
                     "sr_per-view-isr": "per-view-isr"}
DEFAULT_SCALE = 4  # sr_refine.py's --scale: an LR model rendered at this factor is the "LR 3DGS @HR" baseline


def sr_run_scale(model_path, iteration):
    """The upscale factor of SR run `iteration` (from its cfg_args), or None for an ordinary iteration."""
    run = os.path.join(model_path, SR_ROOT, str(iteration))
    if str(iteration).isdigit() or not os.path.isfile(os.path.join(run, "cfg_args")):
        return None
    return read_cfg_args(run).__dict__.get("scale") or None


def resolution_factor(trained, rendered) -> float:
    """How many times larger a -r `rendered` image is than a -r `trained` one (-1 counts as 1)."""
    t = 1 if trained in (-1, None) else trained
    r = 1 if rendered in (-1, None) else rendered
    return t / r


def method_folder(iteration, run_scale, factor) -> str:
    """ours_<N> at the training resolution (3DGS); an SR run by its method name (3dsr, per-view-sr,
    bicubic) at its own scale; an LR model at x4 is lr-3dgs; other sizes say their factor."""
    tag = f"{factor:g}".replace(".", "p")
    if run_scale:
        name = SR_METHOD_FOLDERS.get(str(iteration), str(iteration))
        return name if abs(factor - run_scale) < 1e-6 else f"{name}_x{tag}"
    if abs(factor - 1) < 1e-6:
        return f"ours_{iteration}"
    if factor > 1:
        return "lr-3dgs" if abs(factor - DEFAULT_SCALE) < 1e-6 else f"lr-3dgs_x{tag}"
    return f"ours_{iteration}_x{tag}"


def main(argv=None):
    parser = CLIArgumentParser(description="Render a trained model's views")
    model = ModelParams(parser, sentinel=True)
    pipeline = PipelineParams(parser, sentinel=True)
    parser.add_argument("--iteration", default="-1", help="iteration to render (-1 = latest; or a name like sr)")
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--skip_test", action="store_true")
    parser.add_argument("--method", default=None,
                        help="output folder under train/ and test/ (default: ours_<N> at the training resolution, "
                             "lr-3dgs for an LR model at x4, 3dsr / per-view-sr / bicubic for SR runs)")
    parser.add_argument("--upscale", type=float, default=None,
                        help="render at this many times the training resolution (ground truth written where "
                             "images exist at that size); an SR run (--iteration sr) defaults to its own scale")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--video", action="store_true",
                        help="render a path through the train cameras to OUT/video/<method>.mp4 (instead of the views)")
    parser.add_argument("--video_frames", type=int, default=120, help="number of video frames (default 120)")
    parser.add_argument("--fps", type=float, default=30.0, help="video frame rate (default 30)")
    add_device_args(parser)
    args = get_combined_args(show_defaults(parser), argv)
    if args.video and args.video_frames < 1:
        raise ThreeDSRError(f"--video_frames must be at least 1, got {args.video_frames}")
    if args.video and not args.fps > 0:
        raise ThreeDSRError(f"--fps must be positive, got {args.fps}")
    trained_resolution = read_cfg_args(args.model_path).__dict__.get("resolution", -1)
    dataset, pipe = model.extract(args), pipeline.extract(args)
    device = resolve_device(args.device)
    resolve_backend(pipe.backend, device)
    iteration = resolve_iteration(dataset.model_path, args.iteration)  # clear error before loading data
    upscale = args.upscale
    run_scale = sr_run_scale(dataset.model_path, iteration)
    if upscale is None and run_scale and dataset.resolution == trained_resolution:
        upscale = run_scale  # an SR run renders at its own HR size unless told otherwise
    render_res, scale_cams = dataset.resolution, 1.0
    if upscale is not None:
        if dataset.resolution != trained_resolution:
            raise ThreeDSRError("pass either -r or --upscale, not both")
        if not upscale > 0:
            raise ThreeDSRError(f"--upscale must be positive, got {upscale}")
        gt_res = hr_gt_resolution(trained_resolution, upscale)
        # ground truth exists at that size (images_<r/upscale>): load it; else scale the cameras, no GT
        render_res, scale_cams = (gt_res, 1.0) if gt_res is not None else (trained_resolution, upscale)
    dataset.resolution = render_res
    factor = resolution_factor(trained_resolution, render_res) * scale_cams
    method = args.method or method_folder(iteration, run_scale, factor)

    gaussians = GaussianModel(dataset.sh_degree, device=device)
    scene = Scene(dataset, gaussians, load_iteration=iteration)
    if scale_cams != 1.0:
        scene.train_cameras = [c.scaled(scale_cams) for c in scene.train_cameras]
        scene.test_cameras = [c.scaled(scale_cams) for c in scene.test_cameras]
        print(f"no images at {scale_cams:g}x the training resolution: rendering without ground truth")
    # The saved filter_3D is kept as trained (a model from plain 3DGS has none, i.e. zeros), so
    # rendering at a higher resolution shows what the model holds, as Mip-Splatting does.
    background = torch.tensor([1.0, 1.0, 1.0] if dataset.white_background else [0.0, 0.0, 0.0], device=device)
    if args.video:
        cams = video_cameras(scene.train_cameras, args.video_frames)
        out, kind, note = render_video(os.path.join(dataset.model_path, "video", f"{method}.mp4"), cams,
                                       gaussians, pipe, background, dataset.kernel_size, args.fps, args.quiet)
        if kind == "mp4":
            print(f"video: {len(cams)} frames at {cams[0].width}x{cams[0].height}, {args.fps:g} fps -> {out}")
        else:
            print(f"video: no MP4 ({note}); wrote {len(cams)} PNG frames at {cams[0].width}x{cams[0].height} "
                  f"-> {out}")
        return 0
    for split, cams, skip in (("train", scene.train_cameras, args.skip_train),
                              ("test", scene.test_cameras, args.skip_test)):
        if skip or not cams:
            continue
        out = render_set(dataset.model_path, split, method, cams, gaussians, pipe, background,
                         dataset.kernel_size, args.quiet)
        print(f"{split}: {len(cams)} views at {cams[0].width}x{cams[0].height} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
