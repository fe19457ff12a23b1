"""Real-ESRGAN's generator (RRDBNet, ESRGAN's "residual in residual dense block" network) and tiled inference.

Architecture as in ESRGAN (Wang et al. 2018) / Real-ESRGAN (Wang et al. 2021), with the parameter names of
the official `RealESRGAN_x4plus.pth` (`params_ema`) so it loads strictly:

    conv_first -> body (num_block RRDBs) -> conv_body, + conv_first's output
    -> [nearest x2 -> conv_up1 -> LeakyReLU(0.2)] -> [nearest x2 -> conv_up2 -> LeakyReLU(0.2)]
    -> conv_hr -> LeakyReLU(0.2) -> conv_last
    RRDB(x)  = x + 0.2 * rdb3(rdb2(rdb1(x)))
    RDB(x)   = x + 0.2 * conv5([x, x1, x2, x3, x4]),  x_k = LeakyReLU(0.2)(conv_k([x, x1, .., x_{k-1}]))

Every convolution is 3x3, stride 1, zero padding 1. For scale 2 / 1 (RealESRGAN_x2plus) the input is first
pixel-unshuffled by 2 / 4, so the trunk always runs at 1/4 of the output resolution.

Weights files (see sr.image_sr.load_isr_model): the official `.pth` (torch.load with weights_only), or our
`.safetensors`: the same keys, tensors in their source precision (the ncnn conversion keeps fp16 weights and
fp32 biases, i.e. exactly what the ncnn files hold), hyper-parameters in the metadata (`RRDB_METADATA_KEYS`;
derived from the shapes when absent).
"""
import dataclasses
import os
import re
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sr.image_sr import ImageSR
from utils.errors import ModelNotFoundError

RRDB_METADATA_KEYS = ("num_in_ch", "num_out_ch", "scale", "num_feat", "num_block", "num_grow_ch")
SAFETENSORS_FORMAT = "3dsr RRDBNet"
LEAKY_SLOPE = 0.2
RESIDUAL_SCALE = 0.2


@dataclasses.dataclass(frozen=True)
class RRDBConfig:
    """RRDBNet hyper-parameters; the defaults are RealESRGAN_x4plus's."""
    num_in_ch: int = 3
    num_out_ch: int = 3
    scale: int = 4
    num_feat: int = 64
    num_block: int = 23
    num_grow_ch: int = 32

    def __post_init__(self):
        if self.scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, got {self.scale}")

    @property
    def unshuffle(self) -> int:
        """Pixel-unshuffle factor applied to the input (4 // scale)."""
        return 4 // self.scale

    def to_metadata(self) -> Dict[str, str]:
        return {k: str(getattr(self, k)) for k in RRDB_METADATA_KEYS}


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions; output x + 0.2 * conv5(...). Shapes keep [B, num_feat, h, w]."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        for k in range(1, 5):
            setattr(self, f"conv{k}", nn.Conv2d(num_feat + (k - 1) * num_grow_ch, num_grow_ch, 3, 1, 1))
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x):
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), LEAKY_SLOPE))
        return x + RESIDUAL_SCALE * self.conv5(torch.cat(feats, 1))


class RRDB(nn.Module):
    """Three residual dense blocks with a 0.2-scaled skip over all three."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x):
        return x + RESIDUAL_SCALE * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """ESRGAN generator: [B, num_in_ch, h, w] -> [B, num_out_ch, scale*h, scale*w] (no clamping).

    h and w must be multiples of 4 // scale (1 for the x4 model)."""

    def __init__(self, config: RRDBConfig = RRDBConfig()):
        super().__init__()
        self.config = config
        nf = config.num_feat
        self.conv_first = nn.Conv2d(config.num_in_ch * config.unshuffle ** 2, nf, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(nf, config.num_grow_ch) for _ in range(config.num_block)])
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, config.num_out_ch, 3, 1, 1)

    def forward(self, x):
        if self.config.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.config.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), LEAKY_SLOPE)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), LEAKY_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), LEAKY_SLOPE))


# ---- state dicts --------------------------------------------------------------------------------
def conv_names(config: RRDBConfig):
    """Convolution names in forward (and ncnn layer) order with their (out, in) channels."""
    nf, gc = config.num_feat, config.num_grow_ch
    yield "conv_first", nf, config.num_in_ch * config.unshuffle ** 2
    for b in range(config.num_block):
        for r in (1, 2, 3):
            for k in range(1, 6):
                yield f"body.{b}.rdb{r}.conv{k}", (nf if k == 5 else gc), nf + (k - 1) * gc
    yield "conv_body", nf, nf
    for name in ("conv_up1", "conv_up2", "conv_hr"):
        yield name, nf, nf
    yield "conv_last", config.num_out_ch, nf


def expected_shapes(config: RRDBConfig) -> Dict[str, Tuple[int, ...]]:
    """state_dict key -> shape for `config` (3x3 kernels with biases)."""
    shapes = {}
    for name, out_ch, in_ch in conv_names(config):
        shapes[f"{name}.weight"] = (out_ch, in_ch, 3, 3)
        shapes[f"{name}.bias"] = (out_ch,)
    return shapes


