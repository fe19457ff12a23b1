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
    stopped_early: bool = False  # the stop rule ended the fit before last_iter
    agreement_db: list = field(default_factory=list)  # the stop rule's per-window agreement (dB)
    first_iteration: int = 1

    @property
    def iterations(self) -> int:
        """Iterations this fit ran."""
        return self.last_iteration - self.first_iteration + 1


def photometric_target_loss(lambda_dssim: float):
    """Default loss: (1-lambda) L1 + lambda (1 - SSIM) against the camera's own image (3DGS eq. 7)."""
    def loss_fn(pkg, camera):
        return photometric_loss(pkg["render"], camera.image.to(pkg["render"].device, non_blocking=True), lambda_dssim)
    return loss_fn


def seed_everything(seed: int, deterministic: bool = True):
    """Seed every RNG; `deterministic` also makes torch's scatter-adds (gradients of gathers) run in a
    fixed order, so two runs, or a run and its resumed copy, are bit-identical on CPU (on CUDA it only
    selects slower deterministic kernels: gsplat's atomics stay unordered; utils.device.use_deterministic)."""
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
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
    """Restore a chkpnt<N>.pth onto the model's device (it may have been written on another)."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    gaussians.restore(payload["gaussians"], opt)
    set_rng_state(payload["rng"])
    if strategy is not None and payload.get("strategy"):
        strategy.load_state_dict(payload["strategy"], device=gaussians.device)
    return payload["iteration"], payload.get("extra", {})


@torch.no_grad()
def evaluate(cameras, gaussians, pipe, background, kernel_size):
    """Mean PSNR and L1 of renders against the cameras' images."""
    if not cameras:
        return None
    ps, l1s = [], []
    for cam in cameras:
        img = render(cam, gaussians, pipe, background, kernel_size=kernel_size)["render"].clamp(0, 1)
        gt = cam.image.to(img.device, non_blocking=True)
        ps.append(psnr(img, gt).reshape(()))
        l1s.append(l1_loss(img, gt).reshape(()))
    # one host transfer for all views
    return {"psnr": float(torch.stack(ps).double().mean()), "l1": float(torch.stack(l1s).double().mean())}


