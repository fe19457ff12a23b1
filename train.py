#!/usr/bin/env python
"""Train 3D Gaussians (Mip-Splatting flavour) on a COLMAP or Blender scene.

    python train.py -s data/garden                 # writes output/garden
    python train.py -s data/fern -r 8 -m output/fern --eval
"""
import json
import os
import sys
import time

import torch

from arguments import (CLIArgumentParser, ModelParams, OptimizationParams, PipelineParams, read_cfg_args, show_defaults,
                       write_cfg_args)
from gaussian_renderer import resolve_backend
from scene import GaussianModel, Scene
from scene.conventions import training_filter_2d
from training.fit import fit_gaussians, load_checkpoint, seed_everything
from training.strategy import DensifyStrategy
from utils.device import add_device_args, resolve_data_device, resolve_device, use_deterministic
from utils.errors import ModelNotFoundError, SceneFormatError
from utils.system_utils import atomic_write, run_cli


def build_parser():
    parser = CLIArgumentParser(description="3DGS training (LR stage of 3dsr)")
    lp, op, pp = ModelParams(parser), OptimizationParams(parser), PipelineParams(parser)
    parser.add_argument("--test_iterations", nargs="+", type=int, default=[7_000, 30_000])
    parser.add_argument("--save_iterations", nargs="+", type=int, default=[7_000, 30_000])
    parser.add_argument("--checkpoint_iterations", nargs="+", type=int, default=[])
    parser.add_argument("--start_checkpoint", type=str, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    add_device_args(parser)
    return show_defaults(parser), lp, op, pp


def default_model_path(source_path):
    return os.path.join("output", os.path.basename(os.path.normpath(source_path)))


def check_output(args):
    """Refuse to mix two scenes in one model folder (checked before anything is written)."""
    cfg = os.path.join(args.model_path, "cfg_args")
    if os.path.isfile(cfg):
        try:
            previous = read_cfg_args(args.model_path)
        except ModelNotFoundError:
            previous = None
        old_src = getattr(previous, "source_path", None)
        if old_src and os.path.abspath(old_src) != os.path.abspath(args.source_path):
            raise SceneFormatError(f"{args.model_path} already holds a model of {old_src}; "
                                   f"pass another -m or delete that folder")


def main(argv=None):
    parser, lp, op, pp = build_parser()
    args = parser.parse_args(argv)
    if not args.source_path:
        raise SceneFormatError("no scene given; pass -s SCENE_FOLDER (COLMAP or Blender layout)")
    args.save_iterations = sorted(set(args.save_iterations + [args.iterations]))
    args.test_iterations = sorted(set(args.test_iterations + [args.iterations]))
    dataset, opt, pipe = lp.extract(args), op.extract(args), pp.extract(args)
    dataset.model_path = args.model_path or default_model_path(args.source_path)
    args.model_path = dataset.model_path
    device = resolve_device(args.device)
    dataset.data_device = resolve_data_device(dataset.data_device, device)
    resolve_backend(pipe.backend, device)  # fail early with a clear message
    seed_everything(args.seed, use_deterministic(device, args.deterministic))

    check_output(args)
    gaussians = GaussianModel(dataset.sh_degree, device=device)
    scene = Scene(dataset, gaussians)  # reads everything before writing anything
    args.source_path = dataset.source_path
    # record the 2D filter convention it trains with, so every reader renders it the same way
    gaussians.filter_2d = args.filter_2d = training_filter_2d(dataset.filter_2d)
    write_cfg_args(args.model_path, args)
    print(f"Output folder: {args.model_path}  ({len(scene.train_cameras)} train / {len(scene.test_cameras)} test "
          f"views, {scene.train_cameras[0].width}x{scene.train_cameras[0].height}, "
          f"{gaussians.num_points} initial Gaussians)")

    strategy = DensifyStrategy.from_opt(opt, dataset.white_background, seed=args.seed)
    first_iter, resume_state = 1, None
    gaussians.training_setup(opt)
    if args.start_checkpoint:
        if not os.path.isfile(args.start_checkpoint):
            raise ModelNotFoundError(f"checkpoint {args.start_checkpoint} does not exist; "
                                     "pass a chkpnt<N>.pth written with --checkpoint_iterations")
        last, resume_state = load_checkpoint(args.start_checkpoint, gaussians, opt, strategy)
        first_iter = last + 1

    background = torch.tensor([1.0, 1.0, 1.0] if dataset.white_background else [0.0, 0.0, 0.0], device=device)
    t0 = time.time()
    result = fit_gaussians(
        gaussians, scene.train_cameras, opt, pipe, background, kernel_size=dataset.kernel_size,
        first_iter=first_iter, last_iter=opt.iterations, scene_extent=scene.cameras_extent,
        strategy=strategy, test_cameras=scene.test_cameras, test_iterations=set(args.test_iterations),
        on_save=scene.save, save_iterations=set(args.save_iterations), checkpoint_dir=args.model_path,
        checkpoint_iterations=set(args.checkpoint_iterations), progress=not args.quiet,
        resume_state=resume_state, final_iteration=opt.iterations)  # 3DGS: the last one takes no step
    elapsed = time.time() - t0
    n_iter = max(result.last_iteration - first_iter + 1, 0)
    summary = {"iterations": result.last_iteration, "seconds": round(elapsed, 2),
               "iterations_per_second": round(n_iter / max(elapsed, 1e-9), 3),
               "num_gaussians": gaussians.num_points, "evaluations": result.test_log}
    with atomic_write(os.path.join(args.model_path, "train_log.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"Training complete: {n_iter} iterations in {elapsed:.1f} s "
          f"({summary['iterations_per_second']} it/s), {gaussians.num_points} Gaussians")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
