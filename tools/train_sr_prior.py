#!/usr/bin/env python
"""Train our small x4 diffusion SR prior (sr/pixel_prior.py) on photographs, and evaluate it.

    python tools/fetch_prior_data.py                                   # photos -> ~/.cache/3dsr/prior_data
    python tools/train_sr_prior.py --out runs/prior                     # train (CPU: ~1.5 h on 2 cores; CUDA if present)
    python tools/train_sr_prior.py --out runs/prior --resume            # continue a stopped run
    python tools/train_sr_prior.py --out runs/prior --export models/embedded-x4   # EMA weights -> folder
    python tools/train_sr_prior.py --eval models/embedded-x4            # PSNR / LPIPS vs PIL bicubic

Training: random HR crops of the training photos (random flips / 90-degree turns); the LR crop is made
exactly like our datasets' LR images (exact 4x4 block means of the 8-bit crop, rounded half up to 8 bit:
tools/resize_images.py); optional mild degradations of the LR (--blur / --noise / --jpeg probabilities).
The network learns v-prediction of the residual HR - bicubic(LR), divided by a constant measured once
on the training photos (`residual_scale`), under a cosine schedule; AdamW, warm-up then cosine (or
constant) learning rate, EMA of the weights (what is exported), optional bf16 autocast (--bf16: faster
only on CPUs with native bf16, AVX512-BF16 / AMX; on an AVX2-only CPU it was 15x slower, measured).
Measured here (2 AVX2 cores, fp32, batch 8): 0.6 s/step at --crop 64 (the 8000-step release run: 81 min), up to
1.0 s/step when the cores are shared; 3.6 s/step at --crop 128 (shared).

Checkpoints (OUT/checkpoint.pth, written atomically every --checkpoint_every steps and at the end or at
--time_limit_min) hold the model, EMA, optimizer, LR schedule, every RNG state and the data-order
state, so a run killed anywhere and continued with --resume ends bit-identical to an uninterrupted one
(same machine, same thread count). At the end OUT/prior/ is the loadable folder (EMA weights, fp16):
`load_sr_model("OUT/prior")`, or `sr_refine.py --sr_model OUT/prior`.

Data: --data is a folder of photos. With a manifest.json (tools/fetch_prior_data.py) only its
"train" photos are used, and its "heldout" photos are the --eval set; without one every image in
the folder trains, and --eval_data names the held-out folder.
"""
import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from evaluation import cache_root  # noqa: E402
from tools.resize_images import area_downsample_array  # noqa: E402
from utils.errors import ModelNotFoundError, ThreeDSRError  # noqa: E402
from utils.system_utils import atomic_write, run_cli  # noqa: E402

CHECKPOINT = "checkpoint.pth"
CHECKPOINT_FORMAT = "3dsr-prior-checkpoint"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SCALE = 4
EVAL_STEPS = (1, 2, 4, 8)


def default_data_dir() -> str:
    return os.path.join(cache_root(), "prior_data")


