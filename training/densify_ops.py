"""Pure operations that change the set of Gaussians, keeping the optimizer's moments in step
(duplicate, split, remove, opacity reset; 3DGS, Kerbl et al. 2023, sec. 5.2)."""
import torch

from scene.gaussian_model import PARAM_NAMES, build_rotation, inverse_sigmoid


def remove(gaussians, remove_mask):
    """Drop the Gaussians where remove_mask [N] is True."""
    keep = ~remove_mask
    gaussians.replace_params({n: gaussians.params[n][keep] for n in PARAM_NAMES}, keep_state=keep)
    gaussians.filter_3D = gaussians.filter_3D[keep]


def append(gaussians, new_params: dict, new_filter):
    """Append Gaussians (dict of tensors named as PARAM_NAMES); their Adam moments start at zero."""
    merged = {n: torch.cat([gaussians.params[n].detach(), new_params[n].detach()], dim=0) for n in PARAM_NAMES}
    gaussians.replace_params(merged, keep_state=None)
    gaussians.filter_3D = torch.cat([gaussians.filter_3D, new_filter], dim=0)


def duplicate(gaussians, mask):
    """Clone the selected (small, under-reconstructed) Gaussians in place."""
    append(gaussians, {n: gaussians.params[n][mask] for n in PARAM_NAMES}, gaussians.filter_3D[mask])


def split(gaussians, mask, n_children=2, shrink=1.6, generator=None):
    """Replace each selected (large) Gaussian by n_children samples drawn from it, each with its
    scale divided by `shrink` (0.8 * n_children in 3DGS)."""
    if not mask.any():
        return
    p = {n: gaussians.params[n].detach()[mask] for n in PARAM_NAMES}
    scales = torch.exp(p["scaling"]).repeat(n_children, 1)
    # drawn on the CPU generator, then moved: the same samples whichever device the model is on
    samples = torch.randn(scales.shape, generator=generator, device="cpu").to(scales) * scales
    rots = build_rotation(p["rotation"]).repeat(n_children, 1, 1)
    new = {n: p[n].repeat((n_children,) + (1,) * (p[n].dim() - 1)) for n in PARAM_NAMES}
    new["xyz"] = torch.bmm(rots, samples[..., None]).squeeze(-1) + p["xyz"].repeat(n_children, 1)
    new["scaling"] = torch.log(scales / shrink)
    append(gaussians, new, gaussians.filter_3D[mask].repeat(n_children, 1))
    n_new = mask.sum() * n_children
    remove(gaussians, torch.cat([mask, torch.zeros(int(n_new), dtype=torch.bool, device=mask.device)]))


def reset_opacity(gaussians, ceiling=0.01):
    """Clamp every Gaussian's *filtered* opacity to `ceiling` (Mip-Splatting's variant of the 3DGS
    reset: the cap applies to what is rendered, then is mapped back through the 3D filter)."""
    with torch.no_grad():
        coef = gaussians.filter_3D_opacity_coef()
        capped = torch.minimum(gaussians.get_opacity * coef, torch.full_like(coef, ceiling))
        raw = torch.clamp(capped / coef, 1e-6, 1 - 1e-6)
    gaussians.replace_params({"opacity": inverse_sigmoid(raw)}, keep_state="reset")
