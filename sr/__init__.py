"""Diffusion super-resolution models behind one small interface, the per-view latent state and the
DDIM step. Knows nothing of Gaussians: sr_refine.py joins this package and the 3D side.

    from sr import load_sr_model, ViewLatents, timestep_pairs
    sr = load_sr_model("sd-x4-upscaler")              # or a local diffusers folder
"""
from sr.base import DiffusionSR
from sr.latents import ViewLatents
from sr.loading import KNOWN_MODELS, default_device, default_dtype, load_sr_model, resolve_sr_model
from sr.sampler import (TIMESTEP_SPACINGS, ddim_sigma, ddim_step, respaced_timesteps, split_prediction,
                        timestep_pairs)

__all__ = ["DiffusionSR", "ViewLatents", "KNOWN_MODELS", "default_device", "default_dtype", "load_sr_model",
           "resolve_sr_model", "TIMESTEP_SPACINGS", "ddim_sigma", "ddim_step", "respaced_timesteps",
           "split_prediction", "timestep_pairs"]