def fit_gaussians(gaussians, cameras: Sequence, opt, pipe, background, *, kernel_size: float,
                  first_iter: int, last_iter: int, scene_extent: float,
                  loss_fn: Optional[Callable] = None, strategy=None, filter_cameras=None,
                  test_cameras=(), test_iterations=(), on_save: Optional[Callable] = None,
                  save_iterations=(), checkpoint_dir: Optional[str] = None, checkpoint_iterations=(),
                  grow_sh: bool = True, desc: str = "Training", progress: bool = True,
                  resume_state: Optional[dict] = None, final_iteration: Optional[int] = None,
                  stop_rule=None) -> FitResult:
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
    final_iteration: the last iteration of the whole run (train.py: opt.iterations). As in 3DGS, that
        iteration takes no optimizer step, and the periodic 3D-filter update stops one interval before
        it. None (default: a fit that is one chunk of a longer schedule) = every iteration steps and
        the filter stops one interval before `last_iter`.
    stop_rule: an object whose update(render, camera.image) -> bool is fed every iteration after its
        optimizer step (training.fit_stop.AgreementStop); True ends the fit there (result.stopped_early).

    Per iteration, in the order of Inria 3DGS / Mip-Splatting train.py: render, loss, backward; test
    evaluation and save (so a saved model never holds freshly densified or opacity-reset Gaussians);
    densification statistics, densify/prune (+ 3D filter), opacity reset; the periodic 3D-filter
    update; the optimizer step; the checkpoint (state after the step: a run resumed from chkpnt<N>
    starts at N + 1).
    """
    loss_fn = loss_fn or photometric_target_loss(opt.lambda_dssim)
    filter_cameras = list(filter_cameras or cameras)
    if gaussians.optimizer is None:
        gaussians.training_setup(opt)
    if resume_state is None:
        gaussians.compute_3D_filter(filter_cameras)  # a checkpoint carries its own filter
    result = FitResult(last_iteration=first_iter - 1, seconds=0.0, first_iteration=first_iter)
    start = time.time()
    order: list = list((resume_state or {}).get("view_order", []))
    ema_loss, ema_psnr = None, None
    end = last_iter if final_iteration is None else final_iteration  # no filter update in the last interval
    bar = tqdm(range(first_iter, last_iter + 1), desc=desc, disable=not progress, dynamic_ncols=True)
    for iteration in bar:
        gaussians.update_learning_rate(iteration)
        if grow_sh and opt.sh_increase_interval > 0 and iteration % opt.sh_increase_interval == 0:
            gaussians.oneup_sh_degree()
        if not order:  # the global CPU generator, so the view order is the same on every device
            order = torch.randperm(len(cameras), device="cpu").tolist()
        cam = cameras[order.pop()]
        bg = torch.rand(3, device="cpu").to(background) if opt.random_background else background
        pkg = render(cam, gaussians, pipe, bg, kernel_size=kernel_size)
        loss = loss_fn(pkg, cam)
        loss.backward()

        with torch.no_grad():
            # the running loss stays a device tensor: no host sync per iteration, only when shown
            ema_loss = loss.detach() if ema_loss is None else 0.4 * loss.detach() + 0.6 * ema_loss
            if iteration % 10 == 0 and cam.image is not None and cam.image.shape == pkg["render"].shape:
                p = float(psnr(pkg["render"].clamp(0, 1), cam.image.to(pkg["render"].device)))
                ema_psnr = p if ema_psnr is None else 0.4 * p + 0.6 * ema_psnr
                bar.set_postfix(loss=f"{float(ema_loss):.4f}", psnr=f"{ema_psnr:.2f}", n=gaussians.num_points)
            if iteration in test_iterations:
                # the train views 3DGS's training_report samples: indices 5, 10, ..., 25 (mod count)
                train_views = [cameras[i % len(cameras)] for i in range(5, 30, 5)] if len(cameras) else []
                for split, cams in (("test", list(test_cameras)), ("train", train_views)):
                    stats = evaluate(cams, gaussians, pipe, background, kernel_size)
                    if stats:
                        entry = {"iteration": iteration, "split": split, **stats,
                                 "num_gaussians": gaussians.num_points}
                        result.test_log.append(entry)
                        bar.write(f"[ITER {iteration}] {split}: L1 {stats['l1']:.5f} PSNR {stats['psnr']:.2f} "
                                  f"({gaussians.num_points} Gaussians)")
            if on_save is not None and iteration in save_iterations:
                on_save(iteration)

            if strategy is not None:
                # the 3D filter is recomputed right after densify/prune, before an opacity reset uses it
                strategy.step_post_backward(iteration, gaussians, pkg, cam, scene_extent,
                                            on_densified=lambda: gaussians.compute_3D_filter(filter_cameras))
            past_densify = strategy is None or iteration > strategy.densify_until_iter
            if (opt.filter_update_interval > 0 and iteration % opt.filter_update_interval == 0 and past_densify
                    and iteration < end - opt.filter_update_interval):
                gaussians.compute_3D_filter(filter_cameras)

            if final_iteration is None or iteration < final_iteration:
                gaussians.optimizer.step()
            gaussians.optimizer.zero_grad(set_to_none=True)

            if checkpoint_dir and iteration in checkpoint_iterations:
                save_checkpoint(os.path.join(checkpoint_dir, f"chkpnt{iteration}.pth"), gaussians, iteration,
                                strategy, extra={"view_order": list(order)})
        result.last_iteration = iteration
        if stop_rule is not None and stop_rule.update(pkg["render"], cam.image):
            result.stopped_early = True
            bar.write(f"{desc}: stopped at iteration {iteration} of {last_iter} (render/target agreement "
                      f"{stop_rule.last_gain_db:+.3f} dB over the last {stop_rule.window} iterations)")
            break
    bar.close()
    if stop_rule is not None:
        result.agreement_db = [round(a, 4) for a in stop_rule.agreement]
    result.loss = None if ema_loss is None else float(ema_loss)
    result.seconds = time.time() - start
    return result
