#!/usr/bin/env python
"""Super-resolve a trained LR model: diffusion SR and 3D Gaussians interleaved at every denoising step.

    python train.py -s data/fern -r 8 --eval -m output/fern       # LR model (images_8)
    python sr_refine.py -m output/fern                             # x4 -> point_cloud/iteration_sr/
    python render.py -m output/fern --iteration sr -r 2            # HR renders at images_2 size
    python sr_refine.py -m output/fern --mode bicubic              # baseline -> iteration_sr_bicubic
    python sr_refine.py -m output/fern --resume                    # continue a killed run

Reads the model's cfg_args (scene, LR resolution), loads its latest iteration (or --iteration) and LR
train images, and writes OUT/point_cloud/iteration_<name>/, OUT/sr/<name>/{log.json, cfg_args,
step_<k>/{decoded,renders,checkpoint.pth}, final/}. See training/sr_loop.py for the loop itself.
"""
import dataclasses
import json
import os
import sys
from argparse import ArgumentParser, Namespace

import torch
import torch.nn.functional as F

from arguments import (ModelParams, OptimizationParams, PipelineParams, SRParams, get_combined_args,
                       read_cfg_args, write_cfg_args)
from gaussian_renderer import resolve_backend
from scene import GaussianModel, Scene
from scene.dataset_readers import read_scene
from scene.scene import camera_from_info, resolve_iteration
from training.fit import seed_everything
from training.sr_loop import (DEFAULT_RUN_NAMES, SRRefiner, SRSettings, check_published_update, clear_run,
                              describe_log)
from training.strategy import DensifyStrategy
from utils.errors import ThreeDSRError
from utils.system_utils import run_cli

# Fit defaults that differ from train.py's for a pre-trained model (-1 = derived from the schedule).
SR_OPT_DEFAULTS = {"position_lr_max_steps": -1, "densify_until_iter": -1, "opacity_reset_interval": 0}


def build_parser():
    parser = ArgumentParser(description="3DSR: super-resolve a trained 3DGS model with a diffusion SR prior")
    model = ModelParams(parser, sentinel=True)
    pipeline = PipelineParams(parser, sentinel=True)
    opt = OptimizationParams(parser)
    srp = SRParams(parser)
    parser.set_defaults(**SR_OPT_DEFAULTS)
    parser.add_argument("--iteration", default="-1", help="LR model iteration to start from (-1 = latest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue the run from its last complete step")
    parser.add_argument("--overwrite", action="store_true", help="discard a previous run of the same name")
    parser.add_argument("--quiet", action="store_true")
    return parser, model, pipeline, opt, srp


def hr_resolution(trained_resolution, scale: int) -> int:
    """The -r factor of the HR images: the LR model's factor divided by the scale."""
    r = 1 if trained_resolution in (-1, 1, None) else int(trained_resolution)
    if r % scale:
        raise ThreeDSRError(
            f"--scale {scale} does not divide the LR model's resolution factor {r} (it was trained with -r "
            f"{trained_resolution}), so the HR views would match no images_N; use a scale that divides {r}, "
            f"or train the LR model at -r {r * scale}")
    return r // scale


def hr_test_cameras(dataset, resolution: int, lr_test_cameras, scale: int):
    """HR test views with ground truth (images_<resolution>), at exactly scale x the LR size."""
    if not lr_test_cameras:
        return []
    info = read_scene(dataset.source_path, images=dataset.images, resolution=resolution, eval=dataset.eval,
                      white_background=dataset.white_background, llffhold=dataset.llffhold)
    by_name = {c.image_name: c for c in info.test_cameras}
    out = []
    for lr in lr_test_cameras:
        gt = camera_from_info(by_name[lr.image_name], dataset.data_device).image
        w, h = lr.width * scale, lr.height * scale
        if gt.shape[-2:] != (h, w):  # images_N rounded differently from N x LR: area-resample the GT
            gt = F.interpolate(gt[None], size=(h, w), mode="area")[0]
        out.append(lr.resized(w, h, image=gt))
    return out


def check_run_folder(run_dir, ply_path, resume, overwrite):
    """Refuse to clobber a previous run unless asked (--overwrite clears it later, once all input has
    loaded); returns True if a finished run is being resumed."""
    if overwrite:
        return False
    log_path = os.path.join(run_dir, "log.json")
    exists = os.path.isdir(run_dir) and os.listdir(run_dir)
    if not resume:
        if exists or os.path.isfile(ply_path):
            raise ThreeDSRError(f"{run_dir if exists else ply_path} already exists; pass --resume to continue "
                                f"that run, --overwrite to start it again, or --name for another run")
        return False
    if os.path.isfile(log_path) and os.path.isfile(ply_path):
        with open(log_path) as f:
            return bool(json.load(f).get("complete"))
    return False