def config_from_state_dict(state: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None,
                           source: str = "weights") -> RRDBConfig:
    """Hyper-parameters from safetensors metadata when present, else derived from the tensors' shapes."""
    if metadata and all(k in metadata for k in RRDB_METADATA_KEYS):
        try:
            return RRDBConfig(**{k: int(metadata[k]) for k in RRDB_METADATA_KEYS})
        except ValueError as exc:
            raise ModelNotFoundError(f"{source}: bad RRDBNet metadata ({exc})") from None
    needed = ("conv_first.weight", "body.0.rdb1.conv1.weight", "conv_last.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise ModelNotFoundError(f"{source} is not an RRDBNet (Real-ESRGAN) state dict: no {', '.join(missing)}")
    first, last = state["conv_first.weight"], state["conv_last.weight"]
    in_ch, out_ch = int(first.shape[1]), int(last.shape[0])
    blocks = {int(m.group(1)) for k in state for m in [re.match(r"body\.(\d+)\.", k)] if m}
    # conv_first sees num_in_ch * unshuffle^2 channels; an RGB model has 3, 12 or 48
    scale = {3: 4, 12: 2, 48: 1}.get(in_ch)
    if scale is None:
        raise ModelNotFoundError(f"{source}: conv_first takes {in_ch} channels; expected 3, 12 or 48 (RGB at "
                                 "scale 4, 2 or 1)")
    return RRDBConfig(num_in_ch=3, num_out_ch=out_ch, scale=scale, num_feat=int(first.shape[0]),
                      num_block=max(blocks) + 1, num_grow_ch=int(state["body.0.rdb1.conv1.weight"].shape[0]))


def check_state_dict(state: Dict[str, torch.Tensor], config: RRDBConfig, source: str = "weights"):
    """ModelNotFoundError (one line) unless `state` has exactly RRDBNet(config)'s keys and shapes, all finite."""
    want = expected_shapes(config)
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {want[k]})" for k in want
             if k in state and tuple(state[k].shape) != want[k]]
    problems = [f"{what} {', '.join(items[:3])}" + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
                for what, items in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if items]
    if problems:
        raise ModelNotFoundError(f"{source} does not match RRDBNet({_config_str(config)}): {'; '.join(problems)}")
    bad = [k for k, v in state.items() if not torch.isfinite(v.float()).all()]
    if bad:
        raise ModelNotFoundError(f"{source}: non-finite values in {', '.join(bad[:3])}")


def _config_str(config: RRDBConfig) -> str:
    return ", ".join(f"{k}={getattr(config, k)}" for k in RRDB_METADATA_KEYS)


