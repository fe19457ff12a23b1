"""3dsr's C++/OpenMP Gaussian rasterizer (forward and backward).

Use it through `gaussian_renderer.cpu_backend.rasterize`, which wraps these raw entry points in a
`torch.autograd.Function` with the reference rasterizer's signature. API_VERSION 2 added the
`compensate` argument (the 2D filter without opacity compensation, Inria 3DGS's dilation). `sh_colors_*` and
`activations_*` are the per-Gaussian preprocessing (SH colours; activations with the 3D filter folded in).
`ssim_forward` / `ssim_backward` (module `_ssim`) are the fused SSIM loss that `utils.loss_utils.ssim` uses on CPU.
"""
import torch  # noqa: F401  (loads libtorch and its OpenMP runtime before the extension)

from threedsr_cpu_rasterizer._C import (  # noqa: E402
    API_VERSION, TILE, activations_backward, activations_forward, backward, build_info, forward, sh_colors_backward,
    sh_colors_forward)

__all__ = ["forward", "backward", "sh_colors_forward", "sh_colors_backward", "activations_forward",
           "activations_backward", "build_info", "TILE", "API_VERSION"]

try:  # a separate module; utils.loss_utils falls back to PyTorch when it is missing
    from threedsr_cpu_rasterizer._ssim import SSIM_API_VERSION, ssim_backward, ssim_forward  # noqa: E402
except ImportError:
    pass
else:
    __all__ += ["ssim_forward", "ssim_backward", "SSIM_API_VERSION"]