def main(argv=None):
    parser, model, pipeline, opt_group, sr_group = build_parser()
    args = get_combined_args(parser, argv)
    trained = read_cfg_args(args.model_path)
    dataset, pipe, opt, srp = model.extract(args), pipeline.extract(args), opt_group.extract(args), sr_group.extract(args)
    srp.name = srp.name or DEFAULT_RUN_NAMES.get(srp.mode, "sr")
    final_iters = srp.iters_per_step if srp.final_iters < 0 else srp.final_iters
    settings = SRSettings(mode=srp.mode, scale=srp.scale, steps=srp.steps, iters_per_step=srp.iters_per_step,
                          final_iters=final_iters, lambda_lr=srp.lambda_lr, lambda_dssim=opt.lambda_dssim,
                          eta=srp.eta, seed=args.seed, sr_model=srp.sr_model if srp.mode != "bicubic" else "",
                          published_update=srp.published_update)
    total = settings.total_iterations
    if opt.position_lr_max_steps < 0:
        opt.position_lr_max_steps = max(total, 1)
    if opt.densify_until_iter < 0:
        opt.densify_until_iter = total // 2

    # every check that needs no heavy loading first, so bad input fails fast and writes nothing
    resolve_backend(pipe.backend)
    hr_res = hr_resolution(getattr(trained, "resolution", -1), settings.scale)
    iteration = resolve_iteration(dataset.model_path, args.iteration)
    run_dir = os.path.join(dataset.model_path, "sr", srp.name)
    ply_path = os.path.join(dataset.model_path, "point_cloud", f"iteration_{srp.name}", "point_cloud.ply")
    if srp.name == iteration:
        raise ThreeDSRError(f"--name {srp.name} would overwrite the LR model's own iteration; pick another name")
    sr_folder, sr_opts = None, {}
    if settings.uses_diffusion:
        from sr.loading import is_stablesr_folder, resolve_sr_model
        sr_folder = resolve_sr_model(srp.sr_model, sr_weights=srp.sr_weights or None)
        if is_stablesr_folder(sr_folder):  # StableSR-Turbo (sr/stablesr): scale-free, its own options
            sr_opts = dict(scale=settings.scale, dec_w=srp.dec_w, colorfix=srp.colorfix, tile_size=srp.tile_size,
                           tile_overlap=srp.tile_overlap, sr_batch=srp.sr_batch, text_encoder=srp.text_encoder,
                           vae_tile=srp.vae_tile, vae_tile_overlap=srp.vae_tile_overlap)
        else:
            sr_opts = dict(prompt=srp.prompt, guidance_scale=srp.guidance_scale, noise_level=srp.noise_level,
                           timestep_spacing=srp.timestep_spacing, sr_batch=srp.sr_batch, vae_tiling=srp.vae_tiling)
        # a checkpoint resumes only under the same options; the views per call change no result
        settings = dataclasses.replace(settings, sr_options={k: v for k, v in sr_opts.items() if k != "sr_batch"})
    if check_run_folder(run_dir, ply_path, args.resume, args.overwrite):
        print(f"{run_dir} is complete; the result is {ply_path} (pass --overwrite to run it again)")
        return 0

    seed_everything(args.seed)  # a resumed run then takes its RNG states from the checkpoint
    gaussians = GaussianModel(dataset.sh_degree)
    scene = Scene(dataset, gaussians, load_iteration=iteration)
    lr_w, lr_h = scene.train_cameras[0].width, scene.train_cameras[0].height
    test_hr = [] if srp.no_hr_test else hr_test_cameras(dataset, hr_res, scene.test_cameras, settings.scale)

    sr = None
    if settings.uses_diffusion:
        from sr.loading import load_sr_model
        device = None if srp.sr_device == "auto" else srp.sr_device
        try:
            sr = load_sr_model(sr_folder, device, **sr_opts)
        except ValueError as exc:  # an option out of range (noise level, --dec_w, tiles, ...)
            raise ThreeDSRError(f"{exc}; fix that flag") from None
        sr.name = srp.sr_model
        if int(sr.scale) != settings.scale:
            raise ThreeDSRError(f"--scale {settings.scale} but the SR model '{srp.sr_model}' upscales x{sr.scale}; "
                                f"pass --scale {sr.scale} (and an LR model trained at a matching -r)")
        check_published_update(settings, sr)
    if args.overwrite:
        clear_run(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    write_cfg_args(run_dir, Namespace(**vars(args), lr_iteration=iteration, hr_resolution=hr_res))
    print(f"SR {settings.mode} of {dataset.model_path} (iteration {iteration}, {gaussians.num_points} Gaussians): "
          f"{len(scene.train_cameras)} train views {lr_w}x{lr_h} -> {lr_w * settings.scale}x{lr_h * settings.scale}"
          + (f", {sr!r}" if sr is not None else "")
          + f"; {settings.steps} steps x {settings.iters_per_step} + {settings.final_iters} fit iterations")

    strategy = None if srp.no_densify else DensifyStrategy.from_opt(opt, dataset.white_background, seed=args.seed)
    background = torch.tensor([1.0, 1.0, 1.0] if dataset.white_background else [0.0, 0.0, 0.0])
    refiner = SRRefiner(settings, gaussians, scene.train_cameras, opt=opt, pipe=pipe, background=background,
                        kernel_size=dataset.kernel_size, scene_extent=scene.cameras_extent, run_dir=run_dir,
                        ply_path=ply_path, sr=sr, strategy=strategy, hr_test_cameras=test_hr,
                        save_images=not srp.no_step_images, keep_checkpoints=srp.keep_checkpoints,
                        progress=not args.quiet)
    log = refiner.run(resume=args.resume)
    print(describe_log(log))
    print(f"SR done in {log['total_seconds']:.1f} s: {ply_path}\n"
          f"render it at HR with: python render.py -m {dataset.model_path} --iteration {srp.name} -r {hr_res}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
