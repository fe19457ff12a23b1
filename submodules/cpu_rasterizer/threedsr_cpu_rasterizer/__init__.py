"""3dsr's C++/OpenMP Gaussian rasterizer (forward and backward).

Use it through `gaussian_renderer.cpu_backend.rasterize`, which wraps these raw entry points in a
`torch.autograd.Function` with the reference rasterizer's signature. API_VERSION 2 added the
`compensate` argument (the 2D filter without opacity compensation, Inria 3DGS's dilation).
"""
import torch  # noqa: F401  (loads libtorch and its OpenMP runtime before the extension)

from threedsr_cpu_rasterizer._C import API_VERSION, TILE, backward, build_info, forward  # noqa: E402

__all__ = ["forward", "backward", "build_info", "TILE", "API_VERSION"]
