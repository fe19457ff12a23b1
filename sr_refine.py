#!/usr/bin/env python
"""Super-resolve a trained LR model: diffusion SR and 3D Gaussians interleaved at every denoising step.

    python train.py -s data/fern -r 8 --eval -m output/fern       # LR model (images_8)
    python sr_refine.py -m output/fern                             # x4 -> output/fern/sr/sr/ (a model folder)
    python render.py -m output/fern --iteration sr                 # HR renders (x4) -> test/3dsr/
    python sr_refine.py -m output/fern --mode bicubic              # baseline -> sr/sr_bicubic/
    python sr_refine.py -m output/fern --resume                    # continue a killed run

Reads the model's cfg_args (scene, LR resolution), loads its latest iteration (or --iteration) and LR
train images, and writes OUT/sr/<name>/: a 3DGS model folder of its own (cfg_args, cameras.json at HR,
point_cloud/iteration_<total fit iterations>/point_cloud.ply) plus log.json, step_<k>/{decoded,renders,
checkpoint.pth} and final/. `--iteration <name>` of render.py / sr_refine.py finds it. Any LR model works:
HR = --scale x its training size; ground truth (images_<r/scale> or --hr_images) only adds test metrics.
See training/sr_loop.py for the loop itself.
"""
import dataclasses
import json
import os
import sys
from argparse import Namespace

import torch
import torch.nn.functional as F

from arguments import (CLIArgumentParser, ModelParams, OptimizationParams, PipelineParams, SRParams, get_combined_args,
                       read_cfg_args, show_defaults, write_cfg_args)
from gaussian_renderer import resolve_backend
from scene import GaussianModel, Scene
from scene.dataset_readers import read_scene
from scene.scene import SR_ROOT, camera_from_info, hr_gt_resolution, resolve_iteration
from training.fit import seed_everything
from training.sr_loop import (DEFAULT_RUN_NAMES, SRRefiner, SRSettings, check_published_update, clear_run,
                              describe_log, resolve_iters_schedule)
from training.strategy import DensifyStrategy
from utils.device import add_device_args, resolve_device, use_deterministic
from utils.errors import ThreeDSRError
from utils.system_utils import atomic_write, run_cli

# Fit defaults that differ from train.py's for a pre-trained model (-1 = derived from the schedule).
SR_OPT_DEFAULTS = {"position_lr_max_steps": -1, "densify_until_iter": -1, "opacity_reset_interval": 0}


def build_parser():
    parser = CLIArgumentParser(description="3DSR: super-resolve a trained 3DGS model with a diffusion SR prior")
    model = ModelParams(parser, sentinel=True)
    pipeline = PipelineParams(parser, sentinel=True)
    opt = OptimizationParams(parser)
    srp = SRParams(parser)
    parser.set_defaults(**SR_OPT_DEFAULTS)
    for action in parser._actions:
        if action.dest in SR_OPT_DEFAULTS:
            action.help = f"default: {SR_OPT_DEFAULTS[action.dest]} (" + (
                "off" if SR_OPT_DEFAULTS[action.dest] == 0 else "derived from the SR schedule") + ")"
    parser.add_argument("--iteration", default="-1", help="LR model iteration to start from (-1 = latest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue the run from its last complete step")
    parser.add_argument("--overwrite", action="store_true", help="discard a previous run of the same name")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--hr_images", default=None,
                        help="folder of HR ground-truth images (named like the scene's) for the per-step test PSNR; "
                             "default: images_<r/scale> when the LR model's -r allows it")
    parser.add_argument("--memory_check", choices=("auto", "off"), default="auto",
                        help="auto: estimate peak memory, switch on the SR model's tiling if the run would not fit "
                             "the device, refuse if it cannot fit at all; off: only print the estimate")
    add_device_args(parser)
    return show_defaults(parser), model, pipeline, opt, srp


