"""Reference rasterizer in pure PyTorch: tiled, depth-sorted, front-to-back alpha compositing.

It is the specification of the renderer: every fast backend is tested against it (images and
gradients). Differentiable by autograd. Memory is bounded by compositing tiles in chunks of
similar length, each under activation checkpointing.
"""
import math

import torch
from torch.utils.checkpoint import checkpoint

from gaussian_renderer.projection import ALPHA_MAX, ALPHA_MIN, T_MIN, TILE, project_gaussians, tile_ranges

CHUNK_ELEMENTS = 1 << 21  # tiles x gaussians x pixels evaluated at once
CHECKPOINT_ABOVE = 1 << 23  # padded elements of a whole image above which chunks are checkpointed


def bin_gaussians(means2d, radii, depths, width, height, tile=TILE):
    """Sort (tile, Gaussian) pairs by tile then depth.

    Returns gauss_ids [P] (sorted), tile_start [T], tile_count [T], tiles_x, tiles_y.
    """
    x0, x1, y0, y1, tiles_x, tiles_y = tile_ranges(means2d, radii, width, height, tile)
    w, h = (x1 - x0).clamp_min(0), (y1 - y0).clamp_min(0)
    counts = w * h
    n_tiles = tiles_x * tiles_y
    dev = means2d.device
    ids = torch.nonzero(counts > 0).squeeze(1)
    if ids.numel() == 0:
        z = torch.zeros(n_tiles, dtype=torch.int64, device=dev)
        return torch.zeros(0, dtype=torch.int64, device=dev), z, z, tiles_x, tiles_y
    counts_v = counts[ids]
    total = int(counts_v.sum())
    g = torch.repeat_interleave(ids, counts_v)
    first = torch.repeat_interleave(torch.cumsum(counts_v, 0) - counts_v, counts_v)
    local = torch.arange(total, dtype=torch.int64, device=dev) - first
    tile_x = x0[g] + local % w[g]
    tile_y = y0[g] + local // w[g]
    tile_id = tile_y * tiles_x + tile_x
    # depth rank: stable ordering by depth, ties by index
    order = torch.argsort(depths.detach(), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=dev)
    key = tile_id * means2d.shape[0] + rank[g]
    sort = torch.argsort(key)
    g_sorted = g[sort]
    tile_count = torch.bincount(tile_id, minlength=n_tiles)
    tile_start = torch.cumsum(tile_count, 0) - tile_count
    return g_sorted, tile_start, tile_count, tiles_x, tiles_y


def _composite_chunk(pix, mean, conic, opac, color, depth, valid, background):
    """Composite one chunk of tiles.

    pix [T, P, 2] pixel centres; mean [T, K, 2], conic [T, K, 3], opac [T, K], color [T, K, 3],
    depth [T, K], valid [T, K] bool (padding mask), background [3].
    Returns color [T, P, 3], depth [T, P], alpha [T, P].
    """
    # The Gaussian exponent is a quadratic in the pixel position, so all T x K x P exponents are one
    # batched matrix product of per-Gaussian coefficients [T, K, 6] with pixel monomials [T, 6, P].
    # Coordinates are taken relative to each tile's first pixel centre to keep fp32 cancellation small.
    origin = pix[:, :1, :]  # [T, 1, 2]
    m = mean - origin
    q = pix - origin
    a, b, c = conic[..., 0], conic[..., 1], conic[..., 2]
    mx, my = m[..., 0], m[..., 1]
    coef = torch.stack([
        -0.5 * (a * mx * mx + c * my * my) - b * mx * my,  # 1
        a * mx + b * my,                                    # px
        c * my + b * mx,                                    # py
        -0.5 * a,                                           # px^2
        -0.5 * c,                                           # py^2
        -b,                                                 # px py
    ], dim=-1)
    qx, qy = q[..., 0], q[..., 1]
    mono = torch.stack([torch.ones_like(qx), qx, qy, qx * qx, qy * qy, qx * qy], dim=1)  # [T, 6, P]
    power = torch.bmm(coef, mono)  # [T, K, P]
    alpha = torch.clamp(opac[..., None] * torch.exp(power), max=ALPHA_MAX)
    with torch.no_grad():
        use = valid[..., None] & (power <= 0) & (alpha >= ALPHA_MIN)
        # A Gaussian is composited only while the transmittance *after* it stays >= T_MIN;
        # transmittance only falls, so this keeps a prefix of each pixel's list (3DGS's early stop).
        a_used = alpha * use
        use &= torch.cumsum(torch.log1p(-a_used), dim=1) >= math.log(T_MIN)
    alpha = alpha * use
    # Transmittance in log space: cumsum's backward is cheaper than cumprod's, and the sums stay
    # bounded (>= log 1e-4 + log 0.01) because terminated entries are zero.
    one_minus = 1.0 - alpha  # >= 0.01
    trans_incl = torch.exp(torch.cumsum(torch.log(one_minus), dim=1))
    trans_excl = trans_incl / one_minus
    weight = alpha * trans_excl  # [T, K, P]
    rgb = torch.bmm(weight.transpose(1, 2), color)  # [T, P, 3]
    dep = torch.bmm(weight.transpose(1, 2), depth[..., None]).squeeze(-1)
    final_t = trans_incl[:, -1]  # [T, P]
    rgb = rgb + final_t[..., None] * background
    return rgb, dep, 1.0 - final_t


