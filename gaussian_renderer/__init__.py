"""`render(camera, gaussians, pipe, bg_color)`: one function, several rasterizer backends.

Backends (chosen with `--backend`):
  torch  - pure-PyTorch reference (gaussian_renderer/torch_backend.py); runs anywhere.
  cpu    - C++/OpenMP extension from submodules/ (when built).
  gsplat - gsplat's CUDA kernels (when CUDA is available).
  inria  - reserved for an installed diff_gaussian_rasterization (not wired yet: reported unavailable).
  auto   - gsplat for a model on CUDA (torch with a warning if gsplat cannot run), else cpu if built,
           else torch.
Every backend computes the same image, depth and alpha and reports the gradient of the loss with
respect to the projected means in pixels, so densification means the same thing whichever runs.
"""
import importlib
import importlib.util
import os
import sys
import warnings

import torch

from gaussian_renderer import torch_backend
from gaussian_renderer.projection import INRIA_DILATION
from utils.errors import BackendUnavailableError
from utils.sh_utils import eval_sh

BACKENDS = ("auto", "torch", "cpu", "gsplat", "inria")
GSPLAT_INSTALL = "pip install gsplat (or conda env create -f environment.yml; README, GPU)"
_announced = set()
_resolved = {}  # (requested name, device type, CUDA available) -> backend, once decided
_gsplat_status = None  # (available, reason), decided once per process: loading the extension is slow


def _gsplat_extension_status():
    """(available, reason) of gsplat's compiled CUDA extension.

    gsplat either ships prebuilt kernels (`gsplat.csrc`) or JIT-compiles them on first import of
    `gsplat.cuda._backend` when a CUDA toolkit is found (minutes, once; cached in torch's extension
    folder). Without a toolkit it sets its extension to None and fails later on first use. So: say
    before a build starts, then load it here, and count gsplat available only if the extension loaded.
    """
    global _gsplat_status
    if _gsplat_status is not None:
        return _gsplat_status
    if not _module_present("gsplat"):
        _gsplat_status = (False, f"gsplat is not installed ({GSPLAT_INSTALL})")
        return _gsplat_status
    if _gsplat_needs_build():
        print("[render] building gsplat CUDA kernels, a few minutes once (cached for later runs)", flush=True)
    try:
        backend = importlib.import_module("gsplat.cuda._backend")
        loaded = getattr(backend, "_C", None) is not None
        why = "gsplat CUDA kernels" if loaded else (
            "gsplat is installed but its CUDA extension did not load (no prebuilt kernels and no CUDA toolkit "
            f"to build them: install nvcc, e.g. conda env create -f environment.yml, or {GSPLAT_INSTALL})")
    except Exception as exc:  # a failed JIT build raises several types
        msg = str(exc).strip().splitlines()
        loaded, why = False, (f"gsplat's CUDA extension failed to load ({type(exc).__name__}: "
                              f"{msg[0] if msg else 'no message'}); reinstall gsplat ({GSPLAT_INSTALL})")
    _gsplat_status = (loaded, why)
    return _gsplat_status


def _gsplat_needs_build() -> bool:
    """True when importing gsplat's backend would start a JIT build (no prebuilt or cached kernels)."""
    if _module_present("gsplat.csrc"):
        return False
    try:
        from torch.utils.cpp_extension import _get_build_directory
        folder = _get_build_directory("gsplat_cuda", verbose=False)
    except Exception:
        return True
    return not any(os.path.exists(os.path.join(folder, f"gsplat_cuda{ext}")) for ext in (".so", ".lib"))


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent that fails to import, or a module without a spec
        return name in sys.modules


def backend_status(name: str, device=None):
    """(available, reason) for a backend name, for a model on `device` (default: cuda if available)."""
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if name == "torch":
        return True, "pure PyTorch reference"
    if name == "cpu":
        if device.type != "cpu":
            return False, f"the C++ extension renders CPU tensors and the model is on {device}"
        if importlib.util.find_spec("threedsr_cpu_rasterizer") is None:
            return False, ("the C++ extension is not built (bash scripts/setup.sh, or pip install "
                           "--no-build-isolation ./submodules/cpu_rasterizer)")
        return True, "C++/OpenMP extension"
    if name == "gsplat":
        if not torch.cuda.is_available():
            return False, "gsplat needs a CUDA GPU and none is available"
        if device.type != "cuda":
            return False, f"gsplat renders CUDA tensors and the model is on {device} (use --device cuda)"
        return _gsplat_extension_status()
    if name == "inria":
        return False, "the Inria diff_gaussian_rasterization adapter is not part of this build yet (use gsplat on CUDA)"
    raise BackendUnavailableError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")


