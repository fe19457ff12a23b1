#!/usr/bin/env python
"""Render the train/test views of a saved model, at its training resolution or any other.

    python render.py -m output/fern                       # latest iteration, training resolution
    python render.py -m output/fern --iteration sr -r 2   # SR model at the images_2 resolution
    python render.py -m output/fern -r 2 --video          # a fly-through video instead of the views
Writes OUT/{train,test}/ours_<iteration>/{renders,gt}/<index>.png (gt at the rendered resolution);
at a resolution other than the training one the folder is ours_<iteration>_r<R>, so an LR model
rendered at HR sits beside its LR renders (or name it with --method).

--video renders only a path through the train cameras (name order; centres moved linearly, rotations
slerped, utils/camera_path.py) with the first camera's intrinsics at the -r resolution, and writes
OUT/video/<method>.mp4 (H.264, imageio-ffmpeg); without imageio-ffmpeg it writes
OUT/video/<method>_frames/<index>.png and says so.
"""
import json
import os
import sys
from argparse import ArgumentParser

import numpy as np
import torch
from tqdm import tqdm

from arguments import ModelParams, PipelineParams, get_combined_args, read_cfg_args
from gaussian_renderer import render, resolve_backend
from scene import GaussianModel, Scene
from scene.cameras import Camera
from scene.scene import resolve_iteration
from utils.camera_path import interpolate_poses
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
            np.save(f, depth.numpy().astype(np.float32))
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


def main(argv=None):
    parser = ArgumentParser(description="Render a trained model's views")
    model = ModelParams(parser, sentinel=True)
    pipeline = PipelineParams(parser, sentinel=True)
    parser.add_argument("--iteration", default="-1", help="iteration to render (-1 = latest; or a name like sr)")
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--skip_test", action="store_true")
    parser.add_argument("--method", default=None, help="output folder name under train/ and test/")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--video", action="store_true",
                        help="render a path through the train cameras to OUT/video/<method>.mp4 (instead of the views)")
    parser.add_argument("--video_frames", type=int, default=120, help="number of video frames (default 120)")
    parser.add_argument("--fps", type=float, default=30.0, help="video frame rate (default 30)")
    args = get_combined_args(parser, argv)
    if args.video and args.video_frames < 1:
        raise ThreeDSRError(f"--video_frames must be at least 1, got {args.video_frames}")
    if args.video and not args.fps > 0:
        raise ThreeDSRError(f"--fps must be positive, got {args.fps}")
    trained_resolution = read_cfg_args(args.model_path).__dict__.get("resolution", -1)
    dataset, pipe = model.extract(args), pipeline.extract(args)
    resolve_backend(pipe.backend)
    iteration = resolve_iteration(dataset.model_path, args.iteration)  # clear error before loading data
    method = args.method or f"ours_{iteration}"
    if args.method is None and dataset.resolution != trained_resolution:
        method += f"_r{dataset.resolution}"

    gaussians = GaussianModel(dataset.sh_degree)
    scene = Scene(dataset, gaussians, load_iteration=iteration)
    # The saved filter_3D is kept as trained (a model from plain 3DGS has none, i.e. zeros), so
    # rendering at a higher resolution shows what the model holds, as Mip-Splatting does.
    background = torch.tensor([1.0, 1.0, 1.0] if dataset.white_background else [0.0, 0.0, 0.0])
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