def rasterize(means, quats, scales, opacities, colors, viewmat, K, width, height, background,
              kernel_size=0.1, means2d_offset=None, compensate=True):
    """Render one view.

    Args: means [N, 3], quats [N, 4], scales [N, 3], opacities [N], colors [N, 3] (per-Gaussian RGB),
        viewmat [4, 4] world-to-camera, K [3, 3], background [3].
        kernel_size, compensate: the 2D filter (projection.project_gaussians): Mip-Splatting's is
        (0.1, True), Inria 3DGS's (projection.INRIA_DILATION, False).
        means2d_offset [N, 2] or None: a zero tensor added to the projected means so that its .grad
        is dL/d(means2d) in pixels (used by densification).
    Returns dict: image [3, H, W], depth [1, H, W] (alpha-weighted camera z), alpha [1, H, W],
        radii [N], means2d [N, 2].
    """
    proj = project_gaussians(means, quats, scales, opacities, viewmat, K, width, height, kernel_size, compensate)
    means2d = proj["means2d"]
    if means2d_offset is not None:
        means2d = means2d + means2d_offset
    radii = proj["radii"]
    gids, tile_start, tile_count, tiles_x, tiles_y = bin_gaussians(means2d, radii, proj["depths"], width, height)
    n_tiles = tiles_x * tiles_y
    dtype, dev = means.dtype, means.device

    # Pixel centres of every tile, [n_tiles, TILE*TILE, 2].
    ty, tx = torch.meshgrid(torch.arange(tiles_y, device=dev), torch.arange(tiles_x, device=dev), indexing="ij")
    py, px = torch.meshgrid(torch.arange(TILE, device=dev), torch.arange(TILE, device=dev), indexing="ij")
    pix_x = (tx.reshape(-1, 1) * TILE + px.reshape(1, -1)).to(dtype) + 0.5
    pix_y = (ty.reshape(-1, 1) * TILE + py.reshape(1, -1)).to(dtype) + 0.5
    pix = torch.stack([pix_x, pix_y], dim=-1)

    n_pix = TILE * TILE
    checkpointing = int(tile_count.max()) * n_tiles * n_pix > CHECKPOINT_ABOVE if n_tiles else False
    background = background.to(dtype)
    # Tiles sorted by length so each chunk pads to a similar K.
    order = torch.argsort(tile_count, descending=True)
    counts_sorted = tile_count[order].tolist()
    pieces, tile_order = [], []
    i = 0
    empty_tiles = []
    while i < n_tiles:
        k = counts_sorted[i]
        if k == 0:
            empty_tiles = order[i:]
            break
        per_chunk = max(1, CHUNK_ELEMENTS // (k * n_pix))
        sel = order[i:i + per_chunk]
        i += sel.numel()
        ar = torch.arange(k, device=dev)
        idx = tile_start[sel][:, None] + ar[None, :]
        valid = ar[None, :] < tile_count[sel][:, None]
        idx = torch.where(valid, idx, torch.zeros_like(idx))
        g = gids[idx]
        args = (pix[sel], means2d[g], proj["conics"][g], proj["opacities"][g], colors[g],
                proj["depths"][g], valid, background)
        # Checkpointing trades a second forward for memory; only worth it for large problems.
        if torch.is_grad_enabled() and means.requires_grad and checkpointing:
            res = checkpoint(_composite_chunk, *args, use_reentrant=False)
        else:
            res = _composite_chunk(*args)
        pieces.append(res)
        tile_order.append(sel)
    if len(empty_tiles):
        ne = len(empty_tiles)
        pieces.append((background.expand(ne, n_pix, 3), torch.zeros(ne, n_pix, dtype=dtype, device=dev),
                       torch.zeros(ne, n_pix, dtype=dtype, device=dev)))
        tile_order.append(empty_tiles)
    tile_order = torch.cat(tile_order)
    inv = torch.empty_like(tile_order)
    inv[tile_order] = torch.arange(n_tiles, device=dev)
    rgb = torch.cat([p[0] for p in pieces])[inv]
    dep = torch.cat([p[1] for p in pieces])[inv]
    alp = torch.cat([p[2] for p in pieces])[inv]

    def to_image(t, ch):
        t = t.reshape(tiles_y, tiles_x, TILE, TILE, ch).permute(4, 0, 2, 1, 3)
        return t.reshape(ch, tiles_y * TILE, tiles_x * TILE)[:, :height, :width]

    return {"image": to_image(rgb, 3), "depth": to_image(dep[..., None], 1),
            "alpha": to_image(alp[..., None], 1), "radii": radii, "means2d": means2d}
