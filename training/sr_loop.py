"""The 3DSR loop (DESIGN.md): at every denoising step a diffusion SR model proposes HR images, the
Gaussians are fitted to them plus a low-resolution consistency term, and encodings of their renders
replace the model's clean-latent estimate in the DDIM step.

    x_T ~ N(0, I), one latent per view
    for k, (t, t_prev) in enumerate(schedule):
        x0, eps = predict(x_t, t, L);  H = decode(x0)
        fit K iterations: L_hr(H, R) + lambda * L_lr(L, area_down(R))
        x_{t_prev} = DDIM(encode(render all views), eps, t, t_prev, eta)
    final fit (final_iters more) on the last step's proposals H

The last step's DDIM update lands on x_final ~ encode(R): decoding it would only give the renders
back through the VAE, so the final fit continues on the model's last proposals instead (DESIGN.md).

The baselines run through the same code and differ only in where the targets come from:
  per-view: the plain sampler (z = x0, no fits between steps), then one fit to the decoded images
            ("SR then 3D");
  bicubic:  no diffusion model, bicubic-upsampled LR images as targets, one fit;
  per-view-isr: every view upscaled once by a single-step image SR model (Real-ESRGAN: sr.image_sr), then
            one fit with the same L_hr + lambda L_lr loss (the SRGS-style baseline).
The baselines fit as many iterations as 3DSR does in total (steps x K + final), on one schedule.

Resuming: after each denoising step one file (step_<k>/checkpoint.pth) holds the latents, the
sampling generator, the Gaussians with their Adam state, the densification state and the global RNG,
so a run killed anywhere and resumed reproduces the uninterrupted run bit for bit.
"""
import dataclasses
import json
import math
import os
import re
import resource
import shutil
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gaussian_renderer import render
from sr.latents import ViewLatents
from training.fit import evaluate, fit_gaussians, rng_state, set_rng_state
from training.fit_stop import AgreementStop
from utils.device import release_cached_memory
from utils.errors import ModelNotFoundError, ThreeDSRError
from utils.image_utils import area_downsample, psnr, save_image
from utils.loss_utils import photometric_loss
from utils.system_utils import atomic_write, proc_status_kib

MODES = ("3dsr", "per-view", "bicubic", "per-view-isr")
DEFAULT_RUN_NAMES = {"3dsr": "sr", "per-view": "sr_per-view", "bicubic": "sr_bicubic",
                     "per-view-isr": "sr_per-view-isr"}
