"""StableSR's latent tiling ("aggregation sampling"): the denoiser runs on overlapping square tiles
of the latent and the tile outputs are blended with Gaussian weights, so any image size fits in bounded
memory. Reproduces the original exactly, including its two quirks:

- the weight's horizontal centre is (size - 1) / 2 but its vertical centre is size / 2 (half a pixel
  low), so the blend is slightly asymmetric; `symmetric=True` centres both (not the original);
- tiles step by (tile - overlap) from 0 and the last tile of a row/column is pinned to the far edge.
"""
from typing import Iterator, List, Tuple

import numpy as np
import torch


def gaussian_tile_weights(tile: int, symmetric: bool = False, var: float = 0.01) -> torch.Tensor:
    """[tile, tile] float64 weights: outer(g_y, g_x), g(u) = exp(-(u - mid)^2 / tile^2 / (2 var)) / sqrt(2 pi var)."""
    u = np.arange(tile, dtype=np.float64)
    norm = np.sqrt(2 * np.pi * var)
    gx = np.exp(-(u - (tile - 1) / 2) ** 2 / (tile * tile) / (2 * var)) / norm
    mid_y = (tile - 1) / 2 if symmetric else tile / 2
    gy = np.exp(-(u - mid_y) ** 2 / (tile * tile) / (2 * var)) / norm
    return torch.from_numpy(np.outer(gy, gx))


def _offsets(size: int, tile: int, overlap: int) -> List[int]:
    n, end = 0, 0
    while end < size:
        end = max(n * (tile - overlap), 0) + tile
        n += 1
    return [size - tile if k == n - 1 else k * (tile - overlap) for k in range(n)]


def tile_grid(height: int, width: int, tile: int, overlap: int) -> List[Tuple[int, int]]:
    """(y0, x0) of every tile in the original's order (column of tiles per x offset, top to bottom)."""
    if height < tile or width < tile:
        raise ValueError(f"latent {height}x{width} is smaller than the tile size {tile}; run it untiled")
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, {tile - 1}], got {overlap}")
    return [(y, x) for x in _offsets(width, tile, overlap) for y in _offsets(height, tile, overlap)]


def batched(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), max(1, size)):
        yield items[i:i + max(1, size)]


def blend_tiles(shape, tiles: List[Tuple[int, int]], outputs: List[torch.Tensor], tile: int,
                weights: torch.Tensor) -> torch.Tensor:
    """Weighted average of tile outputs [B, C, tile, tile] placed at `tiles` on a [B, C, H, W] canvas."""
    dev = outputs[0].device
    w = weights.to(dev)
    acc = torch.zeros(shape, dtype=torch.float64, device=dev)
    cnt = torch.zeros(shape[-2:], dtype=torch.float64, device=dev)
    for (y, x), out in zip(tiles, outputs):
        acc[..., y:y + tile, x:x + tile] += out.double() * w
        cnt[y:y + tile, x:x + tile] += w
    return (acc / cnt).float()
