"""`render(camera, gaussians, pipe, bg_color)`: one function, several rasterizer backends.

Backends (chosen with `--backend`):
  torch  - pure-PyTorch reference (gaussian_renderer/torch_backend.py); runs anywhere.
  cpu    - C++/OpenMP extension from submodules/ (when built).
  gsplat - gsplat's CUDA kernels (when CUDA is available).
  inria  - reserved for an installed diff_gaussian_rasterization (not wired yet: reported unavailable).
  auto   - gsplat on CUDA, else cpu if built, else torch.
Every backend computes the same image, depth and alpha and reports the gradient of the loss with
respect to the projected means in pixels, so densification means the same thing whichever runs.
"""
import importlib.util

import torch

from gaussian_renderer import torch_backend
from utils.errors import BackendUnavailableError
from utils.sh_utils import eval_sh

BACKENDS = ("auto", "torch", "cpu", "gsplat", "inria")
_announced = set()


def backend_status(name: str):
    """(available, reason) for a backend name."""
    if name == "torch":
        return True, "pure PyTorch reference"
    if name == "cpu":
        if importlib.util.find_spec("threedsr_cpu_rasterizer") is None:
            return False, ("the C++ extension is not built (bash scripts/setup.sh, or pip install "
                           "--no-build-isolation ./submodules/cpu_rasterizer)")
        return True, "C++/OpenMP extension"
    if name == "gsplat":
        if not torch.cuda.is_available():
            return False, "gsplat needs a CUDA GPU and none is available"
        if importlib.util.find_spec("gsplat") is None:
            return False, "gsplat is not installed (conda env create -f environment.yml, or pip install gsplat)"
        return True, "gsplat CUDA kernels"
    if name == "inria":
        return False, "the Inria diff_gaussian_rasterization adapter is not part of this build yet (use gsplat on CUDA)"
    raise BackendUnavailableError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")


def resolve_backend(name: str) -> str:
    """Turn a --backend value into an available backend, or raise saying why it cannot run."""
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        for cand in ("gsplat", "cpu", "torch"):
            if backend_status(cand)[0]:
                name = cand
                break
    ok, why = backend_status(name)
    if not ok:
        raise BackendUnavailableError(f"backend '{name}' is unavailable: {why}; use --backend torch or auto")
    if name not in _announced:
        _announced.add(name)
        print(f"[render] backend: {name} ({why})")
    return name


def _rasterizer(name):
    if name == "torch":
        return torch_backend.rasterize
    if name == "cpu":
        from gaussian_renderer import cpu_backend
        return cpu_backend.rasterize
    if name == "gsplat":
        from gaussian_renderer import gsplat_backend
        return gsplat_backend.rasterize
    raise BackendUnavailableError(f"backend '{name}' has no rasterizer in this build; use --backend torch")


def gaussian_colors(camera, gaussians, override_color=None):
    """Per-Gaussian RGB seen from `camera`: SH evaluated along the viewing direction, +0.5, clamped >= 0."""
    if override_color is not None:
        return override_color
    dirs = gaussians.get_xyz - camera.camera_center.to(gaussians.get_xyz)
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    deg = gaussians.active_sh_degree
    sh = gaussians.get_features[:, : (deg + 1) ** 2]
    return torch.clamp_min(eval_sh(deg, sh, dirs) + 0.5, 0.0)


def render(camera, gaussians, pipe, bg_color, kernel_size=None, scaling_modifier=1.0, override_color=None,
           backend=None):
    """Render `gaussians` from `camera`.

    Args:
        camera: scene.cameras.Camera (intrinsics, world_to_camera, width, height).
        gaussians: scene.gaussian_model.GaussianModel (its 3D filter is applied here).
        pipe: PipelineParams (its `backend`).
        bg_color [3]: background colour.
        kernel_size: variance of the 2D mip filter in pixels^2 (ModelParams.kernel_size; default 0.1).
    Returns dict:
        render [3, H, W], depth [1, H, W], alpha [1, H, W],
        viewspace_points [N, 3]: zeros whose .grad[:, :2] is dL/d(screen mean) in pixels,
        visibility_filter [N] bool, radii [N] int.
    """
    name = resolve_backend(backend or getattr(pipe, "backend", "auto"))
    kernel_size = 0.1 if kernel_size is None else float(kernel_size)
    means = gaussians.get_xyz
    viewspace = torch.zeros_like(means, requires_grad=means.requires_grad)
    if viewspace.requires_grad:
        viewspace.retain_grad()
    scales = gaussians.get_scaling_with_3D_filter * scaling_modifier
    opac = gaussians.get_opacity_with_3D_filter.squeeze(-1)
    colors = gaussian_colors(camera, gaussians, override_color)
    out = _rasterizer(name)(
        means, gaussians.get_rotation, scales, opac, colors,
        camera.world_to_camera.to(means), camera.intrinsics().to(means), camera.width, camera.height,
        bg_color.to(means), kernel_size=kernel_size, means2d_offset=viewspace[:, :2])
    radii = out["radii"]
    return {"render": out["image"], "depth": out["depth"], "alpha": out["alpha"],
            "viewspace_points": viewspace, "visibility_filter": radii > 0, "radii": radii}
