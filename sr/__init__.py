"""Diffusion super-resolution models behind one small interface, the per-view latent state and the
DDIM step. Knows nothing of Gaussians: sr_refine.py joins this package and the 3D side.

    from sr import load_sr_model, ViewLatents, timestep_pairs
    sr = load_sr_model("sd-x4-upscaler")              # or a local diffusers folder
    isr = load_isr_model("realesrgan-x4plus")         # single-step image SR (sr.image_sr)
"""
from sr.base import DiffusionSR
from sr.image_sr import ISR_MODELS, ImageSR, isr_cache_dir, load_isr_model
from sr.latents import ViewLatents
from sr.loading import KNOWN_MODELS, default_device, default_dtype, load_sr_model, resolve_sr_model
from sr.sampler import (TIMESTEP_SPACINGS, ddim_sigma, ddim_step, respaced_timesteps, split_prediction,
                        timestep_pairs)

__all__ = ["DiffusionSR", "ImageSR", "ISR_MODELS", "isr_cache_dir", "load_isr_model", "ViewLatents",
           "KNOWN_MODELS", "default_device", "default_dtype", "load_sr_model", "resolve_sr_model", "TIMESTEP_SPACINGS", "ddim_sigma", "ddim_step", "respaced_timesteps",
           "split_prediction", "timestep_pairs"]
