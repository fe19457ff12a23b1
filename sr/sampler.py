"""DDIM sampling math, written out so the 3DSR loop can replace the clean-latent estimate between steps.

Notation (Song et al. 2021, "Denoising Diffusion Implicit Models", DDIM): ᾱ_t is the cumulative
product of (1 - beta) at training timestep t; x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) eps.
Everything here is pure tensor math with no model and no diffusers import.
"""
import math
from typing import List, Optional, Tuple

import numpy as np
import torch

TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")


def respaced_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "trailing",
                       steps_offset: int = 0) -> torch.LongTensor:
    """`num_steps` training timesteps to visit, descending, as a LongTensor [num_steps].

    Spacings follow Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed",
    table 2) and give exactly what diffusers' DDIMScheduler.set_timesteps gives for the same config:
      - "trailing": round(T, T - T/n, ...) - 1; starts at T-1, the pure-noise end, which is what a
        sampler that starts from N(0, I) wants, and matters most at few steps (4 steps: 999 749 499 249).
      - "leading": (0, T//n, 2T//n, ...) reversed, + steps_offset (Stable Diffusion configs use 1:
        4 steps: 751 501 251 1). The first step is then far from pure noise.
      - "linspace": round(linspace(0, T-1, n)) reversed (4 steps: 999 666 333 0).
    """
    T, n = int(num_train_timesteps), int(num_steps)
    if not 1 <= n <= T:
        raise ValueError(f"number of denoising steps must be in [1, {T}], got {n}")
    if spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    elif spacing == "leading":
        ts = (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + int(steps_offset)
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"unknown timestep spacing '{spacing}'; use one of {', '.join(TIMESTEP_SPACINGS)}")
    return torch.from_numpy(ts.copy())


def timestep_pairs(timesteps) -> List[Tuple[int, int]]:
    """[(t, t_prev), ...] for a descending schedule; the last step goes to t_prev = -1 (the clean end).

    t_prev is the next timestep of the schedule itself. diffusers' DDIMScheduler.step instead uses
    t - T // n, which is the same for "leading" spacing and for "trailing" when n divides T, and off by
    one timestep otherwise (e.g. trailing with 3 steps: 999 666 332 vs its 999 -> 666 -> 333 -> ...).
    """
    ts = [int(t) for t in timesteps]
    return list(zip(ts, ts[1:] + [-1]))


def split_prediction(model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: float,
                     prediction_type: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from a network output, for the three parameterisations diffusers uses.

    epsilon: eps = out, x0 = (x_t - sqrt(1-ᾱ) eps) / sqrt(ᾱ)             (Ho et al. 2020)
    v_prediction: v = sqrt(ᾱ) eps - sqrt(1-ᾱ) x0, so x0 = sqrt(ᾱ) x_t - sqrt(1-ᾱ) v,
                  eps = sqrt(ᾱ) v + sqrt(1-ᾱ) x_t                         (Salimans & Ho 2022, sec. 4)
    sample: x0 = out, eps = (x_t - sqrt(ᾱ) x0) / sqrt(1-ᾱ)
    """
    a = float(alpha_bar_t)
    sa, sb = math.sqrt(a), math.sqrt(1.0 - a)
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x_t - sb * eps) / sa
    elif prediction_type == "v_prediction":
        x0 = sa * x_t - sb * model_output
        eps = sa * model_output + sb * x_t
    elif prediction_type == "sample":
        x0 = model_output
        eps = (x_t - sa * x0) / sb
    else:
        raise ValueError(f"unknown prediction_type '{prediction_type}' (epsilon, v_prediction, sample)")
    return x0, eps


def ddim_sigma(alpha_bar_t: float, alpha_bar_prev: float, eta: float) -> float:
    """σ_t(η) = η · sqrt((1-ᾱ_prev)/(1-ᾱ_t)) · sqrt(1 - ᾱ_t/ᾱ_prev)  (DDIM eq. 16).

    η = 0: deterministic DDIM; η = 1: the DDPM posterior variance.
    """
    a_t, a_prev = float(alpha_bar_t), float(alpha_bar_prev)
    variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
    return float(eta) * math.sqrt(max(variance, 0.0))


def ddim_step(z: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float, alpha_bar_prev: float,
              eta: float = 0.0, noise: Optional[torch.Tensor] = None,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x_{t_prev} = sqrt(ᾱ_prev) z + sqrt(1 - ᾱ_prev - σ²) eps + σ noise   (DDIM eq. 12 with σ of eq. 16).

    z [B, C, h, w]: the clean-latent estimate (the model's x0, or in 3DSR the encoded 3D renders);
    eps: the model's noise estimate at t. For the final step pass ᾱ_prev of t_prev = -1 (see
    `DiffusionSR.alpha_bar`). When σ > 0 the noise is `noise` if given, else drawn from `generator`
    (float32, on the generator's device, then moved), else from the global RNG. η = 0 draws nothing.
    """
    a_prev = float(alpha_bar_prev)
    sigma = ddim_sigma(alpha_bar_t, a_prev, eta)
    x_prev = math.sqrt(a_prev) * z + math.sqrt(max(1.0 - a_prev - sigma ** 2, 0.0)) * eps
    if sigma > 0:
        if noise is None:
            device = generator.device if generator is not None else z.device
            noise = torch.randn(z.shape, generator=generator, device=device, dtype=torch.float32)
        x_prev = x_prev + sigma * noise.to(device=z.device, dtype=z.dtype)
    return x_prev