def hr_test_cameras(dataset, lr_test_cameras, scale: int, resolution=None, hr_images=None, data_device="cpu"):
    """HR test views with ground truth at exactly scale x the LR size: images_<resolution>, or the folder
    --hr_images (matched by image name, any size: area-resampled to the HR size). [] if neither is given."""
    if not lr_test_cameras or (resolution is None and not hr_images):
        return []
    images, res = dataset.images, resolution
    if hr_images:
        if not os.path.isdir(hr_images):
            raise ThreeDSRError(f"--hr_images folder {hr_images} does not exist; pass a folder of HR images named "
                                "like the scene's images")
        images, res = os.path.relpath(os.path.abspath(hr_images), dataset.source_path), 1
    info = read_scene(dataset.source_path, images=images, resolution=res, eval=dataset.eval,
                      white_background=dataset.white_background, llffhold=dataset.llffhold)
    by_name = {c.image_name: c for c in info.test_cameras}
    out = []
    for lr in lr_test_cameras:
        if lr.image_name not in by_name:
            raise ThreeDSRError(f"no HR image for test view {lr.image_name} in {images}; give every view an HR image "
                                "or drop --hr_images")
        gt = camera_from_info(by_name[lr.image_name], data_device).image
        w, h = lr.width * scale, lr.height * scale
        if gt.shape[-2:] != (h, w):  # images_N rounded differently from N x LR: area-resample the GT
            gt = F.interpolate(gt[None], size=(h, w), mode="area")[0]
        out.append(lr.resized(w, h, image=gt))
    return out


def write_run_model_files(run_dir, args, scene, scale, lr_iteration, gt_res):
    """cfg_args and cameras.json that make OUT/sr/<name>/ a 3DGS model folder: `resolution` is the HR images'
    factor where they exist (3DGS's render.py then renders at HR), else the LR one; `scale` and the lr_*
    fields say how the run relates to its LR model."""
    lr_res = getattr(args, "resolution", -1)
    saved = dict(vars(args), model_path=run_dir, resolution=gt_res if gt_res is not None else lr_res,
                 lr_model_path=args.model_path, lr_resolution=lr_res, lr_iteration=lr_iteration, scale=scale,
                 hr_resolution=gt_res)
    write_cfg_args(run_dir, Namespace(**saved))
    cams = [c.scaled(scale).to_json(i) for i, c in enumerate(scene.train_cameras + scene.test_cameras)]
    with atomic_write(os.path.join(run_dir, "cameras.json"), "w") as f:
        json.dump(cams, f)


def sr_kind(sr_folder) -> str:
    """The adapter class a folder loads into, without loading it (for the memory estimate)."""
    from sr.loading import is_stablesr_folder
    if is_stablesr_folder(sr_folder):
        return "StableSRTurbo"
    try:
        with open(os.path.join(sr_folder, "model_index.json")) as f:
            cls = json.load(f).get("_class_name", "")
    except (OSError, ValueError):
        return ""
    from sr import pixel_prior
    return "PixelPriorSR" if cls == pixel_prior.PIPELINE_CLASS else "SDx4Upscaler"


# The tiling flags that bound an SR model's memory by one tile, per adapter (None: it cannot tile).
AUTO_TILING = {"SDx4Upscaler": ({"vae_tiling": True}, 512, "--vae_tiling"),
               "StableSRTurbo": ({"vae_tile": 512, "vae_tile_overlap": 64}, 512, "--vae_tile 512"),
               "PixelPriorSR": None}


