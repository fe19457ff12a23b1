"""`StableSRTurbo`: StableSR-Turbo behind the DiffusionSR interface (sr.base), for `sr_refine.py
--sr_model stablesr-turbo --sr_weights DIR`.

StableSR works at the output size: the LR views are bicubic-upsampled x`scale`, padded (replicate) to a
multiple of 64 pixels (latent multiple of 8, what the UNet's three downsamplings need), encoded by the SD
VAE, and that LR latent conditions the UNet through the structure encoder. Per view:
  x_T  = sqrt(abar_999) z_lr + sqrt(1 - abar_999) n      (StableSR starts from the noised LR latent)
  eps  = UNet(x_t, t, empty prompt, struct(z_lr', t))     tiled (tile/overlap flags) when larger than a tile
  H    = CFW-decode(x0, LR features, w = dec_w) + wavelet colour fix to the LR image, cropped, in [0, 1]
  z    = SD-VAE posterior mean of the renders (deterministic)
z_lr' is the LR latent with the view's own posterior-noise draw (`init_cond_noise`), fixed for the run.
The views' SD-VAE posterior moments of the upsampled LR images are computed once per set of views
(cached by identity and content of the LR tensor), so every step only draws z_lr' from them: the
structure condition costs no encoder pass after the first step, and results are those of re-encoding
(also with --published_update, whose fresh LR-latent sample per step is a fresh draw from the same moments).
Steps are our DDIM step (sr.sampler) on the respaced timesteps 999, 666, 333, 0. The published 3DSR
loop's own update (DDPM posterior from the stale x_T, fresh encoder noise every step) is available as
`published_step` / `published_update` for reproducing the paper (sr_refine.py --published_update;
tests/test_stablesr.py, part e).
"""
import math
import os
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from sr.base import DiffusionSR
from sr.stablesr.autoencoder import gaussian_sample
from sr.stablesr.colorfix import wavelet_color_fix
from sr.stablesr.config import StableSRConfig
from sr.stablesr.model import CONTEXT_FILE, StableSRModel, build_from_state_dicts, find_weight_files
from sr.stablesr.vae_tiling import check_tiling, tiled_decode, tiled_encode
from utils.errors import ModelNotFoundError

SHORT_NAME = "stablesr-turbo"
COLORFIX = ("wavelet", "none")
OPTIONS = ("scale", "dec_w", "colorfix", "tile_size", "tile_overlap", "tile_batch", "sr_batch", "vae_tile",
           "vae_tile_overlap")
_PAD = 64  # pixels: the UNet downsamples the latent (1/8) three times
# The context width of the SD-2.1 (OpenCLIP ViT-H) text encoder: its embedding is fetched from the Hub
# only for models of that width (the released one; not the tiny test model).
AUTO_TEXT_ENCODER_WIDTH = 1024


