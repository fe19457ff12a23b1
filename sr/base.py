"""`DiffusionSR`: the small interface every diffusion super-resolution model is used through.

The 3DSR loop (sr_refine.py) only ever calls these methods, so it never sees a UNet, a VAE or a
scheduler, and one latent per view can be replaced by encoded 3D renders between steps:

    sr = load_sr_model("sd-x4-upscaler", device, dtype)
    x = sr.init_latents(L, generator); c = sr.init_cond_noise(L, generator)
    for t, t_prev in timestep_pairs(sr.timesteps(4)):
        x0, eps = sr.predict(x, t, L, c)         # clean-latent and noise estimates
        H = sr.decode(x0, L)                     # HR proposals [V, 3, s*h, s*w] in [0, 1]
        ... fit Gaussians, render R ...
        x = sr.step(sr.encode(R, L), eps, t, t_prev, eta, generator)

Conventions: images are float tensors [B, 3, H, W] in [0, 1]; latents, x0 and eps are float32 on
`device` whatever the model's compute `dtype` is (fp16 on CUDA, fp32 on CPU by default), so the
sampler math and anything the loop stores stay in fp32. `decode` and `encode` also take the views' LR
images (optional, None by default): latent-VAE models ignore them, models whose latent is relative to
the LR input (sr.pixel_prior: a residual over the bicubic upsample) need them. Views are processed in
chunks of `sr_batch` so peak memory is that of `sr_batch` views, and results do not depend on the chunk
size.
"""
import abc
from typing import Iterator, Optional, Tuple

import torch

from sr.sampler import TIMESTEP_SPACINGS, ddim_step, respaced_timesteps, split_prediction


