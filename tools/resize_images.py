#!/usr/bin/env python
"""Make a scene's downsampled image folders (images_2, images_4, ...) by area averaging.

    python tools/resize_images.py SCENE [--factors 2 4 8] [--src images] [--force]

For each factor N writes SCENE/<src>_N/ (train.py -r N reads it) with one image per source image:
  * size: when N divides the width and the height, every output pixel is the exact mean of its N x N
    block (then rounded half up to the source's bit depth); otherwise cv2.INTER_AREA to
    (round(W/N), round(H/N)), the size train.py itself would downsample to;
  * alpha: averaged as premultiplied colour, so compositing the small image on a background equals
    averaging the composited large one;
  * format: always PNG (lossless; 8 or 16 bit like the source) with the source's name and a .png
    extension, e.g. IMG_0001.JPG -> IMG_0001.png (as LLFF's own images_N are; the dataset reader
    matches images by name stem, so COLMAP's image names still resolve).
Existing folders are skipped unless --force, which replaces them whole. Each folder is written beside
its final place and renamed into it, so an interrupted run leaves no half-filled folder.

Which filter made the LR images matters for x4 evaluation: the images_N shipped with LLFF and
Mip-NeRF 360 were made with ImageMagick's `mogrify -resize` (a Lanczos-type filter when shrinking),
and bicubic- or Lanczos-made LR images are sharper (and aliased) compared with box averages, which
changes every number of an LR -> HR comparison. To compare with published results use the datasets'
own images_N; use this tool for scenes that lack them, or to match our LR-consistency operator
(`down_s` is area averaging). Do not mix the two in one table.
"""
import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from utils.errors import SceneFormatError, ThreeDSRError  # noqa: E402
from utils.image_utils import area_resize_np  # noqa: E402
from utils.system_utils import run_cli  # noqa: E402

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FACTORS = (2, 4, 8)


def target_size(width, height, factor):
    """(width, height) of the 1/factor image: exact when divisible, else rounded (min 1 pixel)."""
    return max(1, round(width / factor)), max(1, round(height / factor))


def area_downsample_array(img, factor):
    """Area-average an integer image [H,W] or [H,W,C] (uint8/uint16) by an integer factor >= 1.

    Exact N x N block means when N divides both sizes, else cv2.INTER_AREA to target_size(). With 2
    or 4 channels the last is alpha and colour is averaged premultiplied. Rounded half up; returns
    the input's dtype and channel count.
    """
    arr = np.asarray(img)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a uint8 or uint16 image, got {arr.dtype}")
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    x = arr.astype(np.float64)
    has_alpha = c in (2, 4)
    if has_alpha:
        x[:, :, :-1] *= x[:, :, -1:] / np.iinfo(arr.dtype).max
    if h % factor == 0 and w % factor == 0:
        small = x.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))
    else:
        tw, th = target_size(w, h, factor)
        small = area_resize_np(x.astype(np.float32), tw, th).astype(np.float64).reshape(th, tw, c)
    if has_alpha:
        alpha = small[:, :, -1:]
        colour = small[:, :, :-1]
        safe = np.where(alpha > 0, alpha, 1.0)
        small[:, :, :-1] = np.where(alpha > 0, colour * (np.iinfo(arr.dtype).max / safe), 0.0)
    out = np.clip(np.floor(small + 0.5), 0, np.iinfo(arr.dtype).max).astype(arr.dtype)
    return out[:, :, 0] if squeeze else out


def list_images(src_dir):
    """Relative paths ('/' separated) of the image files under src_dir, sorted; sub-folders included."""
    found = []
    for root, dirs, files in os.walk(src_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(root, src_dir)
        for f in sorted(files):
            if os.path.splitext(f)[1].lower() in IMAGE_EXTS and not f.startswith("."):
                found.append(f if rel == "." else os.path.join(rel, f).replace(os.sep, "/"))
    return found


def output_name(rel):
    return os.path.splitext(rel)[0] + ".png"


def _read(path):
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)  # keeps 16 bit and alpha; BGR order is kept on write
    if img is None:
        raise SceneFormatError(f"cannot read image {path}; replace it with a valid PNG/JPEG or remove it")
    if img.dtype not in (np.uint8, np.uint16):
        raise SceneFormatError(f"{path} has {img.dtype} pixels; only 8- and 16-bit images can be resized "
                               f"(convert it to an 8-bit PNG)")
    return img


