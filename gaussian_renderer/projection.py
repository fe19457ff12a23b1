"""Projection of 3D Gaussians to screen-space 2D Gaussians (EWA splatting, Zwicker et al. 2001),
with a screen-space filter. Pure PyTorch; shared by the reference backend and used as the
specification every other backend is tested against.

The 2D filter is (variance, compensate): `variance` pixels^2 is added to the diagonal of every screen
covariance, and with `compensate` the opacity is scaled by sqrt(det(S) / det(S + variance I)) so the
splat keeps its energy. The two conventions in use:
  Mip-Splatting (and 3dsr): (kernel_size = 0.1, compensate=True), its "2D mip filter" (eq. 11);
  Inria 3DGS:               (0.3, compensate=False), a fixed dilation that brightens small splats.
A model renders as trained only under its own convention: under the other, sub-pixel splats change
brightness by 2x and more (scene/conventions.py records and detects which one a model folder uses).
"""
import torch

from utils.graphics_utils import quaternion_to_rotation

NEAR_PLANE = 0.01       # camera-space depth below which a Gaussian is culled (gsplat's default)
ALPHA_MIN = 1.0 / 255.0  # contributions below this alpha are skipped (3DGS)
ALPHA_MAX = 0.99         # alpha clamp, so transmittance never hits zero (3DGS)
T_MIN = 1e-4             # compositing stops once transmittance would drop below this (3DGS)
TILE = 8                 # tile edge in pixels
INRIA_DILATION = 0.3     # Inria 3DGS's screen-space dilation (pixels^2), applied without compensation


def quat_scale_to_covariance(quats, scales):
    """quats [N, 4] (w, x, y, z, any norm), scales [N, 3] -> covariances [N, 3, 3] = R S S^T R^T."""
    R = quaternion_to_rotation(quats)
    M = R * scales[:, None, :]
    return M @ M.transpose(1, 2)


def project_gaussians(means, quats, scales, opacities, viewmat, K, width, height, kernel_size=0.1,
                      compensate=True):
    """Project Gaussians into one pinhole camera.

    Args:
        means [N, 3], quats [N, 4], scales [N, 3], opacities [N]: world-space Gaussians (scales and
            opacities already include any 3D filter).
        viewmat [4, 4]: world-to-camera (OpenCV axes). K [3, 3]: intrinsics, pixel-corner origin.
        kernel_size: variance (pixels^2) of the 2D filter added to every screen covariance.
        compensate: scale the opacity by sqrt(det(S) / det(S + k I)) so each splat keeps its energy
            (Mip-Splatting eq. 11); False is Inria 3DGS's dilation (kernel_size=INRIA_DILATION).
            kernel_size 0 means no filter and no compensation either way.
    Returns dict with means2d [N, 2] (pixels), conics [N, 3] (a, b, c of the inverse covariance),
        opacities [N] (compensated), depths [N], radii [N] int (0 = culled).
    """
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ R.T + t
    x, y, z = p.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    in_front = z > NEAR_PLANE
    zs = torch.where(in_front, z, torch.ones_like(z))

    # Clamp the Jacobian's expansion point to a little beyond the view frustum: the affine
    # approximation of the perspective map explodes for far off-axis Gaussians.
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    tx = zs * torch.clamp(x / zs, -lim_x_neg, lim_x_pos)
    ty = zs * torch.clamp(y / zs, -lim_y_neg, lim_y_pos)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / zs ** 2,
                     zero, fy / zs, -fy * ty / zs ** 2], dim=-1).reshape(-1, 2, 3)
    cov3d = quat_scale_to_covariance(quats, scales)
    JW = J @ R
    cov2d = JW @ cov3d @ JW.transpose(1, 2)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det_orig = a * c - b * b
    a, c = a + kernel_size, c + kernel_size
    det = a * c - b * b
    valid = in_front & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    if compensate and kernel_size > 0:
        comp = torch.sqrt(torch.clamp(det_orig / det_safe, min=0.0))
    else:
        comp = torch.ones_like(det)
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt(torch.clamp(mid * mid - det_safe, min=0.1))
        radii = torch.ceil(3.0 * torch.sqrt(lam))
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)
    with torch.no_grad():
        mx, my = means2d[:, 0], means2d[:, 1]
        on_screen = (mx + radii > 0) & (mx - radii < width) & (my + radii > 0) & (my - radii < height)
        radii = torch.where(valid & on_screen & (radii > 0), radii, torch.zeros_like(radii)).to(torch.int32)
    return {"means2d": means2d, "conics": conics, "opacities": opacities * comp, "depths": z, "radii": radii}


def tile_ranges(means2d, radii, width, height, tile=TILE):
    """Integer tile rectangles [x0, x1) x [y0, y1) touched by each Gaussian's 3-sigma box.

    Pixel u spans [u, u+1) and is sampled at its centre u + 0.5; a Gaussian touches tile t when its
    box [m - r, m + r] overlaps the centres of some pixel in the tile.
    """
    tiles_x = (width + tile - 1) // tile
    tiles_y = (height + tile - 1) // tile
    m = means2d.detach()
    r = radii.to(m.dtype)
    x0 = torch.floor((m[:, 0] - r - 0.5) / tile).clamp(0, tiles_x).to(torch.int64)
    x1 = (torch.floor((m[:, 0] + r - 0.5) / tile) + 1).clamp(0, tiles_x).to(torch.int64)
    y0 = torch.floor((m[:, 1] - r - 0.5) / tile).clamp(0, tiles_y).to(torch.int64)
    y1 = (torch.floor((m[:, 1] + r - 0.5) / tile) + 1).clamp(0, tiles_y).to(torch.int64)
    empty = radii <= 0
    x1 = torch.where(empty, x0, x1)
    return x0, x1, y0, y1, tiles_x, tiles_y