_CHECKPOINT_FORMAT = "3dsr-sr-checkpoint"
# The "ramp" schedule (sr_refine.py's default): step k of S fits round(K * f) iterations, f interpolated
# piecewise-linearly at (k - 1) / (S - 1) through these points, K = --iters_per_step. At 4 steps it is the
# 0.1 / 0.25 / 0.65 / 1 schedule measured by benchmarks/sr_schedule.py: few fit iterations while the proposals
# are noisy, the most at the end.
RAMP_POINTS = ((0.0, 0.1), (1 / 3, 0.25), (2 / 3, 0.65), (1.0, 1.0))
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class SRSettings:
    """What defines a run: a checkpoint resumes only under the same settings."""
    mode: str = "3dsr"
    scale: int = 4
    steps: int = 4
    iters_per_step: int = 5000
    final_iters: int = 5000
    lambda_lr: float = 1.0
    lambda_dssim: float = 0.2
    eta: float = 0.0
    seed: int = 0
    sr_model: str = ""
    published_update: bool = False  # the published 3DSR code's update (see SRRefiner.sampler_step)
    sr_options: dict = field(default_factory=dict)  # the SR adapter's options that change its outputs
    # fit iterations of each denoising step (one per step); empty: iters_per_step at every step
    iters_schedule: List[int] = field(default_factory=list)
    # the stop rule (training/fit_stop.py): a fit ends when its render/target agreement gains less than
    # fit_stop_db per fit_stop_window iterations; 0 = off. A stopped fit leaves the global numbering alone:
    # the next fit starts where the schedule says, so learning rates and densification stay on schedule
    fit_stop_db: float = 0.0
    fit_stop_window: int = 100

    def __post_init__(self):
        if self.mode not in MODES:
            raise ThreeDSRError(f"unknown --mode '{self.mode}'; use one of {', '.join(MODES)}")
        for key in ("scale", "steps"):
            if int(getattr(self, key)) < 1:
                raise ThreeDSRError(f"--{key} must be at least 1, got {getattr(self, key)}")
        if self.iters_per_step < 0 or self.final_iters < 0:
            raise ThreeDSRError("--iters_per_step and --final_iters must not be negative")
        self.iters_schedule = [int(k) for k in self.iters_schedule]
        if self.iters_schedule and len(self.iters_schedule) != int(self.steps):
            raise ThreeDSRError(f"--iters_schedule has {len(self.iters_schedule)} entries for --steps {self.steps}; "
                                "give one iteration count per denoising step")
        if any(k < 0 for k in self.iters_schedule):
            raise ThreeDSRError(f"--iters_schedule must not hold negative counts, got {self.iters_schedule}")
        if self.iters_schedule == [int(self.iters_per_step)] * int(self.steps):
            self.iters_schedule = []  # uniform has one form, so checkpoints from before the flag resume
        if self.fit_stop_db < 0 or int(self.fit_stop_window) < 1:
            raise ThreeDSRError(f"--fit_stop_db must be >= 0 (0 = off) and --fit_stop_window >= 1, got "
                                f"{self.fit_stop_db} and {self.fit_stop_window}")
        if not 0.0 <= self.eta <= 1.0:
            raise ThreeDSRError(f"--eta must be in [0, 1], got {self.eta}")
        if self.published_update and (self.mode != "3dsr" or self.eta != 0.0):
            raise ThreeDSRError("--published_update applies to --mode 3dsr only and has its own DDPM noise "
                                f"(got --mode {self.mode} --eta {self.eta}); drop it or use --mode 3dsr --eta 0")

    def step_iters(self, k: int) -> int:
        """Fit iterations of denoising step k (1-based)."""
        return self.iters_schedule[k - 1] if self.iters_schedule else self.iters_per_step

    def first_iteration(self, k: int) -> int:
        """Global number of step k's first fit iteration; k = steps + 1 is the final fit's."""
        return 1 + sum(self.step_iters(j) for j in range(1, k))

    @property
    def total_iterations(self) -> int:
        return self.first_iteration(self.steps + 1) - 1 + self.final_iters

    def describe_iterations(self) -> str:
        per_step = ("+".join(str(k) for k in self.iters_schedule) if self.iters_schedule
                    else f"{self.steps} x {self.iters_per_step}")
        text = f"{self.steps} steps ({per_step}) + {self.final_iters} final fit iterations"
        if self.fit_stop_db > 0:
            text += (f", each fit stopping early once its render/target agreement gains < {self.fit_stop_db:g} dB "
                     f"per {self.fit_stop_window} iterations")
        return text

    @property
    def uses_diffusion(self) -> bool:
        return self.mode in ("3dsr", "per-view")


def ramp_fraction(pos: float) -> float:
    for (x0, y0), (x1, y1) in zip(RAMP_POINTS, RAMP_POINTS[1:]):
        if pos <= x1:
            return y0 + (y1 - y0) * (pos - x0) / (x1 - x0)
    return RAMP_POINTS[-1][1]


def resolve_iters_schedule(spec: Sequence[str], steps: int, iters_per_step: int) -> List[int]:
    """--iters_schedule as words -> per-step fit iterations: 'ramp' (the default, see RAMP_POINTS),
    'uniform' (iters_per_step at every step, the paper's), or one count per step."""
    words = [str(w).strip().lower() for w in spec] or ["ramp"]
    if words == ["uniform"]:
        return [int(iters_per_step)] * int(steps)
    if words == ["ramp"]:
        s = int(steps)
        # halves round up (Python's round() would take 2.5 to 2)
        return [int(math.floor(iters_per_step * ramp_fraction(k / (s - 1) if s > 1 else 1.0) + 0.5))
                for k in range(s)]
    try:
        counts = [int(w) for w in words]
    except ValueError:
        raise ThreeDSRError(f"--iters_schedule takes 'ramp', 'uniform' or one iteration count per step; got "
                            f"{' '.join(spec)}") from None
    return counts