class StableSRTurbo(DiffusionSR):
    """Options: scale (LR -> HR factor, 4), dec_w (CFW fusion weight w in [0, 1], 0.5 as 3DSR),
    colorfix ("wavelet" | "none"), tile_size / tile_overlap (latent pixels, 64 / 32 as released; a latent
    smaller than a tile runs untiled), tile_batch (tiles per UNet call), sr_batch (views per call),
    vae_tile / vae_tile_overlap (pixels, multiples of 8; 0 = whole images): tiled VAE encode and CFW decode
    for a memory bound at large outputs (sr.stablesr.vae_tiling)."""

    prediction_type = "epsilon"
    timestep_spacing = "linspace"  # 4 steps: 999, 666, 333, 0 (the respaced StableSR-Turbo steps)

    def __init__(self, model: StableSRModel, *, name: str = SHORT_NAME, device="cpu", dtype=torch.float32,
                 scale: int = 4, dec_w: float = 0.5, colorfix: str = "wavelet", tile_size: int = 64,
                 tile_overlap: int = 32, tile_batch: int = 4, sr_batch: int = 1, vae_tile: int = 0,
                 vae_tile_overlap: int = 64):
        if colorfix not in COLORFIX:
            raise ValueError(f"unknown colour fix '{colorfix}'; use one of {', '.join(COLORFIX)}")
        if not 0.0 <= float(dec_w) <= 1.0:
            raise ValueError(f"--dec_w must be in [0, 1], got {dec_w}")
        if not 0 <= int(tile_overlap) < int(tile_size):
            raise ValueError(f"--tile_overlap must be in [0, tile_size), got {tile_overlap} with tile {tile_size}")
        self.name, self.scale = name, int(scale)
        self.device, self.dtype = torch.device(device), dtype
        self.model = model.to(self.device)
        # UNet + structure encoder in the compute dtype; both autoencoders stay fp32 (fp16 VAEs overflow)
        self.model.unet.to(dtype)
        self.model.struct.to(dtype)
        self.dec_w, self.colorfix = float(dec_w), colorfix
        self.tile_size, self.tile_overlap, self.tile_batch = int(tile_size), int(tile_overlap), int(tile_batch)
        self.sr_batch = max(1, int(sr_batch))
        check_tiling(int(vae_tile), int(vae_tile_overlap) if vae_tile else 0)
        self.vae_tile, self.vae_tile_overlap = int(vae_tile), int(vae_tile_overlap)
        self.alphas_cumprod = model.schedule.alphas_cumprod_1000.clone()
        self.final_alpha_cumprod = 1.0
        self._views = None  # _ViewCache of the current LR views

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str, device="cpu", dtype=torch.float32, *, name: Optional[str] = None,
                    prompt: str = "", text_encoder: str = "", cache_dir: Optional[str] = None,
                    offline: Optional[bool] = None, **opts) -> "StableSRTurbo":
        """text_encoder: a diffusers SD-2.x folder to compute the empty-prompt embedding from when the
        weights folder has none cached (sr.stablesr.text); the result is cached there. Without it, the
        SD-2.1-base text encoder is taken from the Hugging Face cache (`cache_dir`), downloaded there
        unless downloads are off (`offline`, HF_HUB_OFFLINE; see sr.hub); off and not cached, a zero
        embedding is used with a note. The networks are built on `device` explicitly."""
        from sr.stablesr.convert import read_checkpoint
        unknown = sorted(set(opts) - set(OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) for {SHORT_NAME}: {', '.join(unknown)} (known: {', '.join(OPTIONS)})")
        if prompt:
            raise ModelNotFoundError(f"{SHORT_NAME} runs with the empty prompt only; drop --prompt")
        sd_path, cfw_path = find_weight_files(folder)
        cfg = StableSRConfig.for_folder(folder)
        # the checkpoints first: a broken download fails before any text encoder is fetched
        model = build_from_state_dicts(read_checkpoint(sd_path), read_checkpoint(cfw_path), cfg, None,
                                       sources=(sd_path, cfw_path), device=device)
        context = None
        if not os.path.isfile(os.path.join(folder, CONTEXT_FILE)):
            source = text_encoder
            if not source and cfg.unet.context_dim == AUTO_TEXT_ENCODER_WIDTH:
                from sr.hub import fetch_text_encoder
                source = fetch_text_encoder(cache_dir, offline)
            if source:
                from sr.stablesr.text import cache_empty_prompt_embedding
                context = cache_empty_prompt_embedding(folder, source, cfg.context_tokens, cfg.unet.context_dim,
                                                       CONTEXT_FILE)
        if context is None:
            context = load_empty_prompt_context(folder, cfg)
        if context is not None:
            model.set_context(context)
        return cls(model, name=name or SHORT_NAME, device=device, dtype=dtype, **opts)

    # ---- geometry ---------------------------------------------------------------------------
    def _hr_size(self, lr_shape):
        return int(lr_shape[-2]) * self.scale, int(lr_shape[-1]) * self.scale

    def latent_shape(self, lr_shape):
        b, c, h, w = lr_shape
        if c != 3:
            raise ValueError(f"LR images must be [B, 3, h, w], got {list(lr_shape)}")
        H, W = self._hr_size(lr_shape)
        return (b, 4, math.ceil(H / _PAD) * _PAD // 8, math.ceil(W / _PAD) * _PAD // 8)

    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        H, W = images.shape[-2:]
        ph, pw = (-H) % _PAD, (-W) % _PAD
        return F.pad(images, (0, pw, 0, ph), mode="replicate") if (ph or pw) else images

    def upsampled_lr(self, lr_images: torch.Tensor) -> torch.Tensor:
        """LR [B, 3, h, w] in [0, 1] -> bicubic x scale, padded, in [-1, 1], float32 on `device`."""
        up = F.interpolate(lr_images.to(self.device, torch.float32), size=self._hr_size(lr_images.shape),
                           mode="bicubic", align_corners=False).clamp(0.0, 1.0)
        return self._pad(up * 2.0 - 1.0)

    def set_guidance(self, lr_images: torch.Tensor):
        """The LR views whose features guide `decode` (CFW) and its colour fix; `predict` sets it too.
        The views' upsampled images (and, once `predict` needs them, their SD-VAE moments) are kept until
        other views come: the same tensor, unmodified, or one of equal content."""
        views = self._views
        if views is None or not views.matches(lr_images):
            self._views = _ViewCache(lr_images, self.upsampled_lr(lr_images))

    def _guide(self, n: int) -> torch.Tensor:
        if self._views is None or self._views.up.shape[0] != n:
            raise ValueError(f"{SHORT_NAME} decodes with the LR views as guidance: call sr.set_guidance(lr_images) "
                             f"(or predict) with the same {n} views first")
        return self._views.up

    # ---- latents ----------------------------------------------------------------------------
    @torch.no_grad()
    def _moments(self, images: torch.Tensor) -> torch.Tensor:
        """SD-VAE posterior moments [B, 8, H/8, W/8] (float32) of images in [-1, 1] (padded size), on pixel
        tiles when `vae_tile` is set."""
        images = images.to(self.device, torch.float32)
        if self.vae_tile:
            return tiled_encode(self.model.encode_moments, images, self.vae_tile, self.vae_tile_overlap)
        return self.model.encode_moments(images)

    def _latent(self, moments: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """scale_factor x the posterior mean (noise None) or sample with `noise`."""
        if noise is None:
            return self.model.config.scale_factor * moments.chunk(2, dim=1)[0]
        return self.model.config.scale_factor * gaussian_sample(moments, noise.to(self.device))

    @torch.no_grad()
    def _encode(self, images: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """scale_factor x the SD-VAE posterior mean (noise None) or sample of images in [-1, 1] (padded
        size), on pixel tiles when `vae_tile` is set."""
        return self._latent(self._moments(images), noise)

    def lr_moments(self, lr_images: torch.Tensor) -> List[Tuple[slice, torch.Tensor]]:
        """[(views, their SD-VAE moments)] per chunk of `sr_batch` views, of the upsampled LR images:
        encoded once per set of views (again only if `sr_batch` changes) and cached; the structure
        condition of every step is drawn from them. Kept per chunk as the encoder returned them (its
        memory format included), so the numbers are those of encoding at every step, to the last bit."""
        self.set_guidance(lr_images)
        views = self._views
        chunks = list(self._chunks(views.up.shape[0]))
        if views.moments is None or [sl for sl, _ in views.moments] != chunks:
            views.moments = None  # free the old ones first
            views.moments = [(sl, self._moments(views.up[sl])) for sl in chunks]
        return views.moments

    def init_cond_noise(self, lr_images, generator=None):
        """Each view's posterior noise for its LR latent (the structure condition), drawn once."""
        return self._randn(self.latent_shape(tuple(lr_images.shape)), generator)

    def init_latents(self, lr_images, generator=None):
        """x_T = q_sample(LR latent, n) at t = 999 (posterior sample of the LR latent, then n; both drawn
        from `generator`), float32 [B, 4, H/8, W/8]."""
        shape = self.latent_shape(tuple(lr_images.shape))
        enc_noise, noise = self._randn(shape, generator), self._randn(shape, generator)
        return self.start_latents(lr_images, enc_noise, noise)

    def start_latents(self, lr_images, enc_noise: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_T = q_sample(posterior sample of the LR latent with `enc_noise`, `noise`) at t = 999."""
        z = torch.cat([self._latent(m, enc_noise[sl]) for sl, m in self.lr_moments(lr_images)])
        return self.model.schedule.q_sample_start(z, noise.to(self.device))

    def _randn(self, shape, generator):
        gen_device = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(self.device)

    # ---- DiffusionSR ------------------------------------------------------------------------
    @torch.no_grad()
    def model_output(self, x_t, t, lr_images, cond_noise=None):
        t = int(t)
        self.alpha_bar(t)
        if tuple(x_t.shape) != self.latent_shape(tuple(lr_images.shape)):
            raise ValueError(f"latents {list(x_t.shape)} do not match LR images {list(lr_images.shape)}")
        outs = []
        for sl, moments in self.lr_moments(lr_images):
            z_lr = self._latent(moments, None if cond_noise is None else cond_noise[sl])
            outs.append(self.eps(x_t[sl], t, z_lr))
        return torch.cat(outs)

    def eps(self, x_t: torch.Tensor, t: int, z_lr: torch.Tensor) -> torch.Tensor:
        """UNet noise estimate at original timestep t (tiled when the latent exceeds a tile), float32."""
        x = x_t.to(self.device, self.dtype)
        s = z_lr.to(self.device, self.dtype)
        return self.model.eps_tiled(x, t, s, self.tile_size, self.tile_overlap, self.tile_batch).float()

    @torch.no_grad()
    def decode_signed(self, x0: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """CFW decode (w = dec_w) + colour fix, padded size, in ~[-1, 1] (no clamp)."""
        out = []
        for sl in self._chunks(x0.shape[0]):
            g = guide[sl].to(self.device, torch.float32)
            z = x0[sl].to(self.device, torch.float32)
            if self.vae_tile:
                dec = tiled_decode(lambda zt, gt: self.model.decode(zt, gt, self.dec_w), z, g, self.vae_tile,
                                   self.vae_tile_overlap)
            else:
                dec = self.model.decode(z, g, self.dec_w)
            out.append(wavelet_color_fix(dec, g) if self.colorfix == "wavelet" else dec)
        return torch.cat(out)

    def decode(self, x0, lr_images=None):
        """Latents -> HR images [B, 3, scale*h, scale*w] in [0, 1]; the LR views guide the CFW decoder and
        the colour fix (pass them, or call `set_guidance`/`predict` with them first)."""
        if lr_images is not None:
            self.set_guidance(lr_images)
        H, W = self._hr_size(self._views.lr_shape) if self._views is not None else x0.shape[-2:]
        img = self.decode_signed(x0, self._guide(x0.shape[0]))
        return ((img[..., :H, :W] + 1.0) * 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def encode(self, images, lr_images=None):
        """HR images [B, 3, H, W] in [0, 1] (H, W = scale x LR) -> posterior mean x 0.18215, float32."""
        out = []
        for sl in self._chunks(images.shape[0]):
            x = self._pad(images[sl].to(self.device, torch.float32) * 2.0 - 1.0)
            out.append(self._encode(x))
        return torch.cat(out)

    # ---- the published 3DSR loop's update (compatibility) -------------------------------------
    @property
    def published_num_steps(self) -> int:
        """Denoising steps of the published update (the model's respaced schedule: 4)."""
        return self.model.schedule.num_steps

    @torch.no_grad()
    def published_step(self, render_signed: torch.Tensor, x_start: torch.Tensor, k: int,
                       enc_noise: torch.Tensor, post_noise: Optional[torch.Tensor]) -> torch.Tensor:
        """3DSR `train_proposed`: x = coef1[k] E(render) + coef2[k] x_T + sigma_k n, with E a posterior
        *sample* of the render ([-1, 1], padded size) and x_T the start latent of step 0 (stale), k the
        respaced index being left (3, 2, 1)."""
        z = self._encode(render_signed, enc_noise)
        return self.model.schedule.posterior(z, x_start.to(self.device), k, post_noise)

    def published_update(self, renders: torch.Tensor, x_start: torch.Tensor, t: int, enc_noise: torch.Tensor,
                         post_noise: Optional[torch.Tensor]) -> torch.Tensor:
        """`published_step` for every view leaving original timestep t: renders [B, 3, H, W] in [0, 1] at
        the HR size, x_start the views' x_T, noises float32 of the latents' shape (post_noise unused at
        t = 0). Needs the model's own 4-step schedule (sr_refine.py --steps 4)."""
        ts = self.model.schedule.ori_timesteps.tolist()
        if int(t) not in ts:
            raise ValueError(f"the published update runs on the timesteps {ts[::-1]}, not {int(t)}")
        k = ts.index(int(t))
        out = []
        for sl in self._chunks(renders.shape[0]):
            signed = self._pad(renders[sl].to(self.device, torch.float32) * 2.0 - 1.0)
            out.append(self.published_step(signed, x_start[sl], k, enc_noise[sl],
                                           None if post_noise is None else post_noise[sl]))
        return torch.cat(out)


class _ViewCache:
    """What the adapter keeps of the current LR views: a reference to their tensor (with its in-place
    version), the upsampled padded images in [-1, 1], and their SD-VAE moments once computed."""

    def __init__(self, lr_images: torch.Tensor, up: torch.Tensor):
        self.lr, self.version, self.lr_shape = lr_images, _version(lr_images), tuple(lr_images.shape)
        self.up = up
        self.moments: Optional[List[Tuple[slice, torch.Tensor]]] = None

    def matches(self, lr_images: torch.Tensor) -> bool:
        if _version(self.lr) != self.version:  # changed in place since
            return False
        if lr_images is self.lr:
            return True
        if tuple(lr_images.shape) != self.lr_shape or lr_images.dtype != self.lr.dtype:
            return False
        if not torch.equal(lr_images.to(self.lr.device), self.lr):
            return False
        self.lr, self.version = lr_images, _version(lr_images)  # same content: keep the cache
        return True


def _version(t: torch.Tensor) -> Optional[int]:
    """A tensor's in-place version counter (None for inference-mode tensors, which keep none)."""
    try:
        return t._version
    except RuntimeError:
        return None


def load_empty_prompt_context(folder: str, cfg: StableSRConfig) -> Optional[torch.Tensor]:
    """The empty prompt's text embedding [1, 77, context_dim]: `empty_prompt_embedding.safetensors`
    (key "context") in the weights folder. None if absent (a zero embedding is used, with a note)."""
    path = os.path.join(folder, CONTEXT_FILE)
    if not os.path.isfile(path):
        print(f"[sr] {folder} has no {CONTEXT_FILE}: using a zero empty-prompt embedding (pass --text_encoder "
              "SD21_FOLDER once, or run once with downloads allowed, to compute and cache the real one; see README)")
        return None
    from safetensors.torch import load_file
    try:
        ctx = load_file(path)["context"]
    except Exception as exc:  # noqa: BLE001 - foreign/truncated file: one line
        raise ModelNotFoundError(f"cannot read {path} ({type(exc).__name__}); delete it to use a zero embedding") from None
    want = (cfg.context_tokens, cfg.unet.context_dim)
    if tuple(ctx.shape[-2:]) != want:
        raise ModelNotFoundError(f"{path} holds an embedding of shape {list(ctx.shape)}, expected [1, {want[0]}, "
                                 f"{want[1]}]; delete it or recompute it for this model")
    return ctx.reshape(1, *want)
