"""Peak-memory estimate of an SR stage, printed before it starts and used to switch on tiling.

The estimate adds up what lives at the peak (bytes):
  baseline    the process itself (Python, torch, diffusers; CPU only: CUDA counts allocations)
  gaussians   parameters, gradients and two Adam moments of every Gaussian, densification headroom
  fit         one fit iteration's working set at HR (render, its backward, SSIM), per HR pixel
  views       the HR targets (on --data_device) and the stacked HR renders (on --device)
  sr weights  the diffusion model's weight files (0 for bicubic)
  sr work     the diffusion model's activations for `sr_batch` views at HR (or one tile when tiled)
The per-pixel constants were measured on these CPUs (fit: 10 views, 480x360 vs 960x720 HR, cpu backend,
peak RSS 616 vs 1092 MB), the SR ones are from the networks' full-resolution channel counts. It is an
estimate: tests hold it within 2x of the measured CPU peak; GPU figures come from scripts/gpu_smoke.sh.
"""
import os
from dataclasses import dataclass, field

import torch

MiB = 1 << 20
GiB = 1 << 30
BASELINE_BYTES = {"cpu": 450 * MiB, "cuda": 0}
FIT_BYTES_PER_HR_PIXEL = 680        # render + backward + SSIM of one view, fp32
VIEW_BYTES_PER_HR_PIXEL = 12        # one float32 RGB image
DENSIFY_HEADROOM = 2.0              # Gaussians may double while densifying
# SR activations per HR pixel per view at fp32 (fp16 halves it): an SD-VAE decoder keeps ~128-channel
# full-resolution feature maps (input, output, norm) alive; our pixel prior runs at half resolution.
SR_BYTES_PER_HR_PIXEL = {"SDx4Upscaler": 3072, "StableSRTurbo": 4096, "PixelPriorSR": 1024,
                         "RealESRGAN": 512}  # RRDBNet: 64-channel maps after the x4 upsampling
DEFAULT_SR_BYTES_PER_HR_PIXEL = 3072
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pth", ".pt")


@dataclass
class MemoryEstimate:
    parts: dict = field(default_factory=dict)  # name -> bytes on `device`
    device: str = "cpu"

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    def describe(self) -> str:
        items = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items() if v)
        return f"~{self.total / GiB:.2f} GiB on {self.device} ({items} GiB)"


def gaussian_bytes(num_gaussians: int, sh_degree: int, densify: bool) -> int:
    floats = 3 + 3 * (sh_degree + 1) ** 2 + 1 + 3 + 4  # xyz, SH, opacity, scale, rotation
    per = floats * 4 * 4 + 4 * 4  # value, grad, two Adam moments; 3D filter + 3 densify statistics
    return int(num_gaussians * per * (DENSIFY_HEADROOM if densify else 1.0))


def weights_bytes(folder) -> int:
    """Size of the weight files under a model folder (what the networks take once loaded)."""
    if not folder or not os.path.isdir(folder):
        return 0
    total = 0
    for root, _, files in os.walk(folder):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files if f.endswith(WEIGHT_SUFFIXES))
    return total + base_model_bytes(folder)


def base_model_bytes(folder) -> int:
    """A pixel prior v2 also holds its base's image SR model (sr.pixel_prior): that weights file's size."""
    import json
    try:
        with open(os.path.join(folder, "prior_config.json")) as f:
            base = json.load(f).get("base", "bicubic")
    except (OSError, ValueError):
        return 0
    if base == "bicubic":
        return 0
    from sr.image_sr import resolve_isr_weights
    from utils.errors import ModelNotFoundError
    try:
        return os.path.getsize(resolve_isr_weights(base))
    except (ModelNotFoundError, OSError):
        return 0  # loading the prior reports the missing weights


def device_capacity(device) -> int:
    """Bytes the device has: a GPU's total memory, or the machine's RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def estimate_sr_memory(*, views: int, hr_width: int, hr_height: int, num_gaussians: int, sh_degree: int,
                       device, data_device=None, densify: bool = True, sr_kind: str = "", sr_weights: int = 0,
                       sr_dtype_bytes: int = 4, sr_batch: int = 1, sr_tile: int = 0) -> MemoryEstimate:
    """The peak on `device` (the model's; the SR model is assumed there too). `sr_kind`: the adapter's class
    name ('' for bicubic); `sr_tile`: the tile edge in HR pixels when the SR model decodes in tiles."""
    device = torch.device(device)
    data_device = torch.device(data_device) if data_device is not None else device
    px = hr_width * hr_height
    parts = {"baseline": BASELINE_BYTES.get(device.type, 0),
             "gaussians": gaussian_bytes(num_gaussians, sh_degree, densify),
             "fit": FIT_BYTES_PER_HR_PIXEL * px,
             "views": VIEW_BYTES_PER_HR_PIXEL * px * views * (2 if data_device == device else 1)}
    if sr_kind:
        per_px = SR_BYTES_PER_HR_PIXEL.get(sr_kind, DEFAULT_SR_BYTES_PER_HR_PIXEL) * sr_dtype_bytes // 4
        active = min(px, sr_tile * sr_tile) if sr_tile else px * max(1, int(sr_batch))
        parts["sr weights"] = int(sr_weights)
        parts["sr work"] = int(per_px * active)
    return MemoryEstimate(parts=parts, device=str(device))
