"""Per-view latent state of the 3DSR sampler, and its atomic save/load for resuming.

The published implementation reuses one noisy latent (the last view's) for every view; here each view
keeps its own latent x_t from x_T to the end, plus its own LR noise-augmentation draw.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from sr.sampler import timestep_pairs
from utils.errors import ModelNotFoundError
from utils.system_utils import atomic_write

_FORMAT = "3dsr-view-latents"
_VERSION = 1


@dataclass
class ViewLatents:
    """One latent per view, updated once per denoising step.

    latents: float32 [V, C, h, w]: x_t at t = timesteps[step] (x_T when step == 0); after the last
        step, the final latents.
    timesteps: LongTensor [num_steps], descending (from `DiffusionSR.timesteps`).
    cond_noise: float32 [V, 3, h_lr, w_lr] or None: each view's LR noise-augmentation draw, reused
        at every step (`DiffusionSR.init_cond_noise`).
    step: denoising steps completed, 0..num_steps.
    view_names: optional image names, one per view, to check a resume uses the same views.
    model_name: the SR model the latents belong to (latents of another model are meaningless).
    """
    latents: torch.Tensor
    timesteps: torch.Tensor
    cond_noise: Optional[torch.Tensor] = None
    step: int = 0
    view_names: Optional[List[str]] = None
    model_name: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.view_names is not None and len(self.view_names) != self.latents.shape[0]:
            raise ValueError(f"{len(self.view_names)} view names for {self.latents.shape[0]} latents")
        if self.cond_noise is not None and self.cond_noise.shape[0] != self.latents.shape[0]:
            raise ValueError(f"{self.cond_noise.shape[0]} LR noise draws for {self.latents.shape[0]} latents")

    @classmethod
    def create(cls, sr, lr_images: torch.Tensor, num_steps: int, generator: Optional[torch.Generator] = None,
               view_names: Optional[List[str]] = None, spacing: Optional[str] = None) -> "ViewLatents":
        """Fresh state for LR images [V, 3, h, w] in [0, 1]: x_T ~ N(0, I) per view.

        The LR noise is drawn before x_T, the order diffusers' upscale pipeline uses, so one seeded
        generator gives the pipeline's numbers.
        """
        cond_noise = sr.init_cond_noise(lr_images, generator)
        latents = sr.init_latents(lr_images, generator)
        return cls(latents=latents, timesteps=sr.timesteps(num_steps, spacing), cond_noise=cond_noise,
                   view_names=list(view_names) if view_names is not None else None, model_name=sr.name)

    @property
    def num_views(self) -> int:
        return int(self.latents.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def done(self) -> bool:
        return self.step >= self.num_steps

    def current(self) -> Tuple[int, int]:
        """(t, t_prev) of the next step to take; t_prev = -1 for the last one."""
        if self.done:
            raise IndexError(f"all {self.num_steps} denoising steps are done")
        return timestep_pairs(self.timesteps)[self.step]

    def advance(self, new_latents: torch.Tensor):
        """Store x_{t_prev} [V, C, h, w] after a step and count the step."""
        if new_latents.shape != self.latents.shape:
            raise ValueError(f"new latents {list(new_latents.shape)} differ from {list(self.latents.shape)}")
        self.latents = new_latents.to(self.latents)
        self.step += 1

    def state_dict(self, generator: Optional[torch.Generator] = None) -> dict:
        """The state as plain data (tensors on CPU), with the sampling generator's RNG state."""
        return {
            "format": _FORMAT, "version": _VERSION,
            "latents": self.latents.detach().cpu(), "timesteps": self.timesteps.cpu(),
            "cond_noise": None if self.cond_noise is None else self.cond_noise.detach().cpu(),
            "step": int(self.step), "view_names": self.view_names, "model_name": self.model_name,
            "generator_state": None if generator is None else generator.get_state(),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_state_dict(cls, payload: dict, device="cpu", generator: Optional[torch.Generator] = None,
                        source: str = "state") -> "ViewLatents":
        """Inverse of `state_dict`; restores `generator`'s RNG state when given (and saved)."""
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ModelNotFoundError(f"{source} is not an SR latent checkpoint")
        if generator is not None and payload["generator_state"] is not None:
            generator.set_state(payload["generator_state"])
        cond = payload["cond_noise"]
        return cls(latents=payload["latents"].to(device), timesteps=payload["timesteps"],
                   cond_noise=None if cond is None else cond.to(device), step=int(payload["step"]),
                   view_names=payload["view_names"], model_name=payload["model_name"], extra=payload["extra"])

    def save(self, path, generator: Optional[torch.Generator] = None, extra: Optional[dict] = None):
        """Atomically write the state (tensors on CPU) with the sampling generator's RNG state.

        `extra` must hold only plain data (tensors, numbers, strings, lists, dicts): the file is read
        back with `torch.load(weights_only=True)`.
        """
        payload = self.state_dict(generator)
        payload["extra"].update(extra or {})
        with atomic_write(path, "wb") as f:
            torch.save(payload, f)

    @classmethod
    def load(cls, path, device="cpu", generator: Optional[torch.Generator] = None) -> "ViewLatents":
        """Read a state written by `save`; restores `generator`'s RNG state when given (and saved)."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ModelNotFoundError(f"no SR latent checkpoint at {path}") from None
        except Exception as exc:  # truncated / foreign file: say which, never a traceback
            raise ModelNotFoundError(f"cannot read SR latent checkpoint {path}: {type(exc).__name__}") from None
        return cls.from_state_dict(payload, device, generator, source=str(path))