def _write_png(path, img):
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ThreeDSRError(f"could not encode {path} as PNG")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def resize_scene(scene, factors=DEFAULT_FACTORS, src="images", force=False, progress=True, workers=None):
    """Write SCENE/<src>_N for each factor N. Returns {N: "written" | "skipped"}."""
    factors = sorted(set(int(f) for f in factors))
    if not factors or any(f < 2 for f in factors):
        raise ThreeDSRError(f"--factors must be integers >= 2, got {' '.join(str(f) for f in factors)}")
    if not os.path.isdir(scene):
        raise SceneFormatError(f"scene folder {scene} does not exist; pass the folder that holds {src}/")
    src_dir = os.path.join(scene, src)
    if not os.path.isdir(src_dir):
        raise SceneFormatError(f"{scene} has no {src}/ folder; put the full-resolution images there "
                               f"(or name the folder with --src)")
    names = list_images(src_dir)
    if not names:
        raise SceneFormatError(f"{src_dir} holds no images ({', '.join(IMAGE_EXTS)}); nothing to resize")
    outs = {}
    for rel in names:
        o = output_name(rel)
        if o in outs:
            raise SceneFormatError(f"{src_dir} holds both {outs[o]} and {rel}, which would both become {o}; "
                                   f"keep one of them")
        outs[o] = rel

    status, todo = {}, []
    for f in factors:
        final = os.path.join(scene, f"{os.path.normpath(src)}_{f}")
        if os.path.exists(final) and not force:
            status[f] = "skipped"
            print(f"{final} exists; skipped (--force rebuilds it)")
        else:
            todo.append(f)
    if not todo:
        return status

    staging = {f: tempfile.mkdtemp(dir=scene, prefix=f".{os.path.basename(os.path.normpath(src))}_{f}.")
               for f in todo}
    warned = set()

    def one(rel):
        img = _read(os.path.join(src_dir, rel))
        h, w = img.shape[:2]
        for f in todo:
            if (h % f or w % f) and f not in warned:
                warned.add(f)
                tw, th = target_size(w, h, f)
                print(f"note: {rel} is {w}x{h}, not divisible by {f}; images_{f} uses cv2.INTER_AREA to "
                      f"{tw}x{th} (not an exact block average)")
            _write_png(os.path.join(staging[f], output_name(rel)), area_downsample_array(img, f))

    try:
        n_workers = workers or max(1, min(4, os.cpu_count() or 1, len(names)))
        with ThreadPoolExecutor(max_workers=n_workers) as ex, \
                tqdm(total=len(names), desc=f"resize x{'/'.join(map(str, todo))}", unit="img",
                     disable=not progress) as bar:
            for _ in ex.map(one, names):
                bar.update(1)
        for f in todo:
            final = os.path.join(scene, f"{os.path.normpath(src)}_{f}")
            if os.path.lexists(final):
                old = tempfile.mkdtemp(dir=scene, prefix=f".old_{os.path.basename(final)}.")
                os.replace(final, os.path.join(old, "x"))
                shutil.rmtree(old)
            os.chmod(staging[f], 0o777 & ~_umask())
            os.replace(staging[f], final)
            status[f] = "written"
    finally:
        for d in staging.values():
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(d)
    return status


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("scene", help="scene folder holding the full-resolution image folder")
    p.add_argument("--factors", type=int, nargs="+", default=list(DEFAULT_FACTORS),
                   help="downsampling factors (default: 2 4 8)")
    p.add_argument("--src", default="images", help="source image folder inside SCENE (default: images)")
    p.add_argument("--force", action="store_true", help="rebuild folders that already exist")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    status = resize_scene(args.scene, args.factors, args.src, args.force, progress=not args.quiet)
    written = [f for f, s in sorted(status.items()) if s == "written"]
    if written:
        print(f"wrote {', '.join(os.path.join(args.scene, f'{args.src}_{f}') for f in written)} "
              f"(area averaging, PNG)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
