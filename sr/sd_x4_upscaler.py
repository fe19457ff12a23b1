"""Adapter for Stable Diffusion x4 upscaler-style models (diffusers' StableDiffusionUpscalePipeline).

The pipeline's components, used as a library (math from the pipeline, not its sampling loop):
  - unet (UNet2DConditionModel, 7 input channels): the 4-channel latent concatenated with the LR image
    in [-1, 1], noise-augmented at `noise_level` by `low_res_scheduler` (a DDPMScheduler); the noise
    level is passed as `class_labels`. The latent has the LR image's size.
  - vae (AutoencoderKL, scaling factor 0.08333): decodes that latent to 4x the LR size.
  - scheduler: its config gives ᾱ_t and the prediction type (v_prediction for the released model);
    our own DDIM step (sr.sampler) replaces its `step`.
  - text_encoder + tokenizer: only to embed the prompt once at load time, then freed.
"""
import json
import os
from typing import Optional

import torch

from sr.base import DiffusionSR
from sr.sampler import TIMESTEP_SPACINGS
from sr.loading import first_line
from utils.errors import ModelNotFoundError

PIPELINE_CLASS = "StableDiffusionUpscalePipeline"
CLIP_MAX_LENGTH = 77  # token sequence length of the CLIP text encoders SD models use
# Keyword options of SDx4Upscaler that load_sr_model passes through (besides prompt, negative_prompt).
OPTIONS = ("guidance_scale", "noise_level", "timestep_spacing", "sr_batch", "vae_tiling")


def _load_component(what: str, folder: str, load):
    """Run a from_pretrained call; a missing or unreadable component becomes one ModelNotFoundError line."""
    try:
        return load()
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"cannot load the {what} from SR model folder '{folder}' "
                                 f"({first_line(exc)}); is the download complete?") from None


def _vae_dtype(dtype, vae_config) -> torch.dtype:
    """fp16 VAEs overflow (diffusers' `force_upcast`): keep the VAE in fp32 then, as the pipeline does."""
    return torch.float32 if (dtype == torch.float16 and vae_config.get("force_upcast", True)) else dtype


def _check_options(noise_level, max_noise_level, timestep_spacing):
    if not 0 <= int(noise_level) <= int(max_noise_level):
        raise ValueError(f"noise_level must be in [0, {max_noise_level}], got {noise_level}")
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"unknown timestep spacing '{timestep_spacing}'; use one of {', '.join(TIMESTEP_SPACINGS)}")


def _to(model, device, dtype):
    """Frozen eval-mode model on device/dtype; casts only when needed (diffusers warns on any dtype cast)."""
    if model.dtype != dtype:
        model = model.to(dtype=dtype)
    return model.to(device).eval().requires_grad_(False)