@dataclass
class TrainSettings:
    """What defines a run: --resume continues a checkpoint only under the same settings (except `steps`
    with a constant learning rate, which may grow)."""
    steps: int = 8000
    batch: int = 8
    crop: int = 64                    # HR crop side (a multiple of 16)
    lr: float = 2e-4
    lr_schedule: str = "cosine"       # cosine | constant (after warm-up)
    warmup: int = 250
    weight_decay: float = 1e-2
    ema_decay: float = 0.999
    seed: int = 0
    bf16: bool = False
    blur: float = 0.0                 # probability of a mild Gaussian blur of the HR before downsampling
    noise: float = 0.0                # probability of mild Gaussian noise on the LR
    jpeg: float = 0.0                 # probability of JPEG-compressing the LR (quality 75..95)
    max_side: int = 1024              # photos are area-downscaled to this long side at load time
    channels: List[int] = field(default_factory=lambda: [64, 128, 128])
    layers_per_block: int = 2
    norm_groups: int = 32
    residual_scale: float = 0.0       # 0 = measure on the training photos
    base: str = "bicubic"             # the base image: bicubic, or an image SR model (prior v2: realesrgan-x4plus)
    init: str = ""                    # start from this prior folder's UNet weights (same architecture)

    def check(self):
        if self.crop % 16 or self.crop < 16:
            raise ThreeDSRError(f"--crop must be a positive multiple of 16, got {self.crop}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ThreeDSRError(f"--lr_schedule must be cosine or constant, got {self.lr_schedule}")
        for key in ("blur", "noise", "jpeg"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ThreeDSRError(f"--{key} is a probability in [0, 1], got {getattr(self, key)}")
        if self.steps < 1 or self.batch < 1:
            raise ThreeDSRError("--steps and --batch must be at least 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ThreeDSRError(f"--ema_decay must be in [0, 1), got {self.ema_decay}")
        if any(c % self.norm_groups for c in self.channels):
            raise ThreeDSRError(f"--channels {self.channels} must be multiples of --norm_groups {self.norm_groups}")
        from sr.pixel_prior import BICUBIC, base_names
        if self.base not in base_names():
            raise ThreeDSRError(f"--base must be one of {', '.join(base_names())}, got '{self.base}'")
        if self.base != BICUBIC and (self.blur or self.noise or self.jpeg):
            raise ThreeDSRError(f"--base {self.base} is precomputed once per photo from its clean LR, which "
                                "--blur/--noise/--jpeg would change; use --base bicubic with degradations")
        if self.init and not os.path.isdir(self.init):
            raise ModelNotFoundError(f"--init {self.init}: no such prior folder")


# ---- photos ---------------------------------------------------------------------------------------
def list_photos(folder: str, split: Optional[str]) -> List[str]:
    """Image paths of `folder`: the manifest's `split` ("train" / "heldout") when it has manifest.json,
    else every image file (split "train") or none (split "heldout")."""
    if not os.path.isdir(folder):
        raise ModelNotFoundError(f"photo folder '{folder}' does not exist; run `python tools/fetch_prior_data.py` "
                                 "or pass --data with a folder of photos")
    manifest = os.path.join(folder, "manifest.json")
    if os.path.isfile(manifest):
        with open(manifest) as f:
            entries = json.load(f)["photos"]
        paths = [os.path.join(folder, e["file"]) for e in entries if split is None or e["split"] == split]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise ModelNotFoundError(f"{len(missing)} photo(s) of {manifest} are missing (e.g. {missing[0]}); "
                                     "rerun tools/fetch_prior_data.py")
        return sorted(paths)
    if split == "heldout":
        return []
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS))


def load_photo(path: str, max_side: int = 0) -> np.ndarray:
    """uint8 RGB [H, W, 3]; grey photos become 3 equal channels; area-downscaled so that the long side is
    at most `max_side` (0 = as is)."""
    from PIL import Image
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    h, w = arr.shape[:2]
    if max_side and max(h, w) > max_side:
        import cv2
        s = max_side / max(h, w)
        arr = cv2.resize(arr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(arr)


def make_lr(hr: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """The LR image of an 8-bit HR array [H, W, 3] (H, W multiples of scale): exact block means rounded
    half up to 8 bit, as our datasets' images_N (tools/resize_images.py)."""
    return area_downsample_array(hr, scale)


def pil_bicubic(lr: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """PIL's bicubic upsample of an 8-bit image (the baseline the issue compares with)."""
    from PIL import Image
    h, w = lr.shape[:2]
    return np.asarray(Image.fromarray(lr).resize((w * scale, h * scale), Image.BICUBIC))


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.array(batch, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0


class CropSampler:
    """Random training pairs from in-memory photos, driven only by its own numpy Generator, whose state
    (plain data) goes into the checkpoint: the data order resumes exactly.

    bases: per photo, its precomputed base image (float16 [H, W, 3], see photo_bases) when the prior's base
    is an image SR model; crops then start on the LR grid, so the crop's LR is exactly that photo LR's crop
    and the base crop is the base the model sees for it at sampling time."""

    def __init__(self, photos: List[np.ndarray], settings: TrainSettings, seed: int,
                 bases: Optional[List[np.ndarray]] = None):
        small = [p.shape[:2] for p in photos if min(p.shape[:2]) < settings.crop]
        if small:
            raise ThreeDSRError(f"{len(small)} photo(s) are smaller than --crop {settings.crop} (e.g. {small[0]}); "
                                "use a smaller --crop or drop them")
        self.photos, self.s, self.bases = photos, settings, bases
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict):
        self.rng.bit_generator.state = state

    def hr_crop(self):
        """An HR crop (uint8 [c, c, 3]), or (crop, base crop) when the sampler has bases."""
        rng, c = self.rng, self.s.crop
        i = int(rng.integers(len(self.photos)))
        img = self.photos[i]
        if self.bases is None:
            y = int(rng.integers(img.shape[0] - c + 1))
            x = int(rng.integers(img.shape[1] - c + 1))
        else:  # on the LR grid
            y = SCALE * int(rng.integers((img.shape[0] - c) // SCALE + 1))
            x = SCALE * int(rng.integers((img.shape[1] - c) // SCALE + 1))
        turns, flip = int(rng.integers(4)), rng.random() < 0.5

        def augment(a):
            a = np.rot90(a[y:y + c, x:x + c], turns)
            return np.ascontiguousarray(a[:, ::-1] if flip else a)
        return augment(img) if self.bases is None else (augment(img), augment(self.bases[i]))

    def degrade_lr(self, hr: np.ndarray) -> np.ndarray:
        """LR of one HR crop, with the optional mild degradations (each drawn from the sampler's RNG)."""
        import cv2
        rng, s = self.rng, self.s
        src = hr
        # draw every random number in a fixed order whatever the probabilities, so toggling one does not
        # shift the others' draws
        u_blur, sigma = rng.random(), rng.uniform(0.3, 1.2)
        u_noise, noise_sigma, seed = rng.random(), rng.uniform(0.5, 3.0), int(rng.integers(2 ** 31))
        u_jpeg, quality = rng.random(), int(rng.integers(75, 96))
        if u_blur < s.blur:
            blurred = cv2.GaussianBlur(hr.astype(np.float32), (0, 0), sigma)
            src = np.clip(np.floor(blurred + 0.5), 0, 255).astype(np.uint8)
        lr = make_lr(src)
        if u_noise < s.noise:
            noise = np.random.default_rng(seed).normal(0.0, noise_sigma, lr.shape)
            lr = np.clip(np.floor(lr + noise + 0.5), 0, 255).astype(np.uint8)
        if u_jpeg < s.jpeg:
            ok, buf = cv2.imencode(".jpg", lr[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
            lr = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
        return np.ascontiguousarray(lr)

    def batch(self, n: int):
        """(hr [n, 3, H, W], lr [n, 3, H/4, W/4], base [n, 3, H, W]) float32 in [0, 1]; the base is the
        bicubic upsample of lr unless the sampler has precomputed bases."""
        from sr.pixel_prior import bicubic_base
        crops = [self.hr_crop() for _ in range(n)]
        hrs = crops if self.bases is None else [c[0] for c in crops]
        lrs = [self.degrade_lr(h) for h in hrs]
        hr, lr = to_tensor(np.stack(hrs)), to_tensor(np.stack(lrs))
        if self.bases is None:
            return hr, lr, bicubic_base(lr, SCALE)
        base = torch.from_numpy(np.stack([c[1] for c in crops])).permute(0, 3, 1, 2).float()
        return hr, lr, base


def crop_to_grid(photo: np.ndarray) -> np.ndarray:
    """The photo cut to multiples of SCALE (so its LR is exact block means and its base aligns)."""
    h, w = photo.shape[:2]
    return np.ascontiguousarray(photo[:h - h % SCALE, :w - w % SCALE])


def photo_bases(photos: List[np.ndarray], base: str, device: torch.device, progress: bool = True) -> List[np.ndarray]:
    """The base image (float16 [H, W, 3], stored like sr.pixel_prior.store_base) of every photo: the image
    SR model on the photo's whole LR, as the prior sees a whole view. Cached on disk by content and weights
    (cache_root()/prior_bases), since Real-ESRGAN takes seconds per photo on a CPU."""
    from sr.image_sr import load_isr_model
    from sr.pixel_prior import store_base
    isr = load_isr_model(base, device, dtype=torch.float32)
    folder = os.path.join(cache_root(), "prior_bases", base)
    os.makedirs(folder, exist_ok=True)
    out = []
    for photo in tqdm(photos, desc=f"{base} bases", disable=not progress, dynamic_ncols=True):
        key = hashlib.sha256(photo.tobytes() + repr(photo.shape).encode()
                             + isr.options["weights_sha256"].encode()).hexdigest()[:24]
        path = os.path.join(folder, f"{key}.npy")
        if os.path.isfile(path):
            out.append(np.load(path))
            continue
        lr = to_tensor(make_lr(photo)[None]).to(device)
        arr = store_base(isr.upscale(lr))[0].permute(1, 2, 0).numpy()
        with atomic_write(path, "wb") as f:
            np.save(f, arr)
        out.append(arr)
    return out


def measure_residual_scale(photos: List[np.ndarray], settings: TrainSettings, samples: int = 256,
                           bases: Optional[List[np.ndarray]] = None) -> float:
    """Standard deviation of HR - base(LR) over `samples` clean random crops (a fixed-seed sampler of
    its own, so the training data order is untouched); rounded to 4 decimals."""
    clean = dataclasses.replace(settings, blur=0.0, noise=0.0, jpeg=0.0)
    sampler = CropSampler(photos, clean, seed=12345, bases=bases)
    sq, n = 0.0, 0
    for start in range(0, samples, 16):
        hr, _, base = sampler.batch(min(16, samples - start))
        r = hr - base
        sq += float((r.double() ** 2).sum())
        n += r.numel()
    return round(max(math.sqrt(sq / n), 1e-3), 4)


# ---- the model and its training state -------------------------------------------------------------
def build_unet(settings: TrainSettings):
    from diffusers import UNet2DModel

    from sr.pixel_prior import tiny_unet_config
    return UNet2DModel(**tiny_unet_config(block_out_channels=tuple(settings.channels),
                                          layers_per_block=settings.layers_per_block,
                                          norm_num_groups=settings.norm_groups))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ThreeDSRError(f"--device {name} but CUDA is not available here; use --device cpu or auto")
    return torch.device(name)


class Trainer:
    """Model, EMA, optimizer, LR schedule, RNGs and data sampler of one training run (see module doc)."""

    def __init__(self, settings: TrainSettings, photos: List[np.ndarray], device: torch.device,
                 data_info: Optional[dict] = None, bases: Optional[List[np.ndarray]] = None):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup
        from diffusers.training_utils import EMAModel

        from sr.pixel_prior import ResidualDenoiser, prior_scheduler_config

        settings.check()
        self.s, self.device, self.data_info = settings, device, dict(data_info or {})
        torch.manual_seed(settings.seed)
        self.net = ResidualDenoiser(build_unet(settings)).to(device)
        if settings.init:
            load_init_weights(self.net.unet, settings.init)
        self.ema = EMAModel(self.net.unet.parameters(), decay=settings.ema_decay)
        self.ema.to(device)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        if settings.lr_schedule == "cosine":
            self.lr_sched = get_cosine_schedule_with_warmup(self.optimizer, settings.warmup, settings.steps)
        else:
            self.lr_sched = get_constant_schedule_with_warmup(self.optimizer, settings.warmup)
        self.noise_sched = DDPMScheduler(**{k: v for k, v in prior_scheduler_config().items()
                                            if k not in ("set_alpha_to_one", "steps_offset")})
        self.noise_sched.alphas_cumprod = self.noise_sched.alphas_cumprod.to(device)
        self.residual_scale = settings.residual_scale or measure_residual_scale(photos, settings, bases=bases)
        self.sampler = CropSampler(photos, settings, seed=settings.seed, bases=bases)
        self.generator = torch.Generator().manual_seed(settings.seed + 1)  # noise and timesteps (CPU)
        self.step, self.seconds, self.loss_avg = 0, 0.0, None

    def train_step(self) -> float:
        hr, _, base = self.sampler.batch(self.s.batch)
        x0 = (hr - base) / self.residual_scale
        t = torch.randint(0, self.noise_sched.config.num_train_timesteps, (hr.shape[0],), generator=self.generator)
        noise = torch.randn(x0.shape, generator=self.generator)
        x0, base, t, noise = (v.to(self.device) for v in (x0, base, t, noise))
        x_t = self.noise_sched.add_noise(x0, noise, t)
        target = self.noise_sched.get_velocity(x0, noise, t)
        self.net.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.s.bf16):
            pred = self.net(x_t, base, t)
        loss = F.mse_loss(pred.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.optimizer.step()
        self.lr_sched.step()
        self.ema.step(self.net.unet.parameters())
        self.step += 1
        value = loss.item()
        self.loss_avg = value if self.loss_avg is None else 0.98 * self.loss_avg + 0.02 * value
        return value

    # ---- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "version": 1, "settings": dataclasses.asdict(self.s),
                "step": self.step, "seconds": self.seconds, "loss_avg": self.loss_avg,
                "residual_scale": self.residual_scale, "data": self.data_info,
                "model": self.net.unet.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_sched.state_dict(),
                "sampler": self.sampler.state(), "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def save(self, path: str):
        with atomic_write(path, "wb") as f:
            torch.save(self.state_dict(), f)

    def load(self, payload: dict):
        self.net.unet.load_state_dict(payload["model"])
        self.ema.load_state_dict(payload["ema"])
        self.ema.to(self.device)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.lr_sched.load_state_dict(payload["lr_schedule"])
        self.sampler.set_state(payload["sampler"])
        self.generator.set_state(payload["generator"])
        torch.set_rng_state(payload["torch_rng"])
        if payload.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        self.step, self.seconds, self.loss_avg = int(payload["step"]), float(payload["seconds"]), payload["loss_avg"]
        self.residual_scale = float(payload["residual_scale"])

    def export(self, folder: str, extra: Optional[dict] = None) -> str:
        """Write the loadable prior folder from the EMA weights (fp16 safetensors)."""
        from sr.pixel_prior import prior_scheduler_config, save_pixel_prior
        unet = build_unet(self.s)
        self.ema.copy_to(unet.parameters())
        n_params = sum(p.numel() for p in unet.parameters())
        info = {"scale": SCALE, "unshuffle": self.net.unshuffle, "residual_scale": self.residual_scale,
                "base": self.s.base, "training": {"steps": self.step, "seconds": round(self.seconds, 1), "parameters": n_params,
                             "settings": dataclasses.asdict(self.s), "data": self.data_info,
                             "ema_weights": True, "loss_avg": self.loss_avg, **(extra or {})}}
        return save_pixel_prior(folder, unet.to("cpu"), prior_scheduler_config(), info, dtype=torch.float16)


def load_init_weights(unet, folder: str):
    """Copy a prior folder's UNet weights into `unet` (fine-tuning, e.g. prior v2 from v1)."""
    from diffusers import UNet2DModel
    try:
        with torch.device("cpu"):
            src = UNet2DModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32,
                                              local_files_only=True)
        unet.load_state_dict(src.state_dict())
    except (OSError, ValueError, RuntimeError) as exc:
        from sr.loading import first_line
        raise ModelNotFoundError(f"--init {folder}: cannot load its UNet into this architecture ({first_line(exc)}); "
                                 "pass the same --channels / --layers_per_block / --norm_groups") from None


def read_checkpoint(path: str) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ModelNotFoundError(f"no prior checkpoint at {path}; train first (without --resume)") from None
    except Exception as exc:
        raise ModelNotFoundError(f"cannot read prior checkpoint {path} ({type(exc).__name__}); delete it and "
                                 "train again") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelNotFoundError(f"{path} is not a prior training checkpoint")
    return payload


def check_same_settings(saved: dict, settings: TrainSettings, path: str):
    ours = dataclasses.asdict(settings)
    defaults = dataclasses.asdict(TrainSettings())  # keys a checkpoint predates mean their defaults
    diff = [f"{k} {saved.get(k, defaults[k])!r} -> {v!r}" for k, v in ours.items()
            if saved.get(k, defaults[k]) != v and not (k == "steps" and settings.lr_schedule == "constant" and v >= saved[k])]
    if diff:
        raise ThreeDSRError(f"{path} was written with other settings ({'; '.join(diff)}); rerun with the same "
                            "flags to resume, or pass --overwrite to start again")


def data_fingerprint(paths: List[str]) -> dict:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return {"photos": len(paths), "sha256": h.hexdigest()}


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return True  # cannot tell: do not warn
    return "avx512_bf16" in flags or "amx_bf16" in flags


def train(settings: TrainSettings, data: str, out: str, *, device: str = "auto", resume: bool = False,
          overwrite: bool = False, checkpoint_every: int = 250, time_limit_min: float = 0.0,
          progress: bool = True, on_step: Optional[Callable[[int], None]] = None) -> dict:
    """Train (or continue) a prior; returns {"step", "done", "checkpoint", "prior"}.

    on_step(step) is called after every completed step (tests use it to simulate a kill)."""
    settings.check()
    ckpt_path = os.path.join(out, CHECKPOINT)
    payload = None
    if os.path.isfile(ckpt_path) and not overwrite:
        if not resume:
            raise ThreeDSRError(f"{ckpt_path} exists; pass --resume to continue that run or --overwrite to "
                                "start again")
        payload = read_checkpoint(ckpt_path)
        check_same_settings(payload["settings"], settings, ckpt_path)
    paths = list_photos(data, "train")
    if not paths:
        raise ModelNotFoundError(f"no training photos in '{data}'; run tools/fetch_prior_data.py")
    info = {"folder": os.path.abspath(data), **data_fingerprint(paths)}
    if payload is not None and payload["data"].get("sha256") != info["sha256"]:
        raise ThreeDSRError(f"{ckpt_path} was trained on other photos than those in '{data}' now; pass the same "
                            "--data to resume, or --overwrite to start again")
    manifest = os.path.join(data, "manifest.json")
    if os.path.isfile(manifest):
        with open(manifest) as f:
            info["sources"] = json.load(f).get("sources", [])
    photos = [load_photo(p, settings.max_side) for p in paths]
    dev = pick_device(device)
    bases = None
    if settings.base != "bicubic":
        photos = [crop_to_grid(p) for p in photos]
        bases = photo_bases(photos, settings.base, dev, progress)
    if settings.bf16 and dev.type == "cpu" and not cpu_has_native_bf16():
        print("warning: --bf16 on a CPU without native bf16 (no avx512_bf16/amx_bf16) is much slower than fp32")
    trainer = Trainer(settings, photos, dev, info, bases)
    if payload is not None:
        trainer.load(payload)
        print(f"Resuming {ckpt_path} at step {trainer.step}/{settings.steps}")
    os.makedirs(out, exist_ok=True)
    n_params = sum(p.numel() for p in trainer.net.parameters())
    if trainer.step == 0:
        print(f"Training the x4 prior: {len(photos)} photos, {n_params / 1e6:.2f} M parameters, residual scale "
              f"{trainer.residual_scale}, {settings.steps} steps x batch {settings.batch} of {settings.crop}^2 "
              f"on {dev}{' (bf16 autocast)' if settings.bf16 else ''}")
    bar = tqdm(total=settings.steps, initial=trainer.step, desc="prior", disable=not progress, dynamic_ncols=True)
    start, stopped = time.time(), False
    last_tick = time.time()
    while trainer.step < settings.steps:
        loss = trainer.train_step()
        now = time.time()
        trainer.seconds += now - last_tick
        last_tick = now
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", avg=f"{trainer.loss_avg:.4f}",
                        lr=f"{trainer.lr_sched.get_last_lr()[0]:.2e}")
        if on_step is not None:
            on_step(trainer.step)
        if time_limit_min > 0 and now - start >= time_limit_min * 60:
            stopped = True
            break
        if checkpoint_every > 0 and trainer.step % checkpoint_every == 0 and trainer.step < settings.steps:
            trainer.save(ckpt_path)
    bar.close()
    trainer.save(ckpt_path)
    result = {"step": trainer.step, "done": trainer.step >= settings.steps, "checkpoint": ckpt_path, "prior": None}
    if result["done"]:
        result["prior"] = trainer.export(os.path.join(out, "prior"))
        print(f"Done: {trainer.step} steps in {trainer.seconds / 60:.1f} min; prior folder {result['prior']}")
    elif stopped:
        print(f"Stopped at step {trainer.step}/{settings.steps} (--time_limit_min); continue with --resume")
    return result


def export_checkpoint(out: str, folder: str) -> str:
    """Write the loadable prior folder from OUT/checkpoint.pth's EMA weights."""
    payload = read_checkpoint(os.path.join(out, CHECKPOINT))
    settings = TrainSettings(**payload["settings"])
    from sr.pixel_prior import prior_scheduler_config, save_pixel_prior
    unet = build_unet(settings)
    from diffusers.training_utils import EMAModel
    ema = EMAModel(unet.parameters(), decay=settings.ema_decay)
    ema.load_state_dict(payload["ema"])
    ema.copy_to(unet.parameters())
    info = {"scale": SCALE, "unshuffle": 2, "residual_scale": float(payload["residual_scale"]),
            "base": settings.base, "training": {"steps": int(payload["step"]), "seconds": round(float(payload["seconds"]), 1),
                         "parameters": sum(p.numel() for p in unet.parameters()), "settings": payload["settings"],
                         "data": payload["data"], "ema_weights": True, "loss_avg": payload["loss_avg"]}}
    return save_pixel_prior(folder, unet, prior_scheduler_config(), info, dtype=torch.float16)


# ---- evaluation -----------------------------------------------------------------------------------
def sample_prior(sr, lr: torch.Tensor, steps: int, eta: float, seed: int) -> torch.Tensor:
    """Plain DDIM sampling of the prior through the DiffusionSR interface: HR [B, 3, 4h, 4w] in [0, 1]."""
    from sr.latents import ViewLatents
    g = torch.Generator().manual_seed(seed)
    lat = ViewLatents.create(sr, lr, steps, g)
    while not lat.done:
        t, t_prev = lat.current()
        x0, eps = sr.predict(lat.latents, t, lr, lat.cond_noise)
        lat.advance(sr.step(x0, eps, t, t_prev, eta, g))
    return sr.decode(lat.latents, lr)


def evaluate_prior(folder: str, photos: List[str], *, steps=EVAL_STEPS, etas=(0.0,), seeds=(0, 1),
                   crop: int = 384, max_side: int = 1024, device: str = "cpu", figure: Optional[str] = None,
                   isr: Optional[str] = "realesrgan-x4plus") -> dict:
    """PSNR / LPIPS-alex / LPIPS-vgg of the prior vs PIL bicubic and vs the image SR model `isr` alone (a row
    that says why when its weights are missing; None: no such row) on held-out photos (downscaled to `max_side`
    like the training photos, then centre crops of side `crop`, a multiple of 4; LR made like our datasets').
    Also the PSNR between two seeds' samples. `figure`: a PNG of crops, one row per photo (see crop_figure),
    of the 4-step eta-0 samples of the first seed (else the first run's)."""
    from evaluation import MetricUnavailable
    from evaluation.lpips import load_lpips
    from sr.loading import load_sr_model
    from utils.image_utils import psnr

    if not photos:
        raise ModelNotFoundError("no held-out photos to evaluate on; pass --eval_data or a --data folder whose "
                                 "manifest.json has a heldout split")
    sr = load_sr_model(folder, device)
    lpips_nets, unavailable = {}, {}
    for net in ("alex", "vgg"):
        try:
            lpips_nets[net] = load_lpips(net)
        except MetricUnavailable as exc:
            unavailable[f"lpips_{net}"] = f"unavailable: {exc.reason}"

    def metrics(pred, gt):
        row = {"psnr": round(float(psnr(pred, gt).mean()), 4)}
        for net in ("alex", "vgg"):
            key = f"lpips_{net}"
            row[key] = round(float(lpips_nets[net](pred, gt).mean()), 4) if net in lpips_nets else unavailable[key]
        return row

    hr_list, lr_list, bic_list, names = [], [], [], []
    for p in photos:
        img = load_photo(p, max_side)
        c = min(crop, img.shape[0] - img.shape[0] % 4, img.shape[1] - img.shape[1] % 4)
        y, x = (img.shape[0] - c) // 2, (img.shape[1] - c) // 2
        hr = np.ascontiguousarray(img[y:y + c, x:x + c])
        lr = make_lr(hr)
        hr_list.append(to_tensor(hr[None]))
        lr_list.append(to_tensor(lr[None]))
        bic_list.append(to_tensor(pil_bicubic(lr)[None]))
        names.append(os.path.basename(p))

    def mean_rows(rows):
        out = {}
        for k in rows[0]:
            vals = [r[k] for r in rows]
            out[k] = vals[0] if isinstance(vals[0], str) else round(float(np.mean(vals)), 4)
        return out

    bic_rows = [metrics(b, h) for b, h in zip(bic_list, hr_list)]
    report = {"prior": folder, "photos": names, "crop": crop, "max_side": max_side,
              "lr": "4x4 block means, 8 bit (as images_4)",
              "bicubic_pil": {**mean_rows(bic_rows), "per_photo": bic_rows}, "prior_runs": []}
    if isr:
        from sr.image_sr import load_isr_model
        held = getattr(getattr(sr, "bases", None), "isr", None)  # a prior on this base already holds it
        try:
            model = held if held is not None and held.name == isr and held.dtype == torch.float32 else \
                load_isr_model(isr, device, dtype=torch.float32)
        except ModelNotFoundError as exc:
            report["isr"] = {"name": isr, "unavailable": str(exc)}
        else:
            isr_outs = [model.upscale(lr) for lr in lr_list]
            isr_rows = [metrics(o, h) for o, h in zip(isr_outs, hr_list)]
            report["isr"] = {"name": isr, **mean_rows(isr_rows), "per_photo": isr_rows}
    for eta in etas:
        for n in steps:
            per_seed = []
            for seed in seeds:
                per_seed.append([sample_prior(sr, lr, n, eta, seed) for lr in lr_list])
            rows = [metrics(s, h) for s, h in zip(per_seed[0], hr_list)]
            row = {"steps": n, "eta": eta, "seed": seeds[0], **mean_rows(rows), "per_photo": rows}
            if figure and (not report["prior_runs"] or (n, eta) == (4, 0.0)):
                figure_samples = per_seed[0]
            if len(seeds) > 1:
                row["psnr_between_seeds"] = round(float(np.mean(
                    [float(psnr(a, b).mean()) for a, b in zip(per_seed[0], per_seed[1])])), 4)
            report["prior_runs"].append(row)
    if figure:
        from utils.image_utils import save_image
        columns = [bic_list] + ([isr_outs] if "per_photo" in report.get("isr", {}) else [])
        save_image(figure, crop_figure(*columns, figure_samples, hr_list))
        report["figure"] = figure
    return report


def crop_figure(*columns: List[torch.Tensor], gap: int = 4) -> torch.Tensor:
    """[3, H, W] in [0, 1]: one row per photo, one column per list of [1, 3, h, w] images (e.g. bicubic |
    prior | HR); each cell is the centre crop of a third of the side, shown 2x (nearest) so detail is visible."""
    rows = []
    for cells in zip(*columns):
        tiles = []
        for img in cells:
            h, w = img.shape[-2:]
            ch, cw = max(1, h // 3), max(1, w // 3)
            img = img.detach().float().cpu()
            cut = img[0, :, (h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw].clamp(0, 1)
            tiles.append(cut.repeat_interleave(2, 1).repeat_interleave(2, 2))
            tiles.append(torch.ones(3, tiles[-1].shape[1], gap))
        rows.append(torch.cat(tiles[:-1], 2))
        rows.append(torch.ones(3, gap, rows[-1].shape[2]))
    return torch.cat(rows[:-1], 1)


def format_report(report: dict) -> str:
    """The mean table; the LPIPS columns also say how far below (-) or above (+) bicubic each row is."""
    b = report["bicubic_pil"]

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else "n/a"

    def rel(r, k):
        if not (isinstance(r[k], float) and isinstance(b[k], float) and b[k] > 0):
            return ""
        return f" ({100.0 * (r[k] - b[k]) / b[k]:+.1f}%)"

    lines = [f"{'method':<24} {'PSNR':>8} {'LPIPS-alex':>20} {'LPIPS-vgg':>20} {'PSNR seeds':>11}"]
    lines.append(f"{'PIL bicubic':<24} {cell(b['psnr']):>8} {cell(b['lpips_alex']):>20} {cell(b['lpips_vgg']):>20}")
    isr = report.get("isr")
    if isr and "unavailable" in isr:
        lines.append(f"{isr['name']:<24} unavailable: {isr['unavailable']}")
    elif isr:
        alex, vgg = cell(isr["lpips_alex"]) + rel(isr, "lpips_alex"), cell(isr["lpips_vgg"]) + rel(isr, "lpips_vgg")
        lines.append(f"{isr['name'] + ' alone':<24} {cell(isr['psnr']):>8} {alex:>20} {vgg:>20}")
    for r in report["prior_runs"]:
        name = f"prior {r['steps']} steps eta {r['eta']:g}"
        alex, vgg = cell(r["lpips_alex"]) + rel(r, "lpips_alex"), cell(r["lpips_vgg"]) + rel(r, "lpips_vgg")
        lines.append(f"{name:<24} {cell(r['psnr']):>8} {alex:>20} {vgg:>20} "
                     f"{cell(r.get('psnr_between_seeds')):>11}")
    for k in ("lpips_alex", "lpips_vgg"):
        if isinstance(b[k], str):
            lines.append(f"{k}: {b[k]}")
    return "\n".join(lines)


# ---- CLI ------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(description="Train / export / evaluate the embedded x4 diffusion SR prior")
    p.add_argument("--data", default=default_data_dir(), help="photo folder (default: %(default)s)")
    p.add_argument("--out", default="runs/prior", help="run folder: checkpoint.pth, prior/ (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pth")
    p.add_argument("--overwrite", action="store_true", help="discard OUT/checkpoint.pth and start again")
    p.add_argument("--checkpoint_every", type=int, default=250)
    p.add_argument("--time_limit_min", type=float, default=0.0, help="stop (with a checkpoint) after this long")
    p.add_argument("--export", metavar="FOLDER", help="write the loadable prior from OUT/checkpoint.pth and exit")
    p.add_argument("--eval", metavar="PRIOR", nargs="?", const="", default=None,
                   help="evaluate a prior folder (default OUT/prior) on the held-out photos and exit")
    p.add_argument("--eval_data", help="folder of held-out photos (default: --data's heldout split)")
    p.add_argument("--eval_crop", type=int, default=384)
    p.add_argument("--eval_steps", type=int, nargs="+", default=list(EVAL_STEPS))
    p.add_argument("--eval_eta", type=float, nargs="+", default=[0.0])
    p.add_argument("--eval_seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--eval_out", help="write the evaluation as JSON here (default PRIOR/eval.json)")
    p.add_argument("--eval_figure", help="also write a PNG of centre crops: bicubic | image SR alone (if evaluated) | "
                   "prior (4 steps, eta 0) | HR")
    p.add_argument("--eval_isr", default="realesrgan-x4plus",
                   help="image SR model evaluated alone beside bicubic ('' for none) (default: %(default)s)")
    p.add_argument("--quiet", action="store_true")
    defaults = TrainSettings()
    for f in dataclasses.fields(TrainSettings):
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            p.add_argument(f"--{f.name}", action="store_true")
        elif isinstance(value, list):
            p.add_argument(f"--{f.name}", type=int, nargs="+", default=value)
        else:
            p.add_argument(f"--{f.name}", type=type(value), default=value)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.export:
        folder = export_checkpoint(args.out, args.export)
        print(f"Exported {folder}")
        return 0
    if args.eval is not None:
        folder = args.eval or os.path.join(args.out, "prior")
        photos = (list_photos(args.eval_data, None) if args.eval_data else list_photos(args.data, "heldout"))
        report = evaluate_prior(folder, photos, steps=args.eval_steps, etas=args.eval_eta, seeds=args.eval_seeds,
                                crop=args.eval_crop, max_side=args.max_side,
                                device="cuda" if args.device == "cuda" else "cpu", figure=args.eval_figure,
                                isr=args.eval_isr or None)
        out = args.eval_out or os.path.join(folder, "eval.json")
        with atomic_write(out, "w") as f:
            json.dump(report, f, indent=2)
        print(format_report(report))
        print(f"written {out}")
        return 0
    settings = TrainSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)})
    train(settings, args.data, args.out, device=args.device, resume=args.resume, overwrite=args.overwrite,
          checkpoint_every=args.checkpoint_every, time_limit_min=args.time_limit_min, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
