"""Photometric losses: L1, SSIM (training flavour and skimage-compatible metric flavour).

All functions take torch images in [0, 1], shaped [C,H,W] or [B,C,H,W] (C is usually 3), and are
differentiable with respect to both inputs.

Two SSIM variants:

* `ssim` -- the training loss of the 3DGS code: Gaussian window (11 taps, sigma 1.5) applied per
  channel with zero padding to 'same' size, mean of the SSIM map over every pixel, channel and image.
* `ssim_skimage_compatible` -- the metric: equals
  `skimage.metrics.structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1.0)`.  skimage filters with scipy's Gaussian truncated at
  3.5 sigma (radius int(3.5*1.5+0.5) = 5, i.e. the same 11-tap window) and then discards a border of
  (11-1)//2 = 5 pixels, so only pixels whose window lies fully inside the image count; the boundary
  mode of the filter therefore never matters and a 'valid' convolution reproduces it exactly.

The 2D Gaussian window is separable, so both variants filter with two 1D passes (rows, then
columns); with zero padding this is identical to the 2D 11x11 convolution of the Inria code.

On CPU in float32, `ssim` and `photometric_loss` run the fused C++ op of the cpu rasterizer extension
(csrc/ssim.cpp: SSIM and L1 in one pass, analytic backward) when it is built and the second image needs
no gradient; `_ssim_map` and `l1_loss` remain the reference and run everywhere else.
"""
import torch
import torch.nn.functional as F

__all__ = [
    "l1_loss",
    "ssim",
    "ssim_skimage_compatible",
    "photometric_loss",
    "gaussian_kernel_1d",
]

_KERNEL_CACHE = {}


def l1_loss(a, b):
    """Mean absolute difference over all elements."""
    return (a - b).abs().mean()