def read_weights(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(state_dict on CPU, metadata) from our `.safetensors` or an official Real-ESRGAN `.pth`.

    A `.pth` is read with torch.load(weights_only=True); its state dict is `params_ema`, else `params`,
    else the top-level dict itself (metadata {"pth_key": which}). Unreadable files raise ModelNotFoundError.
    """
    path = os.fspath(path)
    source = f"Real-ESRGAN weights '{path}'"
    if path.endswith(".safetensors"):
        try:
            from safetensors import safe_open
            with safe_open(path, framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                state = {k: f.get_tensor(k) for k in f.keys()}
        except ImportError:
            raise ModelNotFoundError("reading .safetensors weights needs the `safetensors` package: "
                                     "pip install safetensors") from None
        except Exception as exc:  # truncated / not a safetensors file
            raise ModelNotFoundError(f"{source} are unreadable ({_one_line(exc)}); fetch them again "
                                     "with `python tools/fetch_isr_weights.py --force`") from None
        fmt = metadata.get("format")
        if fmt is not None and fmt != SAFETENSORS_FORMAT:
            raise ModelNotFoundError(f"{source} hold '{fmt}', not an RRDBNet ('{SAFETENSORS_FORMAT}')")
        return state, metadata
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelNotFoundError(f"{source} are unreadable as a PyTorch checkpoint ({_one_line(exc)})") from None
    used = ""
    if isinstance(obj, dict):
        for key in ("params_ema", "params"):
            if isinstance(obj.get(key), dict):
                obj, used = obj[key], key
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelNotFoundError(f"{source}: no state dict (expected `params_ema` or `params` of tensors)")
    return dict(obj), {"pth_key": used or "(top level)"}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def build_rrdbnet(state: Dict[str, torch.Tensor], config: RRDBConfig, device, dtype,
                  source: str = "weights") -> RRDBNet:
    """RRDBNet(config) built on `device` (never torch's default device), weights loaded strictly, in eval mode."""
    check_state_dict(state, config, source)
    device = torch.device(device)
    with torch.device(device):
        net = RRDBNet(config)
    net.load_state_dict({k: v.to(device=device, dtype=torch.float32) for k, v in state.items()}, strict=True)
    # channels-last: oneDNN's fast convolution layout on CPU (~15x faster here: 0.45 s vs 7.6 s for a 64x64
    # input on 2 cores), and the tensor-core layout on CUDA
    return net.to(dtype=dtype, memory_format=torch.channels_last).eval().requires_grad_(False)


def save_rrdbnet_safetensors(path: str, state: Dict[str, torch.Tensor], config: RRDBConfig,
                             metadata: Optional[Dict[str, str]] = None) -> str:
    """Write `state` (checked against `config`) and its hyper-parameters atomically; returns `path`.

    Tensors are stored as given (their dtype is kept: fp16 stays fp16)."""
    from safetensors.torch import save

    from utils.system_utils import atomic_write
    check_state_dict(state, config, f"state dict for {path}")
    meta = {"format": SAFETENSORS_FORMAT, "arch": "RRDBNet", **config.to_metadata(), **(metadata or {})}
    blob = save({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, metadata=meta)
    with atomic_write(path) as f:
        f.write(blob)
    return path


# ---- tiled inference ---------------------------------------------------------------------------
def tile_bounds(size: int, tile: int):
    """Split [0, size) into ceil(size / tile) near-equal spans [(start, end), ...] (one span if tile <= 0)."""
    if tile <= 0 or size <= tile:
        return [(0, size)]
    n = -(-size // tile)
    edges = [round(i * size / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


@torch.no_grad()
def tiled_forward(net: nn.Module, image: torch.Tensor, scale: int, tile: int, overlap: int,
                  out: torch.Tensor, compute_device, compute_dtype, align: int = 1) -> torch.Tensor:
    """Run `net` over `image` [1, C, h, w] tile by tile and write the result into `out` [1, C', s*h, s*w].

    Each tile (a near-equal split of the image into spans of at most `tile` LR pixels per side) is computed
    on its span grown by `overlap` pixels on every side (clipped at the image border, where the network's
    own zero padding applies as it does untiled) and only the span's own output pixels are kept. The
    result equals the untiled one exactly wherever the network's receptive field fits inside the overlap,
    and up to the influence of the context left outside it otherwise (RRDBNet-x4plus's receptive field is
    far wider than any overlap; its influence decays fast: see tests/test_realesrgan.py). Peak memory is
    that of one (tile + 2 overlap)^2 tile. `align`: spans start on multiples of it (the pixel-unshuffle
    factor of x2 / x1 models).
    """
    _, _, h, w = image.shape
    span = max(tile // align, 1) if tile > 0 else 0
    pad = -(-overlap // align) * align
    for y0, y1 in tile_bounds(h // align, span):
        for x0, x1 in tile_bounds(w // align, span):
            y0a, y1a, x0a, x1a = y0 * align, y1 * align, x0 * align, x1 * align
            ey0, ey1 = max(y0a - pad, 0), min(y1a + pad, h)
            ex0, ex1 = max(x0a - pad, 0), min(x1a + pad, w)
            piece = image[:, :, ey0:ey1, ex0:ex1].to(device=compute_device, dtype=compute_dtype,
                                                      memory_format=torch.channels_last)
            res = net(piece)
            oy, ox = (y0a - ey0) * scale, (x0a - ex0) * scale
            out[:, :, y0a * scale:y1a * scale, x0a * scale:x1a * scale] = \
                res[:, :, oy:oy + (y1a - y0a) * scale, ox:ox + (x1a - x0a) * scale].to(out)
    return out


class RealESRGAN(ImageSR):
    """Real-ESRGAN (RRDBNet) behind the ImageSR interface; see sr.image_sr.load_isr_model.

    `upscale` runs one image at a time, tile by tile (`tile` LR pixels per side, 0 = whole image, grown by
    `tile_overlap` of context), so peak memory is that of one tile whatever the batch or image size.
    """

    def __init__(self, net: RRDBNet, name: str, device, dtype, tile: int = 256, tile_overlap: int = 32,
                 weights_sha256: str = ""):
        if tile < 0 or tile_overlap < 0:
            raise ValueError(f"tile ({tile}) and tile_overlap ({tile_overlap}) must be >= 0")
        self.net = net
        self.config = net.config
        self.name, self.scale = name, int(net.config.scale)
        self.device, self.dtype = torch.device(device), dtype
        self.tile, self.tile_overlap = int(tile), int(tile_overlap)
        self.options = {"tile": self.tile, "tile_overlap": self.tile_overlap, "dtype": str(dtype).replace("torch.", ""),
                        "weights_sha256": weights_sha256}

    @torch.no_grad()
    def upscale(self, images: torch.Tensor) -> torch.Tensor:
        images = self._check_images(images)
        b, c, h, w = images.shape
        align = self.config.unshuffle
        if h % align or w % align:
            raise ValueError(f"{self.name} (x{self.scale}) needs LR sizes divisible by {align}, got {w}x{h}")
        out = torch.empty((b, self.config.num_out_ch, h * self.scale, w * self.scale), dtype=torch.float32,
                          device=images.device)
        for i in range(b):
            tiled_forward(self.net, images[i:i + 1], self.scale, self.tile, self.tile_overlap, out[i:i + 1],
                          self.device, self.dtype, align)
        return out.clamp_(0.0, 1.0)
