"""Image helpers: metrics (MSE, PSNR), area downsampling, PNG I/O, layout conversion.

Conventions: torch images are float [C,H,W] or [B,C,H,W]; numpy images are float32 [H,W,C];
values are in [0, 1].
"""
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from utils.errors import SceneFormatError
from utils.system_utils import atomic_write

__all__ = [
    "mse",
    "psnr",
    "area_downsample",
    "area_resize_np",
    "load_image",
    "save_image",
    "to_tensor_chw",
    "to_numpy_hwc",
]


def _per_image_mean(t):
    """Mean over the last three dims: [C,H,W] -> scalar, [B,C,H,W] -> [B]."""
    if t.dim() == 3:
        return t.mean()
    if t.dim() == 4:
        return t.flatten(1).mean(dim=1)
    raise ValueError(f"expected an image [C,H,W] or a batch [B,C,H,W], got shape {tuple(t.shape)}")


def mse(a, b):
    """Mean squared error per image: [C,H,W] -> scalar tensor, [B,C,H,W] -> [B]."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    d = a.to(torch.promote_types(a.dtype, torch.float32)) - b.to(torch.promote_types(b.dtype, torch.float32))
    return _per_image_mean(d * d)


def psnr(a, b, data_range=1.0):
    """PSNR in dB per image: 10 log10(data_range^2 / MSE). [C,H,W] -> scalar, [B,C,H,W] -> [B].

    Identical images give +inf.
    """
    return 10.0 * torch.log10(data_range ** 2 / mse(a, b))


def area_downsample(img, factor):
    """Exact box-average downsampling by an integer `factor` (how LR images are made).

    img: [C,H,W] or [B,C,H,W]; H and W must be divisible by `factor`. Differentiable.
    """
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"downsampling factor must be a positive integer, got {factor}")
    if img.dim() not in (3, 4):
        raise ValueError(f"expected [C,H,W] or [B,C,H,W], got shape {tuple(img.shape)}")
    h, w = img.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(
            f"image size {h}x{w} is not divisible by the downsampling factor {factor}; "
            f"crop it to {h - h % factor}x{w - w % factor} first"
        )
    if factor == 1:
        return img
    if img.dim() == 3:
        return F.avg_pool2d(img.unsqueeze(0), factor, factor).squeeze(0)
    return F.avg_pool2d(img, factor, factor)


def area_resize_np(img, width, height):
    """Resize a numpy [H,W,C] (or [H,W]) float image to (width, height) with cv2.INTER_AREA.

    Returns float32 with the same number of dimensions as the input (the input itself, not a
    copy, when it is float32 and already that size).
    """
    arr = np.asarray(img)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    if arr.shape[1] == width and arr.shape[0] == height:
        return arr
    out = cv2.resize(np.ascontiguousarray(arr), (width, height), interpolation=cv2.INTER_AREA)
    if arr.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
        out = out[:, :, None]
    return out


def load_image(path):
    """Read an image file as float32 [H,W,3] (RGB) or [H,W,4] (RGBA if it has alpha), in [0, 1].

    Grayscale and palette images are converted to RGB(A); 16-bit grayscale is scaled by 1/65535.
    Raises SceneFormatError if the file is missing or not a readable image.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                arr = arr / (65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0)
                return np.repeat(np.clip(arr, 0.0, 1.0)[:, :, None], 3, axis=2)
            if mode == "F":
                arr = np.asarray(im, dtype=np.float32)
                return np.repeat(arr[:, :, None], 3, axis=2)
            has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info)
            im = im.convert("RGBA" if has_alpha else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise SceneFormatError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SceneFormatError(f"cannot read image {path}: {exc}; re-export it as PNG or JPEG") from None
    return arr.astype(np.float32) / 255.0


def _to_uint8_hwc(img):
    if isinstance(img, torch.Tensor):
        t = img.detach().to("cpu")
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() == 3:
            t = t.permute(1, 2, 0)
        elif t.dim() != 2:
            raise ValueError(f"save_image expects a tensor [C,H,W] or [H,W], got shape {tuple(img.shape)}")
        arr = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32).numpy()
    else:
        arr = np.asarray(img)
        if arr.ndim not in (2, 3):
            raise ValueError(f"save_image expects an array [H,W,C] or [H,W], got shape {arr.shape}")
        if arr.dtype == np.uint8:
            return arr if arr.ndim == 2 or arr.shape[2] != 1 else arr[:, :, 0]
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    arr = np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
        elif arr.shape[2] not in (3, 4):
            raise ValueError(f"save_image supports 1, 3 or 4 channels, got {arr.shape[2]}")
    return arr


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def save_image(path, img):
    """Write an image in [0, 1] as 8-bit (round(x*255), values clipped), atomically.

    img: torch [C,H,W] / [H,W] or numpy [H,W,C] / [H,W] floats (numpy uint8 is written as is),
    C in {1, 3, 4}. The format follows the extension (PNG unless .jpg/.jpeg/.bmp/.tif given).
    """
    path = os.fspath(path)
    arr = _to_uint8_hwc(img)
    fmt = _FORMATS.get(os.path.splitext(path)[1].lower(), "PNG")
    pil = Image.fromarray(arr)
    if fmt == "JPEG" and pil.mode == "RGBA":
        pil = pil.convert("RGB")
    with atomic_write(path, "wb") as f:
        if fmt == "JPEG":
            pil.save(f, format=fmt, quality=95)
        else:
            pil.save(f, format=fmt)


def to_tensor_chw(img):
    """numpy [H,W,C] (or [H,W]) -> torch float32 [C,H,W] (or [1,H,W]); uint8 is scaled by 1/255."""
    arr = np.asarray(img)
    scale = 1.0 / 255.0 if arr.dtype == np.uint8 else None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"expected an image [H,W,C] or [H,W], got shape {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).to(torch.float32)
    return t * scale if scale is not None else t


def to_numpy_hwc(t):
    """torch [C,H,W] (or [H,W]) -> numpy float32 [H,W,C] (or [H,W]); detaches and moves to CPU."""
    t = t.detach().to("cpu", torch.float32)
    if t.dim() == 3:
        return np.ascontiguousarray(t.permute(1, 2, 0).numpy())
    if t.dim() == 2:
        return t.numpy().copy()
    raise ValueError(f"expected a tensor [C,H,W] or [H,W], got shape {tuple(t.shape)}")