def plan_memory(args, isr, sr_opts, kind, weights, scene, scale, device, data_device, densify):
    """Print the estimate; switch on the SR model's tiling when the untiled run would not fit the device
    (--memory_check off: only print); refuse in one line when even the tiled run cannot fit."""
    from training.memory import GiB, device_capacity, estimate_sr_memory
    cam = scene.train_cameras[0]
    tiled = bool(sr_opts.get("vae_tiling") or sr_opts.get("vae_tile"))
    sr_dtype_bytes = 2 if device.type == "cuda" else 4

    def estimate(tile):
        return estimate_sr_memory(views=len(scene.train_cameras), hr_width=cam.width * scale,
                                  hr_height=cam.height * scale, num_gaussians=scene.gaussians.num_points,
                                  sh_degree=scene.gaussians.max_sh_degree, device=device, data_device=data_device,
                                  densify=densify, sr_kind=kind, sr_weights=weights, sr_dtype_bytes=sr_dtype_bytes,
                                  sr_batch=sr_opts.get("sr_batch", 1), sr_tile=tile)

    tiling = AUTO_TILING.get(kind)
    if isr is not None:  # an image SR model tiles by itself: its LR tile plus the overlap on each side, at HR
        current_tile = isr.scale * (isr.tile + 2 * isr.tile_overlap) if isr.tile else 0
    else:
        current_tile = tiling[1] if tiled and tiling else 0
    est = estimate(current_tile)
    capacity = device_capacity(device)
    print(f"memory estimate: {est.describe()}; the device has {capacity / GiB:.1f} GiB")
    if args.memory_check == "off" or est.total <= 0.9 * capacity:
        return sr_opts
    if tiling and not tiled:
        est_tiled = estimate(tiling[1])
        if est_tiled.total <= 0.9 * capacity:
            print(f"memory: switching on the SR model's tiling ({tiling[2]}; ~{est_tiled.total / GiB:.2f} GiB); "
                  "--memory_check off keeps it as given")
            return {**sr_opts, **tiling[0]}
        est = est_tiled
    hint = ("--data_device cpu (HR targets in host memory)" if data_device == device and device.type == "cuda"
            else "--sr_batch 1" if sr_opts.get("sr_batch", 1) > 1
            else "--sr_device cpu (the diffusion model on the CPU)" if device.type == "cuda" and kind
            else "a smaller --scale, or --memory_check off to try anyway")
    raise ThreeDSRError(f"the SR run needs about {est.total / GiB:.1f} GiB on {device} but it has "
                        f"{capacity / GiB:.1f} GiB; use {hint}")


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
    schedule = resolve_iters_schedule(srp.iters_schedule, srp.steps, srp.iters_per_step)
    final_iters = (schedule[-1] if schedule else srp.iters_per_step) if srp.final_iters < 0 else srp.final_iters
    settings = SRSettings(mode=srp.mode, scale=srp.scale, steps=srp.steps, iters_per_step=srp.iters_per_step,
                          iters_schedule=schedule,
                          final_iters=final_iters, lambda_lr=srp.lambda_lr, lambda_dssim=opt.lambda_dssim,
                          eta=srp.eta, seed=args.seed,
                          sr_model={"bicubic": "", "per-view-isr": srp.isr}.get(srp.mode, srp.sr_model),
                          published_update=srp.published_update, fit_stop_db=srp.fit_stop_db,
                          fit_stop_window=srp.fit_stop_window)
    total = settings.total_iterations
    if opt.position_lr_max_steps < 0:
        opt.position_lr_max_steps = max(total, 1)
    if opt.densify_until_iter < 0:
        opt.densify_until_iter = total // 2

    # every check that needs no heavy loading first, so bad input fails fast and writes nothing
    device = resolve_device(args.device)
    resolve_backend(pipe.backend, device)
    gt_res = hr_gt_resolution(getattr(trained, "resolution", -1), settings.scale)
    iteration = resolve_iteration(dataset.model_path, args.iteration)
    if srp.name.isdigit():
        raise ThreeDSRError(f"--name {srp.name} is a number, which names the LR model's own iterations; "
                            "pick a name such as sr_x4")
    run_dir = os.path.join(dataset.model_path, SR_ROOT, srp.name)
    # the run folder is a 3DGS model folder of its own: 3DGS tools read its numeric iteration
    ply_path = os.path.join(run_dir, "point_cloud", f"iteration_{total}", "point_cloud.ply")
    sr_folder, sr_opts = None, {}
    if settings.uses_diffusion:
        from sr.loading import is_stablesr_folder, resolve_sr_model
        sr_folder = resolve_sr_model(srp.sr_model, sr_weights=srp.sr_weights or None, offline=srp.offline or None)
        if is_stablesr_folder(sr_folder):  # StableSR-Turbo (sr/stablesr): scale-free, its own options
            sr_opts = dict(scale=settings.scale, dec_w=srp.dec_w, colorfix=srp.colorfix, tile_size=srp.tile_size,
                           tile_overlap=srp.tile_overlap, sr_batch=srp.sr_batch, text_encoder=srp.text_encoder,
                           vae_tile=srp.vae_tile, vae_tile_overlap=srp.vae_tile_overlap)
        else:
            sr_opts = dict(prompt=srp.prompt, guidance_scale=srp.guidance_scale, noise_level=srp.noise_level,
                           timestep_spacing=srp.timestep_spacing, sr_batch=srp.sr_batch, vae_tiling=srp.vae_tiling)
    isr = None
    if srp.mode == "per-view-isr":  # a single-step image SR model (Real-ESRGAN): load it now, it is small
        from sr.image_sr import load_isr_model
        isr = load_isr_model(srp.isr, device, tile=srp.isr_tile)
        if int(isr.scale) != settings.scale:
            raise ThreeDSRError(f"--scale {settings.scale} but the image SR model '{srp.isr}' upscales x{isr.scale}; "
                                f"pass --scale {isr.scale}")
        settings = dataclasses.replace(settings, sr_options=dict(isr.options))
    if check_run_folder(run_dir, ply_path, args.resume, args.overwrite):
        print(f"{run_dir} is complete; the result is {ply_path} (pass --overwrite to run it again)")
        return 0

    # a resumed run then takes its RNG states from the checkpoint
    seed_everything(args.seed, use_deterministic(device, args.deterministic))
    gaussians = GaussianModel(dataset.sh_degree, device=device)
    scene = Scene(dataset, gaussians, load_iteration=iteration)
    lr_w, lr_h = scene.train_cameras[0].width, scene.train_cameras[0].height
    if srp.no_hr_test:
        test_hr = []
    else:
        test_hr = hr_test_cameras(dataset, scene.test_cameras, settings.scale, gt_res, args.hr_images,
                                  scene.data_device)
        if scene.test_cameras and not test_hr:
            print(f"note: no HR ground truth at {lr_w * settings.scale}x{lr_h * settings.scale} (the LR model was "
                  f"trained at -r {getattr(trained, 'resolution', -1)}, beyond the captured images at x{settings.scale}; "
                  "--hr_images DIR gives one): the per-step test PSNR is skipped")
    kind = sr_kind(sr_folder) if sr_folder else "RealESRGAN" if isr is not None else ""
    sr_device = device if srp.sr_device in ("", "auto") else resolve_device(srp.sr_device)
    from training.memory import weights_bytes
    weights = weights_bytes(sr_folder) if sr_folder else 0
    if isr is not None:
        weights = sum(p.numel() * p.element_size() for p in isr.net.parameters())
    sr_opts = plan_memory(args, isr, sr_opts, kind, weights, scene, settings.scale, sr_device,
                          scene.data_device, not srp.no_densify)
    if settings.uses_diffusion:
        # a checkpoint resumes only under the same options; the views per call change no result
        settings = dataclasses.replace(settings, sr_options={k: v for k, v in sr_opts.items() if k != "sr_batch"})

    sr = None
    if settings.uses_diffusion:
        from sr.loading import load_sr_model
        try:
            sr = load_sr_model(sr_folder, sr_device, offline=srp.offline or None, **sr_opts)
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
    args.filter_2d = gaussians.filter_2d  # the run is fitted (and must render) with its LR model's convention
    write_run_model_files(run_dir, args, scene, settings.scale, iteration, gt_res)
    print(f"SR {settings.mode} of {dataset.model_path} (iteration {iteration}, {gaussians.num_points} Gaussians): "
          f"{len(scene.train_cameras)} train views {lr_w}x{lr_h} -> {lr_w * settings.scale}x{lr_h * settings.scale}"
          + (f", {sr!r}" if sr is not None else "") + (f", {isr!r}" if isr is not None else "")
          + f"; {settings.describe_iterations()}")

    strategy = None if srp.no_densify else DensifyStrategy.from_opt(opt, dataset.white_background, seed=args.seed)
    background = torch.tensor([1.0, 1.0, 1.0] if dataset.white_background else [0.0, 0.0, 0.0], device=device)
    refiner = SRRefiner(settings, gaussians, scene.train_cameras, opt=opt, pipe=pipe, background=background,
                        kernel_size=dataset.kernel_size, scene_extent=scene.cameras_extent, run_dir=run_dir,
                        ply_path=ply_path, sr=sr, strategy=strategy, hr_test_cameras=test_hr,
                        save_images=not srp.no_step_images, keep_checkpoints=srp.keep_checkpoints,
                        progress=not args.quiet, isr=isr)
    log = refiner.run(resume=args.resume)
    print(describe_log(log))
    print(f"SR done in {log['total_seconds']:.1f} s: {ply_path}\n"
          f"render it at HR with: python render.py -m {dataset.model_path} --iteration {srp.name} "
          f"--upscale {settings.scale}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
