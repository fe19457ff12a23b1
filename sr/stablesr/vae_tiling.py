"""Tiled SD-VAE encoding and CFW decoding for large outputs (sr_refine.py --vae_tile / --vae_tile_overlap).

The autoencoders' activations at full resolution dominate memory for 2016x1512 outputs (hundreds of
channels at the image size). With tiling, the image is cut into overlapping tiles of `tile` pixels
(`overlap` pixels shared by neighbours, both multiples of the VAE factor 8), each tile runs on its own,
and the results are blended with weights that ramp linearly over the overlap, normalised by their sum:
  encode: each pixel tile -> its posterior moments, blended in latent space (then mean / sample);
  decode: each latent tile + the CFW encoder's features of the same LR region -> a pixel tile, blended.
Peak memory is then that of one tile. GroupNorm statistics are per tile, so results differ slightly
from untiled ones (tests/test_stablesr.py bounds it); an image no larger than a tile is processed whole.
"""
from typing import Callable, List, Tuple

import torch

from utils.errors import ThreeDSRError

FACTOR = 8  # pixels per latent pixel


def check_tiling(tile: int, overlap: int):
    if tile < 0 or tile % FACTOR or overlap < 0 or overlap % FACTOR or (tile and overlap >= tile):
        raise ThreeDSRError(f"--vae_tile {tile} / --vae_tile_overlap {overlap}: both must be multiples of {FACTOR} "
                         "pixels, with 0 <= overlap < tile (tile 0 = no tiling)")


def tile_spans(length: int, tile: int, overlap: int) -> List[Tuple[int, int]]:
    """(start, size) of overlapping tiles covering [0, length): stride tile - overlap, the last one
    moved back to end at `length`; one span when length <= tile."""
    if length <= tile:
        return [(0, length)]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return [(s, tile) for s in starts]


def ramp(size: int, overlap: int, device) -> torch.Tensor:
    """Blend weight along one axis of a tile: rises linearly over `overlap` at both ends, 1 inside, > 0."""
    i = torch.arange(size, dtype=torch.float32, device=device) + 0.5
    if overlap <= 0:
        return torch.ones(size, device=device)
    return torch.minimum(torch.ones_like(i), torch.minimum(i, size - i) / overlap)


def _blend(size, spans_y, spans_x, make_tile: Callable, overlap: int, scale: int, device) -> torch.Tensor:
    """Accumulate make_tile(y, h, x, w) (latent coordinates) at `scale` x those coordinates, weighted;
    `size` = (H, W) of the result."""
    acc = None
    wsum = torch.zeros(size, dtype=torch.float32, device=device)
    for y, h in spans_y:
        wy = ramp(h * scale, overlap * scale, device)
        for x, w in spans_x:
            out = make_tile(y, h, x, w).float()
            if acc is None:
                acc = torch.zeros(out.shape[:-2] + tuple(size), dtype=torch.float32, device=device)
            weight = wy[:, None] * ramp(w * scale, overlap * scale, device)[None, :]
            acc[..., y * scale:(y + h) * scale, x * scale:(x + w) * scale] += out * weight
            wsum[y * scale:(y + h) * scale, x * scale:(x + w) * scale] += weight
    return acc / wsum


def tiled_encode(encode: Callable, images: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """encode(images [B, 3, H, W]) -> [B, C, H/8, W/8] on overlapping pixel tiles, blended in latent space."""
    H, W = images.shape[-2:]
    t, o = tile // FACTOR, overlap // FACTOR
    spans_y, spans_x = tile_spans(H // FACTOR, t, o), tile_spans(W // FACTOR, t, o)
    if len(spans_y) == 1 and len(spans_x) == 1:
        return encode(images)

    def make(y, h, x, w):
        return encode(images[..., y * FACTOR:(y + h) * FACTOR, x * FACTOR:(x + w) * FACTOR])
    return _blend((H // FACTOR, W // FACTOR), spans_y, spans_x, make, o, 1, images.device)


def tiled_decode(decode: Callable, z: torch.Tensor, guide: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """decode(z [B, C, h, w], guide [B, 3, 8h, 8w]) -> [B, 3, 8h, 8w] on overlapping latent tiles (tile
    and overlap in pixels), each decoded with the guide's same region, blended in pixel space."""
    h_lat, w_lat = z.shape[-2:]
    t, o = tile // FACTOR, overlap // FACTOR
    spans_y, spans_x = tile_spans(h_lat, t, o), tile_spans(w_lat, t, o)
    if len(spans_y) == 1 and len(spans_x) == 1:
        return decode(z, guide)

    def make(y, h, x, w):
        return decode(z[..., y:y + h, x:x + w],
                      guide[..., y * FACTOR:(y + h) * FACTOR, x * FACTOR:(x + w) * FACTOR])
    return _blend((h_lat * FACTOR, w_lat * FACTOR), spans_y, spans_x, make, o, FACTOR, z.device)
