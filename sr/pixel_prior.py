"""Our own small x4 diffusion prior: pixel-space residual diffusion over a deterministic base upsample.

The network sees the HR residual and the base image, never a latent autoencoder, so it is small
(~6 M parameters), trains on CPU in hours and runs anywhere. In DiffusionSR terms:

    base(L)     = the x`scale` base image of the LR images L in [0, 1]: the bicubic upsample ("bicubic",
                  format 1) or an image SR model's output ("realesrgan-x4plus", prior v2), per prior_config
    latent      = (HR - base(L)) / residual_scale           float32 [B, 3, s*h, s*w]
    decode(x0)  = clamp(base(L) + residual_scale * x0, 0, 1)
    encode(R)   = (R - base(L)) / residual_scale             (exact inverse of decode for R in [0, 1])

so decode and encode need the LR images: the loop passes them as `lr_images`. `residual_scale` is a
stored constant (the training photos' residual standard deviation) that makes the diffused signal
unit-ish variance, as the DDPM noise schedule assumes. With an image-SR base the diffusion only corrects
and varies a strong deterministic proposal; that base is computed once per distinct LR view (content
hash) and kept in fp16 on the CPU for the model's lifetime, as training stored it (`BaseImages`).

The denoiser (`ResidualDenoiser`): [x_t, 2 base(L) - 1] (6 channels) -> pixel-unshuffle(2) -> diffusers
UNet2DModel (24 -> 12 channels) -> pixel-shuffle(2) -> the v-prediction (Salimans & Ho 2022,
"Progressive Distillation") at HR. Schedule: cosine ("squaredcos_cap_v2", Nichol & Dhariwal 2021),
sampled with our DDIM step and "trailing" timestep spacing, so 4 steps start at t = T-1.

Folder layout (written by `save_pixel_prior`, read by `PixelPriorSR.from_folder` via load_sr_model):
    model_index.json    {"_class_name": "ThreeDSRPixelPrior", "unet": [...], "scheduler": [...]}
    unet/               diffusers UNet2DModel.save_pretrained (config.json + safetensors)
    scheduler/          diffusers DDIMScheduler config (schedule, prediction type, spacing)
    prior_config.json   residual_scale, scale, unshuffle, base, training info (data, steps, seed, time)
"""
import hashlib
import json
import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sr.base import DiffusionSR
from sr.loading import first_line
from sr.sampler import TIMESTEP_SPACINGS
from utils.errors import ModelNotFoundError
from utils.system_utils import atomic_write, default_file_mode

PIPELINE_CLASS = "ThreeDSRPixelPrior"
PRIOR_CONFIG = "prior_config.json"
FORMAT_VERSION = 2  # 2: the "base" key (absent = bicubic, what format 1 means)
BICUBIC = "bicubic"
# load_sr_model passes sr_refine's SR flags to every adapter; these mean nothing here (no prompt, no LR
# noise augmentation, no VAE) and are accepted only at their neutral values (see from_folder).
OPTIONS = ("timestep_spacing", "sr_batch")
IGNORED_OPTIONS = ("noise_level", "vae_tiling")


def bicubic_base(lr_images: torch.Tensor, scale: int) -> torch.Tensor:
    """[B, 3, h, w] in [0, 1] -> bicubic x`scale` upsample [B, 3, s*h, s*w], clamped to [0, 1], float32.

    PyTorch's bicubic (a = -0.75, align_corners=False); training and sampling both use this function.
    """
    return F.interpolate(lr_images.float(), scale_factor=int(scale), mode="bicubic",
                         align_corners=False).clamp(0.0, 1.0)


def base_names() -> tuple:
    """What a prior's base image may be: "bicubic" or an image SR model's short name (sr.image_sr)."""
    from sr.image_sr import ISR_MODELS
    return (BICUBIC,) + tuple(ISR_MODELS)


def store_base(base: torch.Tensor) -> torch.Tensor:
    """How bases are kept, in training and sampling alike: fp16 on the CPU (half the memory; the residual
    is measured against exactly these values on both sides)."""
    return base.detach().to("cpu", torch.float16)


