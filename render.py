#!/usr/bin/env python
"""Render the train/test views of a saved model, at its training resolution or any other.

    python render.py -m output/fern                       # latest iteration, training resolution
    python render.py -m output/fern --iteration sr -r 2   # SR model at the images_2 resolution
Writes OUT/{train,test}/ours_<iteration>/{renders,gt}/<index>.png (gt at the rendered resolution);
at a resolution other than the training one the folder is ours_<iteration>_r<R>, so an LR model
rendered at HR sits beside its LR renders (or name it with --method).
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
from scene.scene import resolve_iteration
from utils.image_utils import save_image
from utils.system_utils import atomic_write, run_cli


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


def main(argv=None):
    parser = ArgumentParser(description="Render a trained model's views")
    model = ModelParams(parser, sentinel=True)
    pipeline = PipelineParams(parser, sentinel=True)
    parser.add_argument("--iteration", default="-1", help="iteration to render (-1 = latest; or a name like sr)")
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--skip_test", action="store_true")
    parser.add_argument("--method", default=None, help="output folder name under train/ and test/")
    parser.add_argument("--quiet", action="store_true")
    args = get_combined_args(parser, argv)
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
