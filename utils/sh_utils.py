"""Real spherical harmonics up to degree 3, with the basis and constants of 3DGS / gsplat.

Layout (one convention for the whole code base):

    sh   : [..., K, 3]   K = (deg + 1) ** 2 coefficients (at least), RGB last
    dirs : [..., 3]      unit view directions (x, y, z); same leading shape as sh (broadcastable)
    eval_sh(deg, sh, dirs) -> [..., 3]

Coefficient k = l*l + l + m holds degree l, order m (m = -l..l).  Only the first (deg+1)**2
coefficients are used, so a degree-3 array can be evaluated at a lower degree (the 3DGS
"active_sh_degree" warm-up).

Basis: Y_l^m(real) = sqrt(2) Im(Y_l^|m|) for m < 0, Y_l^0, sqrt(2) Re(Y_l^m) for m > 0 with the complex
harmonics Y_l^m *including* the Condon-Shortley phase (-1)^m (as scipy.special.sph_harm_y returns
them). Compared with the textbook real basis without that phase, orders with odd m carry a minus
sign -- e.g. degree 1 is (-C1*y, C1*z, -C1*x).  The basis is orthonormal on the unit sphere.

The 3DGS colour of a Gaussian is `eval_sh(...) + 0.5`, clamped at 0 by the renderer; the DC term is
stored as RGB2SH(rgb) so that a degree-0 model reproduces `rgb` exactly.
"""
import torch

__all__ = ["C0", "C1", "C2", "C3", "eval_sh", "sh_basis", "RGB2SH", "SH2RGB", "num_sh_coeffs", "MAX_SH_DEGREE"]

MAX_SH_DEGREE = 3

# Normalisation constants of the real SH basis (sqrt((2l+1)/(4pi) * (l-|m|)!/(l+|m|)!) * ...).
C0 = 0.28209479177387814  # 1 / (2 sqrt(pi))
C1 = 0.4886025119029199  # sqrt(3 / (4 pi))
C2 = [
    1.0925484305920792,  # m=-2:  xy
    -1.0925484305920792,  # m=-1:  yz
    0.31539156525252005,  # m= 0:  2zz - xx - yy
    -1.0925484305920792,  # m= 1:  xz
    0.5462742152960396,  # m= 2:  xx - yy
]
C3 = [
    -0.5900435899266435,  # m=-3:  y (3xx - yy)
    2.890611442640554,  # m=-2:  xyz
    -0.4570457994644658,  # m=-1:  y (4zz - xx - yy)
    0.3731763325901154,  # m= 0:  z (2zz - 3xx - 3yy)
    -0.4570457994644658,  # m= 1:  x (4zz - xx - yy)
    1.445305721320277,  # m= 2:  z (xx - yy)
    -0.5900435899266435,  # m= 3:  x (xx - 3yy)
]


def num_sh_coeffs(deg):
    """Number of SH coefficients for degree `deg`: (deg+1)**2."""
    return (int(deg) + 1) ** 2


def sh_basis(deg, dirs):
    """The real SH basis at `dirs` [..., 3]: returns [..., (deg+1)**2] (same dtype/device)."""
    if not 0 <= deg <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {deg}")
    x, y, z = dirs[..., 0], dirs[..., 1], dirs[..., 2]
    out = [torch.full_like(x, C0)]
    if deg >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if deg >= 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        out += [
            C2[0] * xy,
            C2[1] * yz,
            C2[2] * (2.0 * zz - xx - yy),
            C2[3] * xz,
            C2[4] * (xx - yy),
        ]
    if deg >= 3:
        out += [
            C3[0] * y * (3.0 * xx - yy),
            C3[1] * xy * z,
            C3[2] * y * (4.0 * zz - xx - yy),
            C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            C3[4] * x * (4.0 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(deg, sh, dirs):
    """Evaluate SH colour: sh [..., K, C] (K >= (deg+1)**2), dirs [..., 3] unit -> [..., C].

    Differentiable in `sh` and `dirs`. The result is the raw SH sum; 3DGS adds 0.5 afterwards.
    """
    k = num_sh_coeffs(deg)
    if sh.shape[-2] < k:
        raise ValueError(f"degree {deg} needs {k} SH coefficients, got sh of shape {tuple(sh.shape)} ([..., K, 3])")
    basis = sh_basis(deg, dirs.to(sh.dtype))  # [..., k]
    return (basis.unsqueeze(-1) * sh[..., :k, :]).sum(dim=-2)


def RGB2SH(rgb):
    """DC coefficient that makes a degree-0 model show `rgb` (after the renderer's +0.5)."""
    return (rgb - 0.5) / C0


def SH2RGB(sh):
    """Inverse of RGB2SH for the DC coefficient."""
    return sh * C0 + 0.5