class BaseImages:
    """base(L) per view: the bicubic upsample (cheap, recomputed every call) or an image SR model's output,
    computed once per distinct LR image and cached (the loop asks for the same views every step)."""

    def __init__(self, scale: int, isr=None):
        self.scale, self.isr = int(scale), isr
        self.cache = {}

    @property
    def name(self) -> str:
        return BICUBIC if self.isr is None else self.isr.name

    @staticmethod
    def key(lr: torch.Tensor) -> str:
        arr = lr.detach().to("cpu", torch.float32).contiguous().numpy()
        return hashlib.sha1(arr.tobytes() + repr(arr.shape).encode()).hexdigest()

    def __call__(self, lr_images: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] in [0, 1] -> float32 [B, 3, s*h, s*w] in [0, 1] on lr_images' device."""
        if self.isr is None:
            return bicubic_base(lr_images, self.scale)
        out = []
        for lr in lr_images:  # per view: the loop batches views differently from call to call
            k = self.key(lr)
            if k not in self.cache:
                self.cache[k] = store_base(self.isr.upscale(lr[None].float()))
            out.append(self.cache[k].to(lr_images.device, torch.float32))
        return torch.cat(out)


def tiny_unet_config(unshuffle: int = 2, block_out_channels=(64, 128, 128), layers_per_block: int = 2,
                     norm_num_groups: int = 32) -> dict:
    """UNet2DModel keyword arguments for the denoiser: 6 image channels in (x_t + condition), 3 out, both
    pixel-unshuffled by `unshuffle`; plain ResNet blocks (no attention)."""
    n = len(block_out_channels)
    return dict(in_channels=6 * unshuffle ** 2, out_channels=3 * unshuffle ** 2,
                block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
                norm_num_groups=norm_num_groups)


def prior_scheduler_config(num_train_timesteps: int = 1000) -> dict:
    """DDIMScheduler config of the prior: cosine schedule, v-prediction, trailing spacing, no clipping
    (the residual is not bounded to [-1, 1]), ᾱ = 1 after the last step."""
    return dict(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False,
                set_alpha_to_one=True, steps_offset=0)


class ResidualDenoiser(nn.Module):
    """pixel-unshuffle -> UNet2DModel -> pixel-shuffle, with reflect padding to the UNet's multiple.

    forward(x_t [B, 3, H, W], base [B, 3, H, W] in [0, 1], t) -> v-prediction [B, 3, H, W].
    Any H, W work: they are padded up to a multiple of unshuffle * 2^(levels-1) and cropped back.
    """

    def __init__(self, unet, unshuffle: int = 2):
        super().__init__()
        self.unet = unet
        self.unshuffle = int(unshuffle)
        cfg = unet.config
        if int(cfg.in_channels) != 6 * self.unshuffle ** 2 or int(cfg.out_channels) != 3 * self.unshuffle ** 2:
            raise ModelNotFoundError(
                f"the prior's UNet takes {cfg.in_channels} -> {cfg.out_channels} channels, expected "
                f"{6 * self.unshuffle ** 2} -> {3 * self.unshuffle ** 2} for pixel-unshuffle {self.unshuffle}; "
                "the folder does not match its prior_config.json")
        self.multiple = self.unshuffle * 2 ** (len(cfg.block_out_channels) - 1)

    def forward(self, x_t, base, t):
        h, w = x_t.shape[-2:]
        x = torch.cat([x_t, base * 2.0 - 1.0], dim=1)
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        x = F.pixel_unshuffle(x, self.unshuffle)
        if not torch.is_tensor(t):
            t = torch.tensor([int(t)], device=x.device)
        out = self.unet(x, t.to(x.device).expand(x.shape[0]), return_dict=False)[0]
        return F.pixel_shuffle(out, self.unshuffle)[..., :h, :w]