def resolve_backend(name: str, device=None) -> str:
    """Turn a --backend value into an available backend for a model on `device`, or raise saying why
    it cannot run. auto: gsplat on CUDA (the torch reference, with a warning, if gsplat cannot run),
    cpu otherwise (torch if the extension is not built)."""
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    key = (name, device.type, torch.cuda.is_available())
    if key in _resolved:  # render() asks on every call
        return _resolved[key]
    if name == "auto":
        if device.type == "cuda":
            ok, why = backend_status("gsplat", device)
            name = "gsplat" if ok else "torch"
            if not ok and ("auto-gsplat", why) not in _announced:
                _announced.add(("auto-gsplat", why))
                warnings.warn(f"CUDA is available but gsplat cannot run ({why}); rendering with the slow torch "
                              f"reference instead", stacklevel=2)
        else:
            name = "cpu" if backend_status("cpu", device)[0] else "torch"
    ok, why = backend_status(name, device)
    if not ok:
        raise BackendUnavailableError(f"backend '{name}' is unavailable: {why}; use --backend torch or auto")
    if (name, device.type) not in _announced:
        _announced.add((name, device.type))
        print(f"[render] backend: {name} on {device.type} ({why})")
    _resolved[key] = name
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


def _fused_preprocess(name, gaussians):
    """The cpu backend's module when it can compute the per-Gaussian preprocessing (SH colours, activations)
    for this model in C++, else None (the PyTorch properties of the model are the reference)."""
    if name != "cpu":
        return None
    from gaussian_renderer import cpu_backend
    params = getattr(gaussians, "params", None)
    if not cpu_backend.preprocess_available() or not isinstance(params, dict) or not all(
            k in params for k in ("xyz", "f_dc", "f_rest", "scaling", "rotation", "opacity")):
        return None
    filter_3d = gaussians.filter_3D
    if filter_3d.requires_grad or filter_3d.numel() != params["xyz"].shape[0] or params["f_dc"].dim() != 3:
        return None
    return cpu_backend


def render(camera, gaussians, pipe, bg_color, kernel_size=None, scaling_modifier=1.0, override_color=None,
           backend=None):
    """Render `gaussians` from `camera`.

    Args:
        camera: scene.cameras.Camera (intrinsics, world_to_camera, width, height).
        gaussians: scene.gaussian_model.GaussianModel (its 3D filter is applied here). Its `filter_2d`
            picks the screen-space filter the model was trained with (scene/conventions.py):
            "mip" (default): Mip-Splatting's 2D filter, variance `kernel_size`, opacity compensated;
            "inria": Inria 3DGS's fixed 0.3 px^2 dilation without compensation (kernel_size unused).
        pipe: PipelineParams (its `backend`).
        bg_color [3]: background colour.
        kernel_size: variance of the 2D mip filter in pixels^2 (ModelParams.kernel_size; default 0.1).
    Returns dict:
        render [3, H, W], depth [1, H, W], alpha [1, H, W],
        viewspace_points [N, 3]: zeros whose .grad[:, :2] is dL/d(screen mean) in pixels,
        visibility_filter [N] bool, radii [N] int.
    """
    means = gaussians.get_xyz
    name = resolve_backend(backend or getattr(pipe, "backend", "auto"), means.device)
    if getattr(gaussians, "filter_2d", "mip") == "inria":
        kernel_size, compensate = INRIA_DILATION, False
    else:
        kernel_size, compensate = (0.1 if kernel_size is None else float(kernel_size)), True
    viewspace = torch.zeros_like(means, requires_grad=means.requires_grad)
    if viewspace.requires_grad:
        viewspace.retain_grad()
    fused = _fused_preprocess(name, gaussians)
    if fused is not None:  # the same activations and colours, computed in C++ (cpu_backend.activations)
        scales, opac, quats = fused.activations(gaussians.params["scaling"], gaussians.params["rotation"],
                                                gaussians.params["opacity"], gaussians.filter_3D)
        if scaling_modifier != 1.0:
            scales = scales * scaling_modifier
        colors = override_color if override_color is not None else fused.sh_colors(
            means, gaussians.params["f_dc"], gaussians.params["f_rest"], camera.camera_center,
            gaussians.active_sh_degree)
    else:
        scales = gaussians.get_scaling_with_3D_filter * scaling_modifier
        opac = gaussians.get_opacity_with_3D_filter.squeeze(-1)
        quats = gaussians.get_rotation
        colors = gaussian_colors(camera, gaussians, override_color)
    out = _rasterizer(name)(
        means, quats, scales, opac, colors,
        camera.world_to_camera.to(means), camera.intrinsics().to(means), camera.width, camera.height,
        bg_color.to(means), kernel_size=kernel_size, means2d_offset=viewspace[:, :2], compensate=compensate)
    radii = out["radii"]
    return {"render": out["image"], "depth": out["depth"], "alpha": out["alpha"],
            "viewspace_points": viewspace, "visibility_filter": radii > 0, "radii": radii}