def gaussian_kernel_1d(window_size=11, sigma=1.5, dtype=torch.float32, device="cpu"):
    """Normalised 1D Gaussian of `window_size` taps centred on window_size // 2."""
    x = torch.arange(window_size, dtype=torch.float64, device="cpu") - (window_size // 2)
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    g = g / g.sum()
    return g.to(dtype=dtype, device=device)


def _separable_window(window_size, sigma, channels, dtype, device):
    """(horizontal [C,1,1,W], vertical [C,1,W,1]) depthwise kernels, cached."""
    key = (int(window_size), float(sigma), int(channels), dtype, torch.device(device))
    win = _KERNEL_CACHE.get(key)
    if win is None:
        g = gaussian_kernel_1d(window_size, sigma, dtype, device)
        win = (
            g.view(1, 1, 1, window_size).expand(channels, 1, 1, window_size).contiguous(),
            g.view(1, 1, window_size, 1).expand(channels, 1, window_size, 1).contiguous(),
        )
        _KERNEL_CACHE[key] = win
    return win


def _as_batch(a, b):
    if a.shape != b.shape:
        raise ValueError(f"SSIM needs images of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() == 3:
        return a.unsqueeze(0), b.unsqueeze(0), False
    if a.dim() == 4:
        return a, b, True
    raise ValueError(f"SSIM expects [C,H,W] or [B,C,H,W] images, got shape {tuple(a.shape)}")


def _ssim_map(x, y, window_size, sigma, C1, C2, valid):
    """SSIM map [B,C,H',W'] of batched images x, y ([B,C,H,W])."""
    if not x.dtype.is_floating_point:
        raise TypeError(f"SSIM needs floating point images, got {x.dtype}")
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):
        x, y, dtype = x.float(), y.float(), torch.float32
    y = y.to(dtype)
    channels = x.shape[1]
    # All five moments in one depthwise convolution: [x, y, x*x, y*y, x*y] stacked on channels.
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    wh, wv = _separable_window(window_size, sigma, 5 * channels, dtype, x.device)
    pad = 0 if valid else window_size // 2
    m = F.conv2d(stack, wh, padding=(0, pad), groups=5 * channels)
    m = F.conv2d(m, wv, padding=(pad, 0), groups=5 * channels)
    mu_x, mu_y, e_xx, e_yy, e_xy = torch.split(m, channels, dim=1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x = e_xx - mu_xx
    var_y = e_yy - mu_yy
    cov = e_xy - mu_xy
    num = (2.0 * mu_xy + C1) * (2.0 * cov + C2)
    den = (mu_xx + mu_yy + C1) * (var_x + var_y + C2)
    return num / den


# ---- fused CPU SSIM (submodules/cpu_rasterizer/csrc/ssim.cpp); _ssim_map above stays the reference ----

_FUSED = []  # [module or None], resolved on first use so that importing this file loads no extension


def _fused_ssim_ext():
    if not _FUSED:
        try:
            import threedsr_cpu_rasterizer as ext
        except ImportError:
            ext = None
        _FUSED.append(ext if hasattr(ext, "ssim_forward") and hasattr(ext, "ssim_backward") else None)
    return _FUSED[0]


def _use_fused_ssim(x, y, window_size):
    """The C++ op covers float32 CPU images whose second input needs no gradient (the ground truth), with an
    odd window (its backward relies on the window's symmetry); everything else takes the PyTorch path."""
    return (x.device.type == "cpu" and y.device.type == "cpu" and x.dtype == torch.float32
            and y.dtype == torch.float32 and not (y.requires_grad and torch.is_grad_enabled())
            and window_size % 2 == 1 and x.numel() > 0 and _fused_ssim_ext() is not None)


class _FusedSSIM(torch.autograd.Function):
    """(mean SSIM map with 'same' zero padding, mean |x - y|) of x against y; gradients for x only."""

    @staticmethod
    def forward(ctx, x, y, kernel, C1, C2):
        ext = _fused_ssim_ext()
        x, y = x.contiguous(), y.contiguous()
        mean_ssim, coef, mean_l1 = ext.ssim_forward(x, y, kernel, C1, C2, False, torch.get_num_threads())
        ctx.save_for_backward(x, y, kernel, coef)
        ctx.set_materialize_grads(False)  # an unused output (ssim() drops the L1) arrives as None
        return mean_ssim, mean_l1

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_ssim, g_l1):
        x, y, kernel, coef = ctx.saved_tensors
        if not ctx.needs_input_grad[0] or (g_ssim is None and g_l1 is None):
            return None, None, None, None, None
        # d mean / d element: the upstream gradients over the element counts
        scale = 0.0 if g_ssim is None else float(g_ssim) / coef[0].numel()
        l1_scale = 0.0 if g_l1 is None else float(g_l1) / x.numel()
        gx = _fused_ssim_ext().ssim_backward(x, y, kernel, coef, False, scale, l1_scale, torch.get_num_threads())
        return gx, None, None, None, None


def _fused_ssim_l1(a, b, window_size, sigma, C1, C2):
    """(ssim(a, b), l1_loss(a, b)) from the C++ op, or None where it does not apply."""
    x, y, _ = _as_batch(a, b)
    if not _use_fused_ssim(x, y, window_size):
        return None
    key = ("fused 1d", int(window_size), float(sigma))
    kernel = _KERNEL_CACHE.get(key)
    if kernel is None:
        kernel = _KERNEL_CACHE[key] = gaussian_kernel_1d(window_size, sigma, torch.float32, "cpu")
    return _FusedSSIM.apply(x, y.detach(), kernel, float(C1), float(C2))


def ssim(a, b, window_size=11, sigma=1.5, C1=0.01 ** 2, C2=0.03 ** 2):
    """SSIM as used in the 3DGS training loss; returns a scalar tensor.

    Gaussian window `window_size` x `window_size` (std `sigma`) applied per channel with zero
    padding to 'same' size; the mean is taken over all images, channels and pixels.
    Works on any image size (even smaller than the window).
    On CPU in float32 the fused C++ op computes it when the extension has it (same values to float
    rounding; no gradient for `b`, the ground truth); otherwise the PyTorch reference below.
    """
    fused = _fused_ssim_l1(a, b, window_size, sigma, C1, C2)
    if fused is not None:
        return fused[0]
    x, y, _ = _as_batch(a, b)
    return _ssim_map(x, y, window_size, sigma, C1, C2, valid=False).mean()


def ssim_skimage_compatible(a, b, data_range=1.0, sigma=1.5, K1=0.01, K2=0.03):
    """SSIM equal to skimage's `structural_similarity(..., gaussian_weights=True, sigma=sigma,
    use_sample_covariance=False, data_range=data_range, channel_axis=-1)` on HWC images.

    a, b: torch [C,H,W] -> scalar tensor; [B,C,H,W] -> tensor [B] (one value per image).
    Window: skimage's truncate=3.5, i.e. radius int(3.5*sigma + 0.5) (5 for sigma=1.5, 11 taps);
    only the 'valid' region (border of `radius` pixels removed) is averaged, per channel, then the
    channel means are averaged.  H and W must be at least the window size.
    Computed in float32 (float64 if the inputs are float64).
    """
    x, y, batched = _as_batch(a, b)
    radius = int(3.5 * sigma + 0.5)
    win = 2 * radius + 1
    if x.shape[-1] < win or x.shape[-2] < win:
        raise ValueError(
            f"SSIM window ({win}x{win}) exceeds image size {tuple(x.shape[-2:])}; images must be at least {win}x{win}"
        )
    C1 = (K1 * data_range) ** 2
    C2 = (K2 * data_range) ** 2
    s = _ssim_map(x, y, win, sigma, C1, C2, valid=True)
    # mean per channel over pixels, then over channels == mean over (C, H', W') since all channels
    # have the same number of pixels.
    per_image = s.mean(dim=(1, 2, 3))
    return per_image if batched else per_image[0]


def photometric_loss(render, target, lambda_dssim=0.2):
    """The 3DGS loss: (1 - lambda) * L1 + lambda * (1 - SSIM)."""
    fused = _fused_ssim_l1(render, target, 11, 1.5, 0.01 ** 2, 0.03 ** 2)  # both terms in one C++ pass
    if fused is not None:
        s, l1 = fused
        return (1.0 - lambda_dssim) * l1 + lambda_dssim * (1.0 - s)
    return (1.0 - lambda_dssim) * l1_loss(render, target) + lambda_dssim * (1.0 - ssim(render, target))