def save_pixel_prior(folder: str, unet, scheduler_config: dict, prior_config: dict,
                     dtype: Optional[torch.dtype] = None) -> str:
    """Write a loadable prior folder (layout in the module docstring); returns `folder`.

    dtype: cast the saved UNet weights (torch.float16 halves the size; the loader casts back).
    The JSON files are written atomically; unet/ by diffusers' save_pretrained.
    """
    from diffusers import DDIMScheduler, UNet2DModel

    os.makedirs(folder, exist_ok=True)
    to_save = unet
    if dtype is not None and unet.dtype != dtype:
        to_save = UNet2DModel.from_config(unet.config)
        to_save.load_state_dict(unet.state_dict())
        for p in to_save.parameters():  # cast in place (ModelMixin.to warns about casts)
            p.data = p.data.to(dtype)
    to_save.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    for name in os.listdir(os.path.join(folder, "unet")):  # save_pretrained leaves the weights 0600
        os.chmod(os.path.join(folder, "unet", name), default_file_mode())
    DDIMScheduler.from_config(scheduler_config).save_pretrained(os.path.join(folder, "scheduler"))
    import diffusers
    index = {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"]}
    payload = dict(prior_config)
    payload.setdefault("format_version", FORMAT_VERSION)
    for name, obj in (("model_index.json", index), (PRIOR_CONFIG, payload)):
        with atomic_write(os.path.join(folder, name), "w") as f:
            json.dump(obj, f, indent=2)
    return folder


def _read_prior_config(folder: str) -> dict:
    path = os.path.join(folder, PRIOR_CONFIG)
    try:
        with open(path) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise ModelNotFoundError(f"SR model folder '{folder}' is a {PIPELINE_CLASS} without {PRIOR_CONFIG}; "
                                 "re-export it with tools/train_sr_prior.py --export") from None
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read {path}: {first_line(exc)}") from None
    missing = [k for k in ("residual_scale", "scale") if k not in cfg]
    if missing:
        raise ModelNotFoundError(f"{path} lacks {', '.join(missing)}; re-export the prior with "
                                 "tools/train_sr_prior.py --export")
    if int(cfg.get("format_version", 1)) > FORMAT_VERSION:
        raise ModelNotFoundError(f"{path} has format version {cfg['format_version']}, newer than this code "
                                 f"reads ({FORMAT_VERSION}); update the repository")
    cfg.setdefault("base", BICUBIC)
    if cfg["base"] not in base_names():
        raise ModelNotFoundError(f"{path}: unknown base '{cfg['base']}' (known: {', '.join(base_names())}); "
                                 "update the repository or re-export the prior")
    return cfg


class PixelPriorSR(DiffusionSR):
    """The embedded x4 pixel-space residual prior behind the DiffusionSR interface.

    Options: timestep_spacing ("trailing" default), sr_batch (views per network call).
    decode/encode need `lr_images` (the residual is relative to their base image).
    isr: the image SR model giving the base when prior_config["base"] names one (from_folder loads it).
    """

    def __init__(self, unet, scheduler, prior_config: dict, *, name: str = "", device="cpu",
                 dtype=torch.float32, sr_batch: int = 1, timestep_spacing: str = "trailing", isr=None):
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unknown timestep spacing '{timestep_spacing}'; "
                             f"use one of {', '.join(TIMESTEP_SPACINGS)}")
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.prior_config = dict(prior_config)
        self.scale = int(prior_config["scale"])
        self.residual_scale = float(prior_config["residual_scale"])
        if self.residual_scale <= 0:
            raise ModelNotFoundError(f"SR model '{name}': residual_scale must be positive, got {self.residual_scale}")
        self.net = ResidualDenoiser(unet, int(prior_config.get("unshuffle", 2)))
        if unet.dtype != dtype:
            self.net = self.net.to(dtype=dtype)
        self.net = self.net.to(self.device).eval().requires_grad_(False)
        self.sr_batch = max(1, int(sr_batch))
        self.timestep_spacing = timestep_spacing
        base = prior_config.get("base", BICUBIC)
        if (base == BICUBIC) != (isr is None):
            raise ValueError(f"prior base '{base}' needs {'no' if base == BICUBIC else 'an'} image SR model")
        self.bases = BaseImages(self.scale, isr)
        cfg = scheduler.config
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().to("cpu", torch.float32)
        self.final_alpha_cumprod = 1.0 if cfg.get("set_alpha_to_one", True) else float(self.alphas_cumprod[0])
        self.prediction_type = cfg.get("prediction_type", "v_prediction")
        self.steps_offset = int(cfg.get("steps_offset", 0))
        self.clip_sample_range = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample", False) else None

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str, device="cpu", dtype=torch.float32, *, name: Optional[str] = None,
                    prompt: str = "", negative_prompt: str = "", guidance_scale: float = 1.0,
                    **opts) -> "PixelPriorSR":
        """Load a prior folder written by `save_pixel_prior` (what load_sr_model calls)."""
        from diffusers import DDIMScheduler, UNet2DModel
        from diffusers.utils import is_accelerate_available

        name = name or folder
        unknown = sorted(set(opts) - set(OPTIONS) - set(IGNORED_OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) for {PIPELINE_CLASS} models: {', '.join(unknown)} "
                             f"(known: {', '.join(OPTIONS)})")
        if prompt or negative_prompt:
            raise ModelNotFoundError(f"SR model '{name}' is not text-conditioned; drop --prompt")
        if float(guidance_scale) != 1.0:
            raise ModelNotFoundError(f"SR model '{name}' has no classifier-free guidance; use --guidance_scale 1")
        prior_config = _read_prior_config(folder)

        def load(what, fn):
            try:
                return fn()
            except (OSError, ValueError, KeyError) as exc:
                raise ModelNotFoundError(f"cannot load the {what} from SR model folder '{folder}' "
                                         f"({first_line(exc)}); is the folder complete?") from None
        with torch.device("cpu"):  # built on the CPU explicitly, moved to `device` in __init__
            unet = load("unet", lambda: UNet2DModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype,
                                                                    local_files_only=True,
                                                                    low_cpu_mem_usage=is_accelerate_available()))
            sched_cfg = dict(load("scheduler", lambda: DDIMScheduler.load_config(folder, subfolder="scheduler",
                                                                                 local_files_only=True)))
            sched_cfg.setdefault("clip_sample", False)
            scheduler = load("scheduler", lambda: DDIMScheduler.from_config(sched_cfg))
        kept = {k: v for k, v in opts.items() if k in OPTIONS}
        isr = None
        if prior_config["base"] != BICUBIC:  # prior v2: the image SR model's weights come from their cache
            from sr.image_sr import load_isr_model
            isr = load_isr_model(prior_config["base"], device)
            if int(isr.scale) != int(prior_config["scale"]):
                raise ModelNotFoundError(f"SR model '{name}': its base '{prior_config['base']}' upscales "
                                         f"x{isr.scale}, the prior x{prior_config['scale']}")
        return cls(unet, scheduler, prior_config, name=name, device=device, dtype=dtype, isr=isr, **kept)

    # ---- the residual parameterisation --------------------------------------------------------
    def _base(self, lr_images: Optional[torch.Tensor], what: str) -> torch.Tensor:
        if lr_images is None:
            raise ValueError(f"{PIPELINE_CLASS} {what} relative to the {self.bases.name} base of the LR images: "
                             f"pass lr_images=[B, 3, h, w]")
        return self.bases(lr_images.to(self.device))

    def _check_pair(self, hr: torch.Tensor, lr_images: torch.Tensor, what: str):
        if lr_images is not None and (hr.shape[0] != lr_images.shape[0]
                                      or tuple(hr.shape[-2:]) != (lr_images.shape[-2] * self.scale,
                                                                  lr_images.shape[-1] * self.scale)):
            raise ValueError(f"{what} {list(hr.shape)} do not match LR images {list(lr_images.shape)} "
                             f"at x{self.scale}")

    # ---- DiffusionSR ------------------------------------------------------------------------
    def latent_shape(self, lr_shape):
        b, c, h, w = lr_shape
        if c != 3:
            raise ValueError(f"LR images must be [B, 3, h, w], got {list(lr_shape)}")
        return (b, 3, h * self.scale, w * self.scale)

    @torch.no_grad()
    def model_output(self, x_t, t, lr_images, cond_noise=None):
        self._check_pair(x_t, lr_images, "latents")
        t = int(t)
        self.alpha_bar(t)  # validates the range
        timestep = torch.tensor([t], dtype=torch.long, device=self.device)
        outs = []
        for sl in self._chunks(x_t.shape[0]):
            base = self._base(lr_images[sl], "predicts")
            out = self.net(x_t[sl].to(self.device, self.dtype), base.to(self.dtype), timestep)
            outs.append(out.float())
        return torch.cat(outs)

    @torch.no_grad()
    def decode(self, x0, lr_images=None):
        """Latents [B, 3, H, W] -> HR images clamp(base(L) + residual_scale * x0, 0, 1), float32."""
        self._check_pair(x0, lr_images, "latents")
        base = self._base(lr_images, "decodes")
        return (base + x0.to(self.device, torch.float32) * self.residual_scale).clamp(0.0, 1.0)

    @torch.no_grad()
    def encode(self, images, lr_images=None):
        """HR images [B, 3, H, W] in [0, 1] -> (images - base(L)) / residual_scale, float32."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images to encode must be [B, 3, H, W], got {list(images.shape)}")
        self._check_pair(images, lr_images, "images")
        base = self._base(lr_images, "encodes")
        return (images.to(self.device, torch.float32) - base) / self.residual_scale
