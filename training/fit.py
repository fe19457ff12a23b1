"""The one fitting routine: `train.py` calls it with the dataset images as targets, `sr_refine.py`
with diffusion-proposed HR images plus a low-resolution consistency term."""
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from gaussian_renderer import render
from utils.image_utils import psnr
from utils.loss_utils import l1_loss, photometric_loss
from utils.system_utils import atomic_write


@dataclass
class FitResult:
    last_iteration: int
    seconds: float
    test_log: list = field(default_factory=list)  # [{"iteration", "split", "psnr", "l1", "num_gaussians"}]
    loss: Optional[float] = None  # running (EMA) training loss at the last iteration


def photometric_target_loss(lambda_dssim: float):
    """Default loss: (1-lambda) L1 + lambda (1 - SSIM) against the camera's own image (3DGS eq. 7)."""
    def loss_fn(pkg, camera):
        return photometric_loss(pkg["render"], camera.image, lambda_dssim)
    return loss_fn


def seed_everything(seed: int, deterministic: bool = True):
    """Seed every RNG; `deterministic` also makes torch's scatter-adds (gradients of gathers) run in a
    fixed order, so two runs, or a run and its resumed copy, are bit-identical on CPU."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(path, gaussians, iteration, strategy=None, extra=None):
    """Everything needed to resume bit-for-bit: Gaussians + Adam moments, iteration, RNG states."""
    payload = {"gaussians": gaussians.capture(), "iteration": iteration, "rng": rng_state(),
               "strategy": strategy.state_dict() if strategy is not None else None, "extra": extra or {}}
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)


def load_checkpoint(path, gaussians, opt, strategy=None):
    payload = torch.load(path, weights_only=False)
    gaussians.restore(payload["gaussians"], opt)
    set_rng_state(payload["rng"])
    if strategy is not None and payload.get("strategy"):
        strategy.load_state_dict(payload["strategy"])
    return payload["iteration"], payload.get("extra", {})


@torch.no_grad()
def evaluate(cameras, gaussians, pipe, background, kernel_size):
    """Mean PSNR and L1 of renders against the cameras' images."""
    if not cameras:
        return None
    ps, l1s = [], []
    for cam in cameras:
        img = render(cam, gaussians, pipe, background, kernel_size=kernel_size)["render"].clamp(0, 1)
        ps.append(float(psnr(img, cam.image)))
        l1s.append(float(l1_loss(img, cam.image)))
    return {"psnr": float(np.mean(ps)), "l1": float(np.mean(l1s))}


def fit_gaussians(gaussians, cameras: Sequence, opt, pipe, background, *, kernel_size: float,
                  first_iter: int, last_iter: int, scene_extent: float,
                  loss_fn: Optional[Callable] = None, strategy=None, filter_cameras=None,
                  test_cameras=(), test_iterations=(), on_save: Optional[Callable] = None,
                  save_iterations=(), checkpoint_dir: Optional[str] = None, checkpoint_iterations=(),
                  grow_sh: bool = True, desc: str = "Training", progress: bool = True,
                  resume_state: Optional[dict] = None) -> FitResult:
    """Optimise `gaussians` for iterations first_iter..last_iter (inclusive, global numbering so
    learning-rate schedules and densification windows continue across calls).

    cameras: views to fit, each a scene.cameras.Camera whose `.image` the default loss targets.
    loss_fn(render_pkg, camera) -> scalar loss; replaces the default photometric loss.
    strategy: a DensifyStrategy (or None to keep the set of Gaussians fixed).
    filter_cameras: cameras defining the 3D filter's sampling rates (default: `cameras`); recomputed
        after every densification and every opt.filter_update_interval iterations.
    Views are visited in a fresh random permutation per epoch (3DGS), from the global torch RNG.
    resume_state: the `extra` dict of a checkpoint written by this routine (view order), so that a
        resumed run continues exactly as the uninterrupted one would.
    """
    loss_fn = loss_fn or photometric_target_loss(opt.lambda_dssim)
    filter_cameras = list(filter_cameras or cameras)
    if gaussians.optimizer is None:
        gaussians.training_setup(opt)
    if resume_state is None:
        gaussians.compute_3D_filter(filter_cameras)  # a checkpoint carries its own filter
    result = FitResult(last_iteration=first_iter - 1, seconds=0.0)
    start = time.time()
    order: list = list((resume_state or {}).get("view_order", []))
    ema_loss, ema_psnr = None, None
    bar = tqdm(range(first_iter, last_iter + 1), desc=desc, disable=not progress, dynamic_ncols=True)
    for iteration in bar:
        gaussians.update_learning_rate(iteration)
        if grow_sh and opt.sh_increase_interval > 0 and iteration % opt.sh_increase_interval == 0:
            gaussians.oneup_sh_degree()
        if not order:
            order = torch.randperm(len(cameras)).tolist()
        cam = cameras[order.pop()]
        bg = torch.rand(3) if opt.random_background else background
        pkg = render(cam, gaussians, pipe, bg, kernel_size=kernel_size)
        loss = loss_fn(pkg, cam)
        loss.backward()

        with torch.no_grad():
            ema_loss = float(loss) if ema_loss is None else 0.4 * float(loss) + 0.6 * ema_loss
            if iteration % 10 == 0 and cam.image is not None and cam.image.shape == pkg["render"].shape:
                p = float(psnr(pkg["render"].clamp(0, 1), cam.image))
                ema_psnr = p if ema_psnr is None else 0.4 * p + 0.6 * ema_psnr
                bar.set_postfix(loss=f"{ema_loss:.4f}", psnr=f"{ema_psnr:.2f}", n=gaussians.num_points)
            changed = False
            if strategy is not None:
                changed = strategy.step_post_backward(iteration, gaussians, pkg, cam, scene_extent)
            gaussians.optimizer.step()
            gaussians.optimizer.zero_grad(set_to_none=True)
            densifying = strategy is not None and iteration < strategy.densify_until_iter
            if changed or (opt.filter_update_interval > 0 and iteration % opt.filter_update_interval == 0
                           and not densifying and iteration < last_iter - opt.filter_update_interval):
                gaussians.compute_3D_filter(filter_cameras)

            if iteration in test_iterations:
                for split, cams in (("test", list(test_cameras)), ("train", list(cameras)[:5])):
                    stats = evaluate(cams, gaussians, pipe, background, kernel_size)
                    if stats:
                        entry = {"iteration": iteration, "split": split, **stats,
                                 "num_gaussians": gaussians.num_points}
                        result.test_log.append(entry)
                        bar.write(f"[ITER {iteration}] {split}: L1 {stats['l1']:.5f} PSNR {stats['psnr']:.2f} "
                                  f"({gaussians.num_points} Gaussians)")
            if on_save is not None and iteration in save_iterations:
                on_save(iteration)
            if checkpoint_dir and iteration in checkpoint_iterations:
                save_checkpoint(os.path.join(checkpoint_dir, f"chkpnt{iteration}.pth"), gaussians, iteration,
                                strategy, extra={"view_order": list(order)})
        result.last_iteration = iteration
    bar.close()
    result.loss = ema_loss
    result.seconds = time.time() - start
    return result
