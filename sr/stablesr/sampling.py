"""StableSR-Turbo's own samplers, as the original runs them (the reference our DiffusionSR adapter is
checked against, and what `--sr_compat` reproduces).

`sample_canvas`: plain StableSR SR of one image: x_T = q_sample(LR latent, noise) at t = 999, then for
i = 3..0 the respaced DDPM posterior step with the tiled noise estimate (sr.stablesr.tiler).
`published_3dsr_step`: one step of the published 3DSR loop (`train_proposed`), where the encoded 3D
render replaces x0 in the posterior step from the *stale* start latent x_T (the published code's quirk).
"""
from typing import Callable, Dict, List, Optional

import torch

from sr.stablesr.model import StableSRModel


@torch.no_grad()
def predict_x0(model: StableSRModel, x: torch.Tensor, i: int, struct_latent: torch.Tensor,
               tile: Optional[int] = None, overlap: int = 0, tile_batch: int = 1,
               symmetric_weights: bool = False):
    """(x0, eps) at respaced index i from x (float32), tiled when `tile` is given."""
    t = int(model.schedule.ori_timesteps[i])
    x_in = x.to(model.dtype)
    s_in = struct_latent.to(model.dtype)
    if tile is None:
        eps = model.eps(x_in, t, s_in).float()
    else:
        eps = model.eps_tiled(x_in, t, s_in, tile, overlap, tile_batch, symmetric_weights).float()
    return model.schedule.predict_x0(x, eps, i), eps


@torch.no_grad()
def sample_canvas(model: StableSRModel, init_latent: torch.Tensor, x_T: torch.Tensor,
                  noise_for_step: Callable[[int], Optional[torch.Tensor]], tile: Optional[int] = None,
                  overlap: int = 0, tile_batch: int = 1, symmetric_weights: bool = False) -> List[Dict[str, torch.Tensor]]:
    """The 4-step respaced sampler; returns per step (i = 3..0) {"i", "x0", "x_prev"}; the last x_prev is the result."""
    x = x_T
    out = []
    for i in reversed(range(model.schedule.num_steps)):
        x0, _ = predict_x0(model, x, i, init_latent, tile, overlap, tile_batch, symmetric_weights)
        x = model.schedule.posterior(x0, x, i, noise_for_step(i) if i > 0 else None)
        out.append({"i": i, "x0": x0, "x_prev": x})
    return out