class SDx4Upscaler(DiffusionSR):
    """Stable Diffusion x4 upscaler behind the DiffusionSR interface (scale 4, v-prediction, 4-ch latents).

    Build with `SDx4Upscaler.from_folder` (what `load_sr_model` calls). Options:
        prompt: text prompt, "" by default (the paper's setting); embedded once at load time.
        negative_prompt: used only with classifier-free guidance.
        guidance_scale: classifier-free guidance weight; 1.0 (default) = off. The pipeline's default is 9,
            but guidance doubles the UNet cost and with an empty prompt the conditional and unconditional
            predictions are identical, so it only matters with a prompt.
        noise_level: LR noise augmentation level in [0, max_noise_level], 20 as in the pipeline.
        timestep_spacing: "trailing" (default: 4 steps start at t=999, the pure-noise end x_T is drawn
            from), "leading" (the released scheduler config's; reproduces diffusers' pipeline), "linspace".
        sr_batch: views per network call (memory bound).
        vae_tiling: decode/encode large images in tiles (diffusers' AutoencoderKL tiling).
    """

    def __init__(self, unet, vae, scheduler, low_res_scheduler, prompt_embeds: torch.Tensor,
                 negative_prompt_embeds: Optional[torch.Tensor] = None, *, name: str = "",
                 device="cpu", dtype=torch.float32, noise_level: int = 20, max_noise_level: int = 350,
                 guidance_scale: float = 1.0, sr_batch: int = 1, timestep_spacing: str = "trailing",
                 vae_tiling: bool = False):
        _check_options(noise_level, max_noise_level, timestep_spacing)
        if int(unet.config.in_channels) != int(vae.config.latent_channels) + 3:
            raise ModelNotFoundError(f"SR model '{name}' is not an x4-upscaler layout: its UNet takes "
                                     f"{unet.config.in_channels} input channels, expected "
                                     f"{vae.config.latent_channels} latent + 3 image")
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        self.vae_dtype = _vae_dtype(dtype, vae.config)
        self.unet = _to(unet, self.device, dtype)
        self.vae = _to(vae, self.device, self.vae_dtype)
        if vae_tiling:
            self.vae.enable_tiling()
        self.scheduler = scheduler
        self.low_res_scheduler = low_res_scheduler
        self.latent_channels = int(vae.config.latent_channels)
        self.vae_scaling_factor = float(vae.config.scaling_factor)
        self.scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.noise_level = int(noise_level)
        self.guidance_scale = float(guidance_scale)
        self.sr_batch = max(1, int(sr_batch))
        self.timestep_spacing = timestep_spacing

        cfg = scheduler.config
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().to("cpu", torch.float32)
        self.final_alpha_cumprod = 1.0 if cfg.get("set_alpha_to_one", True) else float(self.alphas_cumprod[0])
        self.prediction_type = cfg.get("prediction_type", "epsilon")
        self.steps_offset = int(cfg.get("steps_offset", 0))
        if cfg.get("thresholding", False):
            print(f"[sr] note: the scheduler of '{name}' asks for dynamic thresholding; not applied (latent model)")
        self.clip_sample_range = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample", False) else None

        self.prompt_embeds = prompt_embeds.to(self.device, dtype)
        neg = negative_prompt_embeds if negative_prompt_embeds is not None else prompt_embeds
        self.negative_prompt_embeds = neg.to(self.device, dtype)

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str, device="cpu", dtype=torch.float32, *, name: Optional[str] = None,
                    prompt: str = "", negative_prompt: str = "", **opts) -> "SDx4Upscaler":
        """Load the components of a StableDiffusionUpscalePipeline folder (model_index.json + subfolders)."""
        from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
        from diffusers.utils import is_accelerate_available

        unknown = sorted(set(opts) - set(OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) for {PIPELINE_CLASS} models: {', '.join(unknown)} "
                             f"(known: prompt, negative_prompt, {', '.join(OPTIONS)})")
        name = name or folder
        with open(os.path.join(folder, "model_index.json")) as f:
            index = json.load(f)
        max_noise_level = int(index.get("max_noise_level", 350))
        _check_options(opts.get("noise_level", 20), max_noise_level, opts.get("timestep_spacing", "trailing"))
        common = dict(local_files_only=True, low_cpu_mem_usage=is_accelerate_available())
        # Everything is built on the CPU explicitly (whatever torch's default device is) and moved to
        # `device` in __init__; the schedulers' tables stay on the CPU.
        with torch.device("cpu"):
            unet = _load_component("unet", folder, lambda: UNet2DConditionModel.from_pretrained(
                folder, subfolder="unet", torch_dtype=dtype, **common))
            vae_config = _load_component("vae", folder, lambda: AutoencoderKL.load_config(
                folder, subfolder="vae", local_files_only=True))
            vae = _load_component("vae", folder, lambda: AutoencoderKL.from_pretrained(
                folder, subfolder="vae", torch_dtype=_vae_dtype(dtype, vae_config), **common))
            # The DDIM math needs only the schedule's config, whatever scheduler class the folder names.
            # DDIMScheduler defaults clip_sample to True (meant for pixel-space models): clip only if asked.
            scheduler_config = dict(_load_component("scheduler", folder, lambda: DDIMScheduler.load_config(
                folder, subfolder="scheduler", local_files_only=True)))
            scheduler_config.setdefault("clip_sample", False)
            scheduler = _load_component("scheduler", folder, lambda: DDIMScheduler.from_config(scheduler_config))
            low_res = _load_component("low_res_scheduler", folder, lambda: DDPMScheduler.from_pretrained(
                folder, subfolder="low_res_scheduler", local_files_only=True))

            device = torch.device(device)
            guidance = float(opts.get("guidance_scale", 1.0))
            prompts = [prompt] + ([negative_prompt] if guidance > 1.0 else [])
            cross_dim = unet.config.cross_attention_dim
            cross_dim = int(cross_dim if isinstance(cross_dim, int) else cross_dim[0])
            embeds = _embed_prompts(folder, index, prompts, device, dtype, cross_dim, name)
        return cls(unet, vae, scheduler, low_res, embeds[0], embeds[1] if len(embeds) > 1 else None,
                   name=name, device=device, dtype=dtype,
                   max_noise_level=max_noise_level, **opts)

    # ---- DiffusionSR ------------------------------------------------------------------------
    def latent_shape(self, lr_shape):
        b, c, h, w = lr_shape
        if c != 3:
            raise ValueError(f"LR images must be [B, 3, h, w], got {list(lr_shape)}")
        return (b, self.latent_channels, h, w)

    def init_cond_noise(self, lr_images, generator=None):
        """N(0, I) noise [B, 3, h, w] (float32, on `device`) for the LR image's noise augmentation."""
        if self.noise_level == 0:
            return None
        gen_device = generator.device if generator is not None else self.device
        return torch.randn(tuple(lr_images.shape), generator=generator, device=gen_device,
                           dtype=torch.float32).to(self.device)

    def _lr_condition(self, lr_images, cond_noise):
        """LR images in [0, 1] -> the UNet's image input: 2x-1, noised to `noise_level` (float32)."""
        image = lr_images.to(self.device, torch.float32) * 2.0 - 1.0
        if self.noise_level == 0:
            return image
        if cond_noise is None:
            raise ValueError("this SR model noise-augments its LR input: pass "
                             "cond_noise=sr.init_cond_noise(lr_images, generator), drawn once per view")
        level = torch.full((image.shape[0],), self.noise_level, dtype=torch.long, device=self.device)
        return self.low_res_scheduler.add_noise(image, cond_noise.to(self.device, torch.float32), level)

    @torch.no_grad()
    def model_output(self, x_t, t, lr_images, cond_noise=None):
        if lr_images.shape[-2:] != x_t.shape[-2:] or lr_images.shape[0] != x_t.shape[0]:
            raise ValueError(f"latents {list(x_t.shape)} do not match LR images {list(lr_images.shape)}")
        t = int(t)
        self.alpha_bar(t)  # validates the range
        image = self._lr_condition(lr_images, cond_noise)
        cfg = self.guidance_scale > 1.0
        timestep = torch.tensor(t, dtype=torch.long, device=self.device)
        outs = []
        for sl in self._chunks(x_t.shape[0]):
            lat = x_t[sl].to(self.device, self.dtype)
            img = image[sl].to(self.dtype)
            b = lat.shape[0]
            emb = self.prompt_embeds.expand(b, -1, -1)
            if cfg:
                lat, img = torch.cat([lat, lat]), torch.cat([img, img])
                emb = torch.cat([self.negative_prompt_embeds.expand(b, -1, -1), emb])
            labels = torch.full((lat.shape[0],), self.noise_level, dtype=torch.long, device=self.device)
            out = self.unet(torch.cat([lat, img], dim=1), timestep, encoder_hidden_states=emb,
                            class_labels=labels, return_dict=False)[0].float()
            if cfg:
                uncond, cond = out.chunk(2)
                out = uncond + self.guidance_scale * (cond - uncond)
            outs.append(out)
        return torch.cat(outs)

    @torch.no_grad()
    def decode(self, x0, lr_images=None):
        outs = []
        for sl in self._chunks(x0.shape[0]):
            z = x0[sl].to(self.device, self.vae_dtype) / self.vae_scaling_factor
            img = self.vae.decode(z, return_dict=False)[0].float()
            outs.append((img * 0.5 + 0.5).clamp(0.0, 1.0))
        return torch.cat(outs)

    @torch.no_grad()
    def encode(self, images, lr_images=None):
        if images.shape[1] != 3 or images.shape[-2] % self.scale or images.shape[-1] % self.scale:
            raise ValueError(f"images to encode must be [B, 3, H, W] with H, W multiples of {self.scale}, "
                             f"got {list(images.shape)}")
        outs = []
        for sl in self._chunks(images.shape[0]):
            x = images[sl].to(self.device, self.vae_dtype) * 2.0 - 1.0
            posterior = self.vae.encode(x, return_dict=False)[0]
            outs.append(posterior.mean.float() * self.vae_scaling_factor)
        return torch.cat(outs)


