"""StableSR's noise schedule and its 4-step respacing, with the original's coefficients.

The model was trained on the latent-diffusion "linear" schedule: sqrt(beta) linear from
sqrt(0.00085) to sqrt(0.012) over 1000 steps (float64, then stored as float32). StableSR-Turbo samples
4 of those steps, {0, 333, 666, 999} (`space_timesteps(1000, [4])` of improved-diffusion, Nichol &
Dhariwal 2021): the respaced process has betas 1 - abar[t_i] / abar[t_{i-1}], and its DDPM posterior
q(x_{i-1} | x_i, x0) = N(coef1[i] x0 + coef2[i] x_i, var[i]) (Ho et al. 2020, eq. 7). The networks see
the original timestep t_i; the coefficients use the respaced index i.
"""
from dataclasses import dataclass

import numpy as np
import torch


def linear_alphas_cumprod(num_steps: int = 1000, linear_start: float = 0.00085,
                          linear_end: float = 0.012) -> np.ndarray:
    """abar_t, t = 0..num_steps-1, float64 (ldm make_beta_schedule("linear"))."""
    betas = np.linspace(linear_start ** 0.5, linear_end ** 0.5, num_steps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def spaced_timesteps(num_train_timesteps: int, num_steps: int) -> list:
    """Evenly strided original timesteps, ascending, rounding as improved-diffusion's space_timesteps
    (4 of 1000: 0, 333, 666, 999)."""
    if num_steps <= 1:
        return [0]
    stride = (num_train_timesteps - 1) / (num_steps - 1)
    return [int(round(i * stride)) for i in range(num_steps)]


@dataclass
class RespacedSchedule:
    """The respaced process's buffers, float32 CPU tensors [num_steps] indexed by i (0 = cleanest).

    ori_timesteps[i]: original timestep of index i. alphas_cumprod_1000: the full schedule (float32),
    used for q_sample of x_T as the original does before respacing.
    """
    ori_timesteps: torch.LongTensor
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    alphas_cumprod_1000: torch.Tensor

    @classmethod
    def create(cls, num_steps: int = 4, num_train_timesteps: int = 1000, linear_start: float = 0.00085,
               linear_end: float = 0.012) -> "RespacedSchedule":
        full32 = linear_alphas_cumprod(num_train_timesteps, linear_start, linear_end).astype(np.float32)
        ts = spaced_timesteps(num_train_timesteps, num_steps)
        # the original respaces from the float32 buffer it registered
        kept = full32[ts].astype(np.float64)
        betas = 1.0 - kept / np.concatenate([[1.0], kept[:-1]])
        alphas = 1.0 - betas
        ac = np.cumprod(alphas)
        ac_prev = np.concatenate([[1.0], ac[:-1]])
        var = betas * (1.0 - ac_prev) / (1.0 - ac)
        f = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32, device="cpu")  # noqa: E731
        return cls(ori_timesteps=torch.tensor(ts, dtype=torch.long, device="cpu"), betas=f(betas), alphas_cumprod=f(ac),
                   alphas_cumprod_prev=f(ac_prev), sqrt_recip_alphas_cumprod=f(np.sqrt(1.0 / ac)),
                   sqrt_recipm1_alphas_cumprod=f(np.sqrt(1.0 / ac - 1.0)), posterior_variance=f(var),
                   posterior_log_variance_clipped=f(np.log(np.maximum(var, 1e-20))),
                   posterior_mean_coef1=f(betas * np.sqrt(ac_prev) / (1.0 - ac)),
                   posterior_mean_coef2=f((1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)),
                   alphas_cumprod_1000=torch.from_numpy(full32))

    @property
    def num_steps(self) -> int:
        return int(self.ori_timesteps.shape[0])

    def q_sample_start(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_T at the last original timestep from x0 (the original's q_sample_respace, 1000-step buffers)."""
        a = float(self.alphas_cumprod_1000[int(self.ori_timesteps[-1])])
        return float(np.float32(np.sqrt(np.float64(a)))) * x0 + float(np.float32(np.sqrt(1.0 - np.float64(a)))) * noise

    def predict_x0(self, x: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
        return self.sqrt_recip_alphas_cumprod[i].item() * x - self.sqrt_recipm1_alphas_cumprod[i].item() * eps

    def posterior(self, x0: torch.Tensor, x: torch.Tensor, i: int, noise=None) -> torch.Tensor:
        """x_{i-1} = coef1[i] x0 + coef2[i] x + exp(logvar[i] / 2) noise (no noise at i = 0)."""
        out = self.posterior_mean_coef1[i].item() * x0 + self.posterior_mean_coef2[i].item() * x
        if i > 0 and noise is not None:
            out = out + float(torch.exp(0.5 * self.posterior_log_variance_clipped[i])) * noise.to(out)
        return out
