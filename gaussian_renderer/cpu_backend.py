"""The `cpu` backend: our C++/OpenMP rasterizer (submodules/cpu_rasterizer), forward and backward.

Same math and signature as the reference `gaussian_renderer.torch_backend.rasterize` (projection
with the Jacobian clamp and the 2D filter, with or without Mip-Splatting's opacity compensation,
8-pixel tiles, per-tile depth sort, front-to-back compositing with 3DGS's 1/255 cut, 0.99 clamp and
early termination). The backward is the 3DGS reverse traversal per pixel, not an autograd tape, and
runs on `torch.get_num_threads()` threads. Gradients are deterministic (no atomics).

Rounding follows the reference where it decides something: the Gaussian exponent is evaluated as
the reference's expanded quadratic, with or without fused multiply-adds as torch.bmm does for the
reference's chunk of that tile (hence CHUNK_ELEMENTS is passed down), so the 1/255 cut and the
early stop take the reference's decisions; only a pair within about an ulp of a threshold can still
go the other way (exp and the log-space stop test are not bit-identical to torch's).
"""
import torch

from gaussian_renderer.torch_backend import CHUNK_ELEMENTS
from utils.errors import BackendUnavailableError

try:
    import threedsr_cpu_rasterizer as _C
except ImportError:  # the backend registry reports it as unavailable
    _C = None

REBUILD = "python -m pip install --no-build-isolation ./submodules/cpu_rasterizer (or bash scripts/setup.sh)"


def _filter_args(compensate):
    """The extension's trailing keyword for the 2D filter; builds before API 2 know only compensation."""
    if getattr(_C, "API_VERSION", 1) >= 2:
        return {"compensate": bool(compensate)}
    if not compensate:
        raise BackendUnavailableError("the installed C++ rasterizer predates the Inria 2D filter (no opacity "
                                      f"compensation); rebuild it: {REBUILD}")
    return {}


def _api():
    return getattr(_C, "API_VERSION", 1)


class _RasterizeCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, colors, means2d_offset, background, viewmat, K,
                width, height, kernel_size, compensate):
        nthreads = torch.get_num_threads()
        # API 3: the packed per-Gaussian records come back too, so backward need not rebuild them
        extra = {"return_feat": True} if _api() >= 3 else {}
        out = _C.forward(means, quats, scales, opacities, colors, viewmat, K, width, height, background,
                         kernel_size, means2d_offset, CHUNK_ELEMENTS, nthreads, **_filter_args(compensate), **extra)
        (image, depth, alpha, radii, means2d, conics, opac_c, depths, final_T, last, gids, tile_offsets,
         gauss_offsets, gauss_pairs) = out[:14]
        feat = out[14] if len(out) > 14 else None
        ctx.save_for_backward(means, quats, scales, opacities, colors, viewmat, K, background, means2d, conics,
                              opac_c, depths, radii, final_T, last, gids, tile_offsets, gauss_offsets, gauss_pairs,
                              feat)
        ctx.width, ctx.height, ctx.kernel_size, ctx.compensate = width, height, kernel_size, compensate
        ctx.mark_non_differentiable(radii)
        # outputs the loss does not use arrive in backward as None (not as materialised zeros)
        ctx.set_materialize_grads(False)
        return image, depth, alpha, radii, means2d

    @staticmethod
    def backward(ctx, g_image, g_depth, g_alpha, _g_radii, g_means2d):
        (means, quats, scales, opacities, colors, viewmat, K, background, means2d, conics, opac_c, depths, radii,
         final_T, last, gids, tile_offsets, gauss_offsets, gauss_pairs, feat) = ctx.saved_tensors
        api3 = _api() >= 3
        h, w = ctx.height, ctx.width

        def grad(g, shape):  # None means zeros: API 3 takes an empty tensor for that
            if g is not None:
                return g.contiguous()
            return means.new_empty(0) if api3 else means.new_zeros(shape)

        g_image = means.new_zeros(3, h, w) if g_image is None else g_image.contiguous()
        extra = {"feat": feat} if api3 and feat is not None else {}
        v_means, v_quats, v_scales, v_opac, v_colors, v_means2d, v_bg = _C.backward(
            means, quats, scales, opacities, colors, viewmat, K, w, h, background, ctx.kernel_size,
            means2d, conics, opac_c, depths, radii, final_T, last, gids, tile_offsets, gauss_offsets, gauss_pairs,
            g_image, grad(g_depth, (1, h, w)), grad(g_alpha, (1, h, w)), grad(g_means2d, (means.shape[0], 2)),
            CHUNK_ELEMENTS, torch.get_num_threads(), **_filter_args(ctx.compensate), **extra)
        need = ctx.needs_input_grad
        return (v_means if need[0] else None, v_quats if need[1] else None, v_scales if need[2] else None,
                v_opac if need[3] else None, v_colors if need[4] else None, v_means2d if need[5] else None,
                v_bg if need[6] else None, None, None, None, None, None, None)


