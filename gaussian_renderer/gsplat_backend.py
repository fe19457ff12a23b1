"""The `gsplat` backend: gsplat's CUDA kernels behind the reference rasterizer's signature.

gsplat is imported inside `rasterize` only, and only when CUDA is available: on a machine with `nvcc`
but no GPU, importing and calling gsplat starts a JIT build that then fails.

Mapping to the reference (gaussian_renderer/torch_backend.py):
  - the 2D filter (kernel_size, compensate): gsplat adds eps2d to the screen covariance in both its
    modes and multiplies opacities by sqrt(det / det') only in rasterize_mode="antialiased". So
    (kernel_size, True) -> "antialiased", eps2d=kernel_size (Mip-Splatting's filter), and
    (kernel_size, False) -> "classic", eps2d=kernel_size (Inria 3DGS's with 0.3, gsplat's default).
    The caller has already applied the 3D filter to scales and opacities.
  - render_mode="RGB+D": the extra channel is the alpha-weighted (accumulated) camera depth, which
    is what the reference calls `depth` ("ED" would divide it by alpha); its background is 0.
  - the screen-space gradient: gsplat's meta["means2d"].grad is dL/d(means2d) in pixels, the same
    quantity the reference puts in `means2d_offset.grad`. gsplat takes no offset, so an identity
    node on `means` hands that gradient to `means2d_offset` (see _PixelGradTap).
Differences that remain: gsplat bins with 16-pixel tiles and opacity-aware radii where the
reference uses 3-sigma boxes and 8-pixel tiles, so splat edges differ by up to ~1/255 * a few per
Gaussian; parity is approximate (tests/test_cpu_backend.py says how close).
"""
import torch


class _PixelGradTap(torch.autograd.Function):
    """Identity on `means`; in backward, gives `offset` the gradient that reached gsplat's means2d.

    The backward of this node runs after every use of its output is differentiated, i.e. after
    gsplat's projection, which comes after its rasterizer: by then the hook on meta["means2d"]
    has stored dL/d(means2d).
    """

    @staticmethod
    def forward(ctx, means, offset, box):
        ctx.box = box
        ctx.offset_shape = offset.shape
        return means.view_as(means)

    @staticmethod
    def backward(ctx, g_means):
        g = ctx.box.get("grad")
        if g is None:
            g = torch.zeros(ctx.offset_shape, dtype=g_means.dtype, device=g_means.device)
        return g_means, g, None


def rasterize(means, quats, scales, opacities, colors, viewmat, K, width, height, background,
              kernel_size=0.1, means2d_offset=None, compensate=True):
    """Render one view with gsplat.rasterization (CUDA). Same arguments and outputs as the reference:
    image [3, H, W], depth [1, H, W], alpha [1, H, W], radii [N] int32, means2d [N, 2]."""
    if not torch.cuda.is_available():
        raise RuntimeError("the gsplat backend needs a CUDA GPU and none is available; use --backend cpu or torch")
    import gsplat  # lazy on purpose: see the module docstring

    box = {}
    if means2d_offset is not None and means2d_offset.requires_grad:
        means = _PixelGradTap.apply(means, means2d_offset, box)
    dev, dtype = means.device, means.dtype
    colors_out, alphas, meta = gsplat.rasterization(
        means, quats, scales, opacities.reshape(-1), colors,
        viewmat.to(dev, dtype)[None], K.to(dev, dtype)[None], int(width), int(height),
        near_plane=0.01, eps2d=float(kernel_size), sh_degree=None, packed=False, absgrad=False,
        rasterize_mode="antialiased" if compensate else "classic", render_mode="RGB+D",
        backgrounds=background.to(dev, dtype).reshape(1, 3))
    means2d = meta["means2d"][0]  # [N, 2] pixels, a view into gsplat's [1, N, 2]
    if meta["means2d"].requires_grad:
        def _store(grad):
            box["grad"] = grad[0]
        meta["means2d"].register_hook(_store)
    radii = meta["radii"][0]
    if radii.dim() == 2:  # gsplat >= 1.5 gives per-axis radii [N, 2]
        radii = radii.max(dim=-1).values
    out = colors_out[0].permute(2, 0, 1)  # [4, H, W]
    if means2d_offset is not None:
        # The offset's gradient comes through the tap; detach here so it is not counted twice.
        means2d = means2d + means2d_offset.detach()
    return {"image": out[:3], "depth": out[3:4], "alpha": alphas[0].permute(2, 0, 1),
            "radii": radii.to(torch.int32), "means2d": means2d}