def _embed_prompts(folder, index, prompts, device, dtype, cross_dim, name):
    """Prompt embeddings [1, L, D] for each prompt, computed once; the text encoder is freed after.

    Without a tokenizer + text encoder in the folder (or without `transformers`), zeros of shape
    [1, 77, D] stand in for the empty prompt, and a non-empty prompt is an error.
    """
    has_text = all(index.get(k) and index[k][0] is not None for k in ("tokenizer", "text_encoder"))
    reason = "the folder has no tokenizer/text_encoder"
    if has_text:
        try:
            import transformers
        except ImportError:
            has_text, reason = False, "transformers is not installed (pip install transformers)"
    if not has_text:
        if any(prompts):
            raise ModelNotFoundError(f"a prompt needs a text encoder, but for SR model '{name}' {reason}")
        print(f"[sr] {reason}: using a zero prompt embedding [1, {CLIP_MAX_LENGTH}, {cross_dim}] "
              "in place of the empty prompt's")
        return [torch.zeros(1, CLIP_MAX_LENGTH, cross_dim, device="cpu") for _ in prompts]

    tok_cls = getattr(transformers, index["tokenizer"][1], None) or transformers.AutoTokenizer
    enc_cls = getattr(transformers, index["text_encoder"][1], None) or transformers.AutoModel
    tokenizer = _load_component("tokenizer", folder, lambda: tok_cls.from_pretrained(
        folder, subfolder="tokenizer", local_files_only=True))
    major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # renamed in transformers 4.56
    text_encoder = _load_component("text_encoder", folder, lambda: enc_cls.from_pretrained(
        folder, subfolder="text_encoder", local_files_only=True, **{dtype_kw: dtype}))
    text_encoder = text_encoder.to(device).eval()
    embeds = []
    with torch.no_grad():
        for prompt in prompts:
            tokens = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                               truncation=True, return_tensors="pt")
            use_mask = getattr(text_encoder.config, "use_attention_mask", False)
            mask = tokens.attention_mask.to(device) if use_mask else None
            embeds.append(text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0].float().cpu())
    del text_encoder, tokenizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return embeds