class DiffusionSR(abc.ABC):
    """A latent diffusion SR model: LR images [B, 3, h, w] in, HR images [B, 3, scale*h, scale*w] out.

    Subclasses set the attributes below in __init__ and implement `model_output`, `decode`, `encode`
    and `latent_shape`.

    Attributes:
        name: what the model was loaded from (short name, hub id or folder), for logs.
        scale: upscaling factor (4 for sd-x4-upscaler).
        device, dtype: where and in what precision the networks run.
        sr_batch: views per network call.
        alphas_cumprod: ᾱ_t for t = 0..T-1, float32 CPU tensor [T].
        final_alpha_cumprod: ᾱ used for t_prev = -1 (the scheduler's: 1.0 if `set_alpha_to_one`, else ᾱ_0).
        prediction_type: "epsilon", "v_prediction" or "sample".
        timestep_spacing, steps_offset: how `timesteps(n)` respaces (see sr.sampler.respaced_timesteps).
        clip_sample_range: x0 is clamped to ±this if the scheduler config asks (`clip_sample`), else None.
    """

    name: str = ""
    scale: int = 1
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    sr_batch: int = 1
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: float = 1.0
    prediction_type: str = "epsilon"
    timestep_spacing: str = "trailing"
    steps_offset: int = 0
    clip_sample_range: Optional[float] = None

    # ---- schedule ---------------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def timesteps(self, num_steps: int, spacing: Optional[str] = None) -> torch.LongTensor:
        """Respaced training timesteps, descending, LongTensor [num_steps] on CPU.

        `spacing` defaults to the model's `timestep_spacing` (see sr.sampler.respaced_timesteps).
        """
        spacing = spacing or self.timestep_spacing
        if spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"unknown timestep spacing '{spacing}'; use one of {', '.join(TIMESTEP_SPACINGS)}")
        ts = respaced_timesteps(self.num_train_timesteps, num_steps, spacing, self.steps_offset)
        if int(ts.max()) >= self.num_train_timesteps:  # "leading" + steps_offset at ~T steps
            raise ValueError(f"{num_steps} steps with '{spacing}' spacing reach timestep {int(ts.max())}, outside "
                             f"the model's [0, {self.num_train_timesteps - 1}]; use fewer steps or 'trailing'")
        return ts

    def alpha_bar(self, t) -> float:
        """ᾱ_t as a Python float; t < 0 (after the last step) gives `final_alpha_cumprod`."""
        t = int(t)
        if t < 0:
            return float(self.final_alpha_cumprod)
        if t >= self.num_train_timesteps:
            raise ValueError(f"timestep {t} is outside the model's schedule [0, {self.num_train_timesteps - 1}]")
        return float(self.alphas_cumprod[t])

    # ---- sampling ---------------------------------------------------------------------------
    @abc.abstractmethod
    def latent_shape(self, lr_shape) -> Tuple[int, int, int, int]:
        """Latent shape [B, C, h', w'] whose decoding is the HR image of LR images of shape `lr_shape`."""

    def init_latents(self, lr_images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """x_T ~ N(0, I), one latent per view: float32 [B, C, h', w'] on `device`.

        Drawn in one call on the generator's device (CPU generators give the same numbers on any
        device), so it does not depend on `sr_batch`.
        """
        shape = self.latent_shape(tuple(lr_images.shape))
        gen_device = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(self.device)

    def init_cond_noise(self, lr_images: torch.Tensor,
                        generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
        """Noise for noise-augmenting the LR conditioning, drawn once per view and reused at every step
        (as diffusers' pipelines do). None for models without noise augmentation."""
        return None

    @abc.abstractmethod
    def model_output(self, x_t: torch.Tensor, t, lr_images: torch.Tensor,
                     cond_noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Raw network output at timestep t (after classifier-free guidance if enabled), float32,
        in the model's `prediction_type` parameterisation. x_t [B, C, h', w'], lr_images [B, 3, h, w]."""

    @torch.no_grad()
    def predict(self, x_t: torch.Tensor, t, lr_images: torch.Tensor,
                cond_noise: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps): clean-latent and noise estimates at timestep t, float32, shapes of x_t.

        Handles epsilon-, v- and sample-prediction models; x0 is clamped when the scheduler config sets
        `clip_sample` (eps is left as predicted, as DDIMScheduler does by default).
        """
        out = self.model_output(x_t, t, lr_images, cond_noise)
        x0, eps = split_prediction(out, x_t.to(out), self.alpha_bar(t), self.prediction_type)
        if self.clip_sample_range is not None:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0, eps

    def step(self, z: torch.Tensor, eps: torch.Tensor, t, t_prev, eta: float = 0.0,
             generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One DDIM step from t to t_prev (-1 = the end) with z in place of x0; see sr.sampler.ddim_step."""
        return ddim_step(z, eps, self.alpha_bar(t), self.alpha_bar(t_prev), eta, noise=noise, generator=generator)

    @abc.abstractmethod
    def decode(self, x0: torch.Tensor, lr_images: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Latents [B, C, h', w'] -> HR images float32 [B, 3, H, W] in [0, 1].

        lr_images [B, 3, h, w]: the same views' LR images; models that do not need them ignore them."""

    @abc.abstractmethod
    def encode(self, images: torch.Tensor, lr_images: Optional[torch.Tensor] = None) -> torch.Tensor:
        """HR images [B, 3, H, W] in [0, 1] -> latents float32 [B, C, h', w'] (deterministic: for a VAE
        the posterior mean times its scaling factor, no sampling). lr_images as in `decode`."""

    # ---- helpers ----------------------------------------------------------------------------
    def _chunks(self, n: int) -> Iterator[slice]:
        step = max(1, int(self.sr_batch))
        for i in range(0, n, step):
            yield slice(i, min(i + step, n))

    def __repr__(self):
        return (f"{type(self).__name__}(name={self.name!r}, scale={self.scale}, device={self.device}, "
                f"dtype={self.dtype}, sr_batch={self.sr_batch}, prediction_type={self.prediction_type}, "
                f"timestep_spacing={self.timestep_spacing})")