def check_published_update(settings: SRSettings, sr):
    """--published_update needs a model with the published 3DSR update (StableSR-Turbo) and its schedule."""
    if not settings.published_update:
        return
    steps = getattr(sr, "published_num_steps", None)
    if steps is None:
        raise ThreeDSRError(f"--published_update needs StableSR-Turbo (--sr_model stablesr-turbo); "
                            f"'{getattr(sr, 'name', sr)}' has no published 3DSR update")
    if int(settings.steps) != int(steps):
        raise ThreeDSRError(f"--published_update runs the model's {steps}-step schedule; pass --steps {steps}")


def bicubic_upsample(images: torch.Tensor, scale: int) -> torch.Tensor:
    """[B, 3, h, w] -> [B, 3, s*h, s*w], bicubic (a = -0.75, as OpenCV/PyTorch), clamped to [0, 1]."""
    return F.interpolate(images, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def sr_fit_loss(lr_by_name: dict, scale: int, lambda_lr: float, lambda_dssim: float):
    """L_hr(H, R) + lambda * L_lr(L, area_down(R)), each (1 - delta) L1 + delta (1 - SSIM).

    The camera's `.image` is the HR target H; the LR image is looked up by the camera's image name.
    """
    def loss_fn(pkg, cam):
        rendered = pkg["render"]
        loss = photometric_loss(rendered, cam.image.to(rendered.device, non_blocking=True), lambda_dssim)
        if lambda_lr > 0:
            low = area_downsample(rendered, scale)
            lr = lr_by_name[cam.image_name].to(rendered.device, non_blocking=True)
            loss = loss + lambda_lr * photometric_loss(low, lr, lambda_dssim)
        return loss
    return loss_fn


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB: VmHWM of /proc/self/status where it exists (ru_maxrss
    also carries the RSS of the parent at fork across execve, so a script started by a large process
    would report that process's size), else ru_maxrss."""
    hwm = proc_status_kib("VmHWM")
    if hwm is not None:
        return round(hwm / 1024.0, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def peak_memory_mb() -> dict:
    """Peak resident memory of this process (and of CUDA allocations when used), in MiB."""
    out = {"peak_memory_mb": peak_rss_mb()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return out


def mean_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(psnr(a.clamp(0, 1), b.to(a.device).clamp(0, 1)).mean())


def latest_checkpoint(run_dir: str) -> Optional[str]:
    """The checkpoint of the last complete step under run_dir, or None."""
    best = None
    if os.path.isdir(run_dir):
        for entry in os.listdir(run_dir):
            m = _STEP_DIR.match(entry)
            path = os.path.join(run_dir, entry, "checkpoint.pth")
            if m and os.path.isfile(path) and (best is None or int(m.group(1)) > best[0]):
                best = (int(m.group(1)), path)
    return best[1] if best else None


class SRRefiner:
    """Runs one SR stage on a loaded LR model (see the module docstring).

    gaussians: the LR model's GaussianModel, spatial_lr_scale set to the scene extent (Scene does it),
        so positions are really optimised.
    lr_cameras: the train cameras at LR, with their LR images.
    sr: a DiffusionSR (None for mode "bicubic").
    opt: OptimizationParams values for the fit; iterations are numbered globally over the whole stage
        (1 .. settings.total_iterations), so learning-rate decay and the densification window span it.
    hr_test_cameras: HR test cameras with ground truth, for the per-step test PSNR in the log (optional).
    run_dir: OUT/sr/<name>/ (log.json, checkpoints, step images); ply_path: where the result goes.
    """

    def __init__(self, settings: SRSettings, gaussians, lr_cameras: Sequence, *, opt, pipe, background,
                 kernel_size: float, scene_extent: float, run_dir: str, ply_path: str, sr=None, strategy=None,
                 hr_test_cameras: Sequence = (), save_images: bool = True, keep_checkpoints: bool = False,
                 progress: bool = True, isr=None):
        if settings.uses_diffusion and sr is None:
            raise ThreeDSRError(f"mode '{settings.mode}' needs a diffusion SR model")
        if settings.mode == "per-view-isr":
            if isr is None:
                raise ThreeDSRError("mode 'per-view-isr' needs an image SR model (--isr)")
            if int(isr.scale) != int(settings.scale):
                raise ThreeDSRError(f"--scale {settings.scale} but the image SR model '{isr.name}' upscales "
                                    f"x{isr.scale}; pass --scale {isr.scale}")
        self.isr = isr if settings.mode == "per-view-isr" else None
        if sr is not None and settings.uses_diffusion and int(sr.scale) != int(settings.scale):
            raise ThreeDSRError(f"--scale {settings.scale} but the SR model '{sr.name}' upscales x{sr.scale}; "
                                f"pass --scale {sr.scale}")
        self.settings = settings
        self.gaussians = gaussians
        self.sr = sr if settings.uses_diffusion else None
        self.opt, self.pipe, self.background = opt, pipe, background
        self.kernel_size, self.scene_extent = kernel_size, scene_extent
        self.strategy = strategy
        self.run_dir, self.ply_path = run_dir, ply_path
        self.hr_test_cameras = list(hr_test_cameras)
        self.save_images, self.keep_checkpoints, self.progress = save_images, keep_checkpoints, progress
        s = int(settings.scale)
        self.names = [c.image_name for c in lr_cameras]
        if len(set(self.names)) != len(self.names):
            raise ThreeDSRError("train views must have distinct image names")
        # LR images (small) on the model's device; HR targets stay where the cameras' images live
        # (--data_device) and move per fit iteration
        self.data_device = lr_cameras[0].image.device
        self.device = gaussians.get_xyz.device if gaussians is not None else self.data_device
        self.lr_images = torch.stack([c.image for c in lr_cameras]).to(self.device)
        self.hr_cameras = [c.resized(c.width * s, c.height * s) for c in lr_cameras]
        self.loss_fn = sr_fit_loss(dict(zip(self.names, self.lr_images)), s, settings.lambda_lr,
                                   settings.lambda_dssim)
        self.generator = torch.Generator(device="cpu").manual_seed(int(settings.seed))  # x_T and DDIM noise
        self.log: List[dict] = []
        self.last_x0: Optional[torch.Tensor] = None  # the last step's clean estimate (3DSR's final targets)
        check_published_update(settings, self.sr)

    # ---- pieces --------------------------------------------------------------------------------
    def fit(self, targets: torch.Tensor, first: int, last: int, desc: str):
        """Fit the Gaussians to HR targets [V, 3, H, W] for iterations first..last (global numbering)."""
        cams = [c.resized(c.width, c.height, image=t) for c, t in zip(self.hr_cameras, targets)]
        return fit_gaussians(self.gaussians, cams, self.opt, self.pipe, self.background,
                             kernel_size=self.kernel_size, first_iter=first, last_iter=last,
                             scene_extent=self.scene_extent, loss_fn=self.loss_fn, strategy=self.strategy,
                             filter_cameras=self.hr_cameras, grow_sh=False, desc=desc, progress=self.progress,
                             final_iteration=self.settings.total_iterations, stop_rule=self._stop_rule())

    def _stop_rule(self) -> Optional[AgreementStop]:
        st = self.settings
        return AgreementStop(len(self.hr_cameras), st.fit_stop_db, st.fit_stop_window) if st.fit_stop_db > 0 else None

    @torch.no_grad()
    def render_all(self) -> torch.Tensor:
        """Every train view rendered at HR: [V, 3, H, W] in [0, 1]."""
        return torch.stack([render(c, self.gaussians, self.pipe, self.background,
                                   kernel_size=self.kernel_size)["render"].clamp(0, 1) for c in self.hr_cameras])

    @torch.no_grad()
    def isr_targets(self) -> torch.Tensor:
        """Every view upscaled once by the image SR model, one view at a time (memory of one view)."""
        out = [self._targets_device(self.isr.upscale(img[None]))[0] for img in self.lr_images]
        release_cached_memory(self.isr.device)
        return torch.stack(out).clamp(0.0, 1.0)

    def _targets_device(self, images: torch.Tensor) -> torch.Tensor:
        return images.detach().to(self.data_device, torch.float32)

    def _stats(self, step, t, t_prev, decoded, renders, fit_result, seconds) -> dict:
        s = self.settings.scale
        entry = {"step": step, "timestep": t, "t_prev": t_prev,
                 "fit_loss": None if fit_result is None or fit_result.loss is None else round(fit_result.loss, 6),
                 "fit_iterations": 0 if fit_result is None else fit_result.iterations,
                 "fit_stopped_early": fit_result is not None and fit_result.stopped_early,
                 "fit_agreement_db": None if fit_result is None or not self.settings.fit_stop_db
                 else fit_result.agreement_db,
                 "psnr_render_vs_decoded": None, "psnr_lr_consistency": None, "psnr_hr_test": None}
        if renders is not None:
            if decoded is not None:
                entry["psnr_render_vs_decoded"] = round(mean_psnr(renders, decoded), 4)
            entry["psnr_lr_consistency"] = round(mean_psnr(area_downsample(renders, s), self.lr_images), 4)
        elif decoded is not None:  # per-view proposals: how well they agree with the LR input
            entry["psnr_lr_consistency"] = round(mean_psnr(area_downsample(decoded, s), self.lr_images), 4)
        if renders is not None and self.hr_test_cameras:
            stats = evaluate(self.hr_test_cameras, self.gaussians, self.pipe, self.background, self.kernel_size)
            entry["psnr_hr_test"] = round(stats["psnr"], 4)
        entry.update(seconds=round(seconds, 2), num_gaussians=self.gaussians.num_points, **peak_memory_mb())
        return entry

    def _save_images(self, folder: str, decoded: Optional[torch.Tensor], renders: Optional[torch.Tensor]):
        if not self.save_images:
            return
        for sub, images in (("decoded", decoded), ("renders", renders)):
            if images is None:
                continue
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
            for name, img in zip(self.names, images):
                save_image(os.path.join(folder, sub, f"{name}.png"), img)

    def _write_log(self, complete: bool, total_seconds: float) -> dict:
        steps = [e for e in self.log if e["step"] != "final"]
        final = next((e for e in self.log if e["step"] == "final"), None)
        payload = {"mode": self.settings.mode, "scale": self.settings.scale,
                   "sr_model": self.settings.sr_model or None,
                   "settings": dataclasses.asdict(self.settings), "views": len(self.names),
                   "hr_size": [self.hr_cameras[0].width, self.hr_cameras[0].height],
                   "steps": steps, "final": final, "total_seconds": round(total_seconds, 2),
                   "fit_iterations": sum(int(e.get("fit_iterations") or 0) for e in self.log),  # run, not planned
                   "complete": complete}
        os.makedirs(self.run_dir, exist_ok=True)
        with atomic_write(os.path.join(self.run_dir, "log.json"), "w") as f:
            json.dump(payload, f, indent=2)
        return payload

    # ---- checkpoints ---------------------------------------------------------------------------
    def _save_checkpoint(self, latents: ViewLatents, seconds: float):
        step = latents.step
        payload = {"format": _CHECKPOINT_FORMAT, "version": 1,
                   "settings": dataclasses.asdict(self.settings), "view_names": self.names,
                   "latents": latents.state_dict(self.generator), "gaussians": self.gaussians.capture(),
                   "strategy": self.strategy.state_dict() if self.strategy is not None else None,
                   "rng": rng_state(), "log": self.log, "seconds": seconds,
                   "last_x0": None if self.last_x0 is None else self.last_x0.detach().cpu()}
        path = os.path.join(self.run_dir, f"step_{step}", "checkpoint.pth")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_write(path, "wb") as f:
            torch.save(payload, f)
        if not self.keep_checkpoints:  # only after the new one is complete
            for k in range(1, step):
                old = os.path.join(self.run_dir, f"step_{k}", "checkpoint.pth")
                if os.path.isfile(old):
                    os.remove(old)

    def _load_checkpoint(self, path: str):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelNotFoundError(f"cannot read SR checkpoint {path} ({type(exc).__name__}); "
                                     "delete it to resume from the step before, or pass --overwrite") from None
        if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT:
            raise ModelNotFoundError(f"{path} is not an SR checkpoint; pass --overwrite to start again")
        ours = dataclasses.asdict(self.settings)
        saved = {**dataclasses.asdict(SRSettings()), **payload["settings"]}  # fields added since: defaults
        if "sr_options" not in payload["settings"]:  # written before the options were recorded: unknown
            saved["sr_options"] = ours["sr_options"]
        diff = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in ours.items() if saved.get(k) != v]
        if diff:
            raise ThreeDSRError(f"{path} was written with other settings ({'; '.join(diff)}); rerun with the "
                                "same flags to resume, or pass --overwrite to start again")
        if payload["view_names"] != self.names:
            raise ThreeDSRError(f"{path} was written for other train views; pass --overwrite to start again")
        latents = ViewLatents.from_state_dict(payload["latents"], self.sr.device if self.sr is not None else self.device,
                                            self.generator, path)
        self.gaussians.restore(payload["gaussians"], self.opt)
        if self.strategy is not None and payload["strategy"] is not None:
            self.strategy.load_state_dict(payload["strategy"], device=self.device)
        set_rng_state(payload["rng"])
        self.log = list(payload["log"])
        last = payload.get("last_x0")
        self.last_x0 = None if last is None else last.to(latents.latents.device)
        return latents, float(payload.get("seconds", 0.0))

    # ---- one denoising step ------------------------------------------------------------------
    def sampler_step(self, latents: ViewLatents, estimate) -> dict:
        """x_{t_prev} = DDIM(z, eps, t, t_prev, eta) for every view, where (x0, eps) = predict(x_t, t) and
        z = estimate(x0, k, t)["z"]; stores x_{t_prev} in `latents` and returns what `estimate` made."""
        t, t_prev = latents.current()
        if self.settings.published_update and latents.step > 0:  # fresh LR-latent sample every step
            latents.cond_noise = self._published_noise("enc_lr", latents.step)
        x0, eps = self.sr.predict(latents.latents, t, self.lr_images, latents.cond_noise)
        out = estimate(x0, latents.step + 1, t)
        out["x0"] = x0
        if self.settings.published_update:
            # the published 3DSR code: x = coef1 E(renders) + coef2 x_T + sigma n (DDPM posterior from the
            # stale x_T of step 0, E a posterior sample with fresh noise); eps is not used
            enc = self._published_noise("enc_render", latents.step)
            post = self._published_noise("post", latents.step) if t_prev >= 0 else None
            x_T = latents.extra["x_T"].to(latents.latents.device)
            latents.advance(self.sr.published_update(out["renders"], x_T, t, enc, post).float())
        else:
            latents.advance(self.sr.step(out["z"], eps, t, t_prev, self.settings.eta, self.generator))
        return out

    def _published_noise(self, what: str, step: int) -> torch.Tensor:
        """N(0, I) of the latents' shape from the sampling generator, for the published update (`what`
        and `step` name the draw: tests substitute the oracle's noises here)."""
        shape = self.sr.latent_shape(tuple(self.lr_images.shape))
        return torch.randn(shape, generator=self.generator, dtype=torch.float32, device="cpu").to(self.sr.device)

    def _published_start(self) -> ViewLatents:
        """x_T as the published code makes it; its LR-latent sample is step 0's structure condition,
        and x_T is kept (latents.extra, in the step checkpoint) for every later update."""
        enc, noise = self._published_noise("enc_lr", 0), self._published_noise("noise_T", 0)
        x_T = self.sr.start_latents(self.lr_images, enc, noise)
        return ViewLatents(latents=x_T, timesteps=self.sr.timesteps(self.settings.steps), cond_noise=enc,
                           view_names=list(self.names), model_name=self.sr.name, extra={"x_T": x_T.detach().cpu()})

    def _replace_x0(self, x0, k, t) -> dict:
        """3DSR: fit the Gaussians to the decoded proposals, and use the encoded renders as z."""
        st = self.settings
        decoded = self._targets_device(self.sr.decode(x0, self.lr_images))
        release_cached_memory(self.sr.device)  # the decoder's activations, before the fit's working set
        first = st.first_iteration(k)
        fit = self.fit(decoded, first, first + st.step_iters(k) - 1, desc=f"step {k}/{st.steps} t={t} fit")
        renders = self.render_all()
        release_cached_memory(self.device)
        z = None if st.published_update else self.sr.encode(renders, self.lr_images)
        return {"z": z, "decoded": decoded, "renders": renders, "fit": fit}

    def _keep_x0(self, x0, k, t) -> dict:
        """Plain per-view sampling: z = x0 (decoded only to save the proposals)."""
        decoded = self._targets_device(self.sr.decode(x0, self.lr_images)) if self.save_images else None
        return {"z": x0, "decoded": decoded, "renders": None, "fit": None}

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict:
        """Run (or continue, with resume=True) the stage; writes the PLY, log.json and step outputs."""
        st, sr = self.settings, self.sr
        latents, elapsed = None, 0.0
        ckpt = latest_checkpoint(self.run_dir) if resume else None
        if ckpt is not None:
            latents, elapsed = self._load_checkpoint(ckpt)
            print(f"Resuming {self.run_dir} after denoising step {latents.step}/{latents.num_steps}")
        elif sr is not None and st.published_update:
            latents = self._published_start()
        elif sr is not None:
            latents = ViewLatents.create(sr, self.lr_images, st.steps, self.generator, self.names)
        if self.gaussians.optimizer is None:
            self.gaussians.training_setup(self.opt)

        stages = (st.steps if sr is not None else 0) + 1
        bar = tqdm(total=stages, initial=latents.step if latents is not None else 0, desc=f"SR {st.mode}",
                   disable=not self.progress, dynamic_ncols=True)
        while latents is not None and not latents.done:
            t0 = time.time()
            k, t, t_prev = latents.step + 1, *latents.current()
            out = self.sampler_step(latents, self._replace_x0 if st.mode == "3dsr" else self._keep_x0)
            self.last_x0 = out["x0"]
            seconds = time.time() - t0
            elapsed += seconds
            self.log.append(self._stats(k, t, t_prev, out["decoded"], out["renders"], out["fit"], seconds))
            self._save_images(os.path.join(self.run_dir, f"step_{k}"), out["decoded"], out["renders"])
            self._save_checkpoint(latents, elapsed)
            self._write_log(False, elapsed)
            bar.update(1)
            bar.set_postfix(self._postfix(self.log[-1]))

        # final fit: 3DSR continues on its last proposals; per-view fits once to the sampler's output
        # decode(x_final); bicubic fits once to the upsampled LR images
        t0 = time.time()
        if st.mode == "3dsr":
            targets = self._targets_device(sr.decode(self.last_x0, self.lr_images))
        elif sr is not None:
            targets = self._targets_device(sr.decode(latents.latents, self.lr_images))
        elif self.isr is not None:
            targets = self.isr_targets()
        else:
            targets = bicubic_upsample(self.lr_images, st.scale)
        release_cached_memory(self.device)
        first = st.first_iteration(st.steps + 1) if st.mode == "3dsr" else 1
        fit_result = None
        if st.total_iterations >= first:
            fit_result = self.fit(targets, first, st.total_iterations, desc=f"final fit ({st.mode})")
        renders = self.render_all()
        self.gaussians.save_ply(self.ply_path)
        seconds = time.time() - t0
        elapsed += seconds
        self.log = [e for e in self.log if e["step"] != "final"]
        self.log.append(self._stats("final", None, None, targets, renders, fit_result, seconds))
        self._save_images(os.path.join(self.run_dir, "final"), targets, renders)
        log = self._write_log(True, elapsed)
        bar.update(1)
        bar.set_postfix(self._postfix(self.log[-1]))
        bar.close()
        return log

    @staticmethod
    def _postfix(entry: dict) -> dict:
        out = {"n": entry["num_gaussians"]}
        for key, short in (("psnr_render_vs_decoded", "R~H"), ("psnr_lr_consistency", "LR"),
                           ("psnr_hr_test", "test")):
            if entry.get(key) is not None:
                out[short] = f"{entry[key]:.2f}"
        return out


def describe_log(log: dict) -> str:
    """A few lines summarising a log.json for the terminal."""
    lines = []
    for e in log["steps"] + ([log["final"]] if log.get("final") else []):
        parts = [f"step {e['step']}" + (f" t={e['timestep']}" if e.get("timestep") is not None else "")]
        if e.get("fit_iterations"):
            parts.append(f"{e['fit_iterations']} fit iterations" + (" (stopped early)" if e.get("fit_stopped_early")
                                                                    else ""))
        for key, label in (("fit_loss", "loss"), ("psnr_render_vs_decoded", "PSNR render/decoded"),
                           ("psnr_lr_consistency", "LR-consistency PSNR"), ("psnr_hr_test", "HR test PSNR")):
            if e.get(key) is not None:
                parts.append(f"{label} {e[key]:.4g}")
        parts.append(f"{e['seconds']:.1f} s, {e['num_gaussians']} Gaussians, peak {e['peak_memory_mb']:.0f} MB")
        lines.append(", ".join(parts))
    return "\n".join(lines)


def clear_run(run_dir: str):
    """Remove a previous run's folder (--overwrite)."""
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)