def rasterize(means, quats, scales, opacities, colors, viewmat, K, width, height, background,
              kernel_size=0.1, means2d_offset=None, compensate=True):
    """Render one view with the C++ extension.

    Args: means [N, 3], quats [N, 4] (w, x, y, z), scales [N, 3], opacities [N], colors [N, 3]
        (per-Gaussian RGB), viewmat [4, 4] world-to-camera, K [3, 3], background [3]; float32 or
        float64 CPU tensors. kernel_size: 2D filter variance in pixels^2; compensate: scale opacities
        by sqrt(det(S) / det(S + k I)) (Mip-Splatting; False for Inria 3DGS's 0.3 dilation).
        means2d_offset [N, 2] or None: a zero tensor added to the projected means so that its .grad
        is dL/d(means2d) in pixels (used by densification), exactly as in the reference.
    Returns dict: image [3, H, W], depth [1, H, W] (alpha-weighted camera z), alpha [1, H, W],
        radii [N] int32 (0 = culled), means2d [N, 2] (pixels, offset included; differentiable).
    Gradients flow to means, quats, scales, opacities, colors, means2d_offset and background
    (not to viewmat or K).
    """
    if _C is None:
        raise ImportError(f"threedsr_cpu_rasterizer is not built: {REBUILD}")
    dtype = means.dtype
    if means.device.type != "cpu":
        raise ValueError(f"the cpu backend renders CPU tensors; got means on {means.device}")

    def prep(t):  # no copy when t already has the dtype and layout
        return t.to(dtype).contiguous()

    def prep_offset(t):  # API 3 reads a row-strided offset (render passes viewspace[:, :2]) in place
        t = t.to(dtype)
        if _api() >= 3 and t.dim() == 2 and (t.shape[0] <= 1 or (t.stride(1) == 1 and t.stride(0) >= 2)):
            return t
        return t.contiguous()

    if means2d_offset is None:
        means2d_offset = torch.zeros(means.shape[0], 2, dtype=dtype, device=means.device)
    image, depth, alpha, radii, means2d = _RasterizeCPU.apply(
        prep(means), prep(quats), prep(scales), prep(opacities.reshape(-1)), prep(colors), prep_offset(means2d_offset),
        prep(background.reshape(-1)), viewmat.detach().to(dtype).contiguous(), K.detach().to(dtype).contiguous(),
        int(width), int(height), float(kernel_size), bool(compensate))
    return {"image": image, "depth": depth, "alpha": alpha, "radii": radii, "means2d": means2d}


# ---- per-Gaussian preprocessing: SH colours and activations, fused (render() uses them on this backend) ----

def preprocess_available() -> bool:
    """True when the installed extension has the fused preprocessing (builds before it do not)."""
    return _C is not None and hasattr(_C, "sh_colors_forward") and hasattr(_C, "activations_forward")


class _SHColorsCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xyz, f_dc, f_rest, campos, deg):
        ctx.save_for_backward(xyz, f_dc, f_rest, campos)
        ctx.deg = deg
        return _C.sh_colors_forward(xyz, f_dc, f_rest, campos, deg, torch.get_num_threads())

    @staticmethod
    def backward(ctx, g_colors):
        xyz, f_dc, f_rest, campos = ctx.saved_tensors
        g_xyz, g_dc, g_rest = _C.sh_colors_backward(xyz, f_dc, f_rest, campos, ctx.deg, g_colors.contiguous(),
                                                    torch.get_num_threads())
        need = ctx.needs_input_grad
        # degree 0 does not depend on the direction: no gradient reaches xyz, as in the reference
        return g_xyz if need[0] and ctx.deg > 0 else None, g_dc if need[1] else None, g_rest if need[2] else None, None, None


class _ActivationsCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_scales, quats, opacity_logits, filter_3d):
        ctx.save_for_backward(log_scales, quats, opacity_logits, filter_3d)
        scales, opacities, unit_quats = _C.activations_forward(log_scales, quats, opacity_logits, filter_3d,
                                                               torch.get_num_threads())
        return scales, opacities, unit_quats

    @staticmethod
    def backward(ctx, g_scales, g_opacities, g_quats):
        log_scales, quats, opacity_logits, filter_3d = ctx.saved_tensors
        # an output nobody used arrives as None: its gradient is zero
        g_scales, g_opacities, g_quats = (torch.zeros_like(ref) if g is None else g.contiguous() for g, ref in (
            (g_scales, log_scales), (g_opacities, opacity_logits.reshape(-1)), (g_quats, quats)))
        v_scales, v_quats, v_opac = _C.activations_backward(log_scales, quats, opacity_logits, filter_3d, g_scales,
                                                            g_opacities, g_quats, torch.get_num_threads())
        need = ctx.needs_input_grad
        return v_scales if need[0] else None, v_quats if need[1] else None, v_opac if need[2] else None, None


def sh_colors(xyz, f_dc, f_rest, camera_center, deg):
    """`gaussian_colors` in C++: max(eval_sh(deg, [f_dc, f_rest], normalize(xyz - camera_center)) + 0.5, 0).

    Args: xyz [N, 3], f_dc [N, 1, 3], f_rest [N, K-1, 3] (K >= (deg+1)^2; coefficients above `deg`
        get zero gradients, as in the reference), camera_center [3]; CPU, one floating dtype.
    Returns colors [N, 3]; differentiable in xyz, f_dc and f_rest.
    """
    dtype = xyz.dtype
    return _SHColorsCPU.apply(xyz.contiguous(), f_dc.to(dtype).contiguous(), f_rest.to(dtype).contiguous(),
                              camera_center.detach().to(xyz).reshape(3).contiguous(), int(deg))


def activations(log_scales, quats, opacity_logits, filter_3d):
    """GaussianModel's activations with the 3D filter folded in, in C++ (Mip-Splatting eq. 8).

    Args: log_scales [N, 3], quats [N, 4] (w, x, y, z; any norm), opacity_logits [N, 1] or [N],
        filter_3d [N, 1] or [N] (not differentiated); CPU, one floating dtype.
    Returns scales [N, 3] = sqrt(exp(log_scales)^2 + f^2), opacities [N] = sigmoid(o) *
        sqrt(prod exp(2 log_scales) / prod(exp(2 log_scales) + f^2)), quats [N, 4] unit.
    """
    dtype = log_scales.dtype
    return _ActivationsCPU.apply(log_scales.contiguous(), quats.to(dtype).contiguous(),
                                 opacity_logits.to(dtype).contiguous(), filter_3d.detach().to(dtype).contiguous())
