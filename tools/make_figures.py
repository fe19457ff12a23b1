#!/usr/bin/env python
"""Figures of a model folder: a zoomed-crop comparison of methods and per-step plots of the SR runs.

    python tools/make_figures.py output/fern [--methods bicubic 3dsr] [--view 0] [--crop 120,80,64,64 ...]

(a) MODEL/figures/comparison_<view>.png: one test view. Left, the full ground truth with the crop
    rectangles; right, a grid with one row per crop and one column per method, then GT, each crop
    enlarged by an integer nearest-neighbour factor (pixels stay pixels). Methods are the folders
    MODEL/<split>/<method>/renders (default: lr-3dgs, bicubic, per-view-isr, per-view-sr, 3dsr where present, else every method
    folder); the ground truth is the first method's gt/. Crops are given as x,y,w,h in ground-truth
    pixels, or default to the --num_crops non-overlapping square windows with the most gradient energy
    of the ground truth (deterministic: ties go to the top-left-most window).
(b) MODEL/figures/sr_steps_<run>.png for each MODEL/sr/<run>/log.json (and MODEL/sr/log.json, as run
    "sr"): PSNR of the renders against the decoded HR images, LR-consistency PSNR and HR test PSNR
    (when logged) at every denoising step, plus the final fit.
Every figure is written atomically with matplotlib's Agg backend (no display needed).
"""
import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import argparse  # noqa: E402
import glob  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from tools.summarize import display_name, order_methods, read_json_object  # noqa: E402
from utils.errors import ThreeDSRError  # noqa: E402
from utils.system_utils import atomic_write, run_cli  # noqa: E402

DEFAULT_METHODS = ("lr-3dgs", "bicubic", "per-view-isr", "per-view-sr", "3dsr")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
CROP_COLOURS = ((230, 40, 40), (40, 200, 60), (50, 110, 240), (240, 200, 30), (220, 60, 220), (40, 210, 210))
DPI = 100
MARGIN, GAP, LABEL_H, FRAME = 8, 8, 24, 3  # pixels
LABEL_PT = 10  # label font size (points; 100 dpi)


# ------------------------------------------------------------------------------------------------
# crops


def gradient_energy(img):
    """[H,W] sum of squared forward differences of the grey image (float64); img [H,W,C] in [0,1]."""
    g = np.asarray(img, dtype=np.float64)
    if g.ndim == 3:
        g = g[:, :, :3].mean(axis=2)
    e = np.zeros_like(g)
    e[:, :-1] += np.diff(g, axis=1) ** 2
    e[:-1, :] += np.diff(g, axis=0) ** 2
    return e


def select_crops(img, num_crops=2, size=None):
    """Up to `num_crops` non-overlapping square windows (x, y, w, h) of `img` [H,W,C] with the highest
    gradient energy, best first. size defaults to max(8, min(H, W) // 5) (at most the image)."""
    h, w = img.shape[:2]
    size = int(size or max(8, min(h, w) // 5))
    size = min(size, h, w)
    e = gradient_energy(img)
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = e.cumsum(0).cumsum(1)
    # score[y, x] = energy inside the window with top-left (x, y)
    score = (integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size])
    crops = []
    for _ in range(int(num_crops)):
        if not np.isfinite(score).any():
            break
        y, x = np.unravel_index(int(np.argmax(score)), score.shape)  # first maximum in raster order
        crops.append((int(x), int(y), size, size))
        score[max(0, y - size + 1):y + size, max(0, x - size + 1):x + size] = -np.inf  # overlapping windows
    return crops


def parse_crop(text, width, height):
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise ThreeDSRError(f"--crop {text!r} is not x,y,w,h (four integers, e.g. 120,80,64,64)") from None
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ThreeDSRError(f"--crop {text} does not fit in the {width}x{height} view; keep x+w <= {width}, "
                            f"y+h <= {height} and all values positive")
    return x, y, w, h


# ------------------------------------------------------------------------------------------------
# comparison figure


def find_method_folders(model, split):
    split_dir = os.path.join(model, split)
    if not os.path.isdir(split_dir):
        return []
    return [m for m in sorted(os.listdir(split_dir)) if os.path.isdir(os.path.join(split_dir, m, "renders"))]


def _images(folder):
    return sorted(f for f in os.listdir(folder) if os.path.splitext(f)[1].lower() in IMAGE_EXTS)


def _rgb8(path):
    """uint8 [H,W,3]; alpha composited on black, as metrics.py reads images (PIL only: no torch import)."""
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = "A" in im.getbands() or "transparency" in im.info
            arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ThreeDSRError(f"cannot read image {path} ({exc.__class__.__name__}); re-render it") from None
    if has_alpha:
        arr = np.floor(arr[:, :, :3].astype(np.float64) * arr[:, :, 3:4] / 255.0 + 0.5).astype(np.uint8)
    return arr


def _draw_frame(canvas, x, y, w, h, colour, t):
    """A t-pixel frame just outside the box (x, y, w, h), clipped to the canvas."""
    H, W = canvas.shape[:2]
    x0, y0, x1, y1 = max(0, x - t), max(0, y - t), min(W, x + w + t), min(H, y + h + t)
    canvas[y0:min(H, y), x0:x1] = colour
    canvas[max(0, y + h):y1, x0:x1] = colour
    canvas[y0:y1, x0:min(W, x)] = colour
    canvas[y0:y1, max(0, x + w):x1] = colour


def _draw_box(canvas, x, y, w, h, colour, t):
    """A t-pixel frame along the inside of the box (x, y, w, h) (used on the full image)."""
    t = max(1, min(t, w // 2, h // 2))
    canvas[y:y + t, x:x + w] = colour
    canvas[y + h - t:y + h, x:x + w] = colour
    canvas[y:y + h, x:x + t] = colour
    canvas[y:y + h, x + w - t:x + w] = colour


def _text_widths(texts, size):
    """Rendered widths in pixels of `texts` at `size` points (so columns can fit their labels)."""
    fig = Figure(dpi=DPI)
    renderer = FigureCanvasAgg(fig).get_renderer()
    return [math.ceil(fig.text(0, 0, t, fontsize=size).get_window_extent(renderer).width) for t in texts]


def _save_figure(canvas, labels, path):
    """canvas uint8 [H,W,3] placed pixel for pixel; labels [(x_px, y_px, text, fontsize)] centred."""
    h, w = canvas.shape[:2]
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.figimage(canvas, 0, 0, origin="upper")
    for x, y, text, size in labels:
        fig.text(x / w, 1.0 - y / h, text, ha="center", va="center", fontsize=size)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)


def comparison_figure(model, methods=None, view=0, crops=None, num_crops=2, split="test", out_path=None):
    """Write the comparison figure; returns a dict with the path, canvas size, crops, zoom factors and
    tile positions {(crop index, column label): (x, y)} (for tests and callers)."""
    available = find_method_folders(model, split)
    if methods:
        missing = [m for m in methods if m not in available]
        if missing:
            raise ThreeDSRError(f"{os.path.join(model, split)} has no {', '.join(m + '/renders' for m in missing)} "
                                f"(found: {', '.join(available) or 'none'}); render those methods or fix --methods")
    else:
        methods = [m for m in DEFAULT_METHODS if m in available] or order_methods(available)
    if not methods:
        raise ThreeDSRError(f"{os.path.join(model, split)} holds no <method>/renders folder; render the test "
                            f"views first (python render.py -m {model})")
    names = _images(os.path.join(model, split, methods[0], "renders"))
    if not names:
        raise ThreeDSRError(f"{os.path.join(model, split, methods[0], 'renders')} holds no images; re-render it")
    if not 0 <= view < len(names):
        raise ThreeDSRError(f"--view {view} is out of range: {os.path.join(model, split, methods[0], 'renders')} "
                            f"has {len(names)} views (0..{len(names) - 1})")
    name = names[view]
    gt_path = os.path.join(model, split, methods[0], "gt", name)
    if not os.path.isfile(gt_path):
        raise ThreeDSRError(f"{gt_path} is missing; re-run render.py (it writes renders/ and gt/ together)")
    gt = _rgb8(gt_path)
    H, W = gt.shape[:2]
    columns = []
    for m in methods:
        p = os.path.join(model, split, m, "renders", name)
        if not os.path.isfile(p):
            raise ThreeDSRError(f"{p} is missing: method {m} lacks view {name}; render it or leave it out "
                                f"with --methods")
        img = _rgb8(p)
        if img.shape != gt.shape:
            raise ThreeDSRError(f"{p} is {img.shape[1]}x{img.shape[0]} but the ground truth is {W}x{H}; render "
                                f"every method at the ground truth's resolution")
        columns.append((display_name(m), img))
    columns.append(("GT", gt))
    if crops:
        crops = [c if isinstance(c, tuple) else parse_crop(c, W, H) for c in crops]
    else:
        crops = select_crops(gt, num_crops)

    # layout: full GT on the left, grid of zoomed crops on the right; one label strip on top
    n_rows = len(crops)
    target = max(1, (H - (n_rows - 1) * GAP) // n_rows)
    zooms = [max(1, target // ch) for (_, _, _, ch) in crops]
    row_h = [ch * z for (_, _, _, ch), z in zip(crops, zooms)]
    tile_w = max(cw * z for (_, _, cw, _), z in zip(crops, zooms))
    col_w = max([tile_w] + [w + 4 for w in _text_widths([label for label, _ in columns], LABEL_PT)])
    grid_x = MARGIN + W + 2 * GAP
    top = MARGIN + LABEL_H
    width = grid_x + len(columns) * col_w + (len(columns) - 1) * GAP + MARGIN
    height = top + max(H, sum(row_h) + (n_rows - 1) * GAP) + MARGIN
    canvas = np.full((height, width, 3), 255, np.uint8)
    canvas[top:top + H, MARGIN:MARGIN + W] = gt
    t = max(2, round(min(H, W) / 150))
    for i, (x, y, cw, ch) in enumerate(crops):
        _draw_box(canvas[top:top + H, MARGIN:MARGIN + W], x, y, cw, ch, CROP_COLOURS[i % len(CROP_COLOURS)], t)
    labels = [(MARGIN + W / 2, MARGIN + LABEL_H / 2, f"GT (view {os.path.splitext(name)[0]})", LABEL_PT)]
    tiles = {}
    y0 = top
    for i, ((x, y, cw, ch), z) in enumerate(zip(crops, zooms)):
        patch_colour = CROP_COLOURS[i % len(CROP_COLOURS)]
        for j, (label, img) in enumerate(columns):
            tx = grid_x + j * (col_w + GAP) + (col_w - cw * z) // 2  # centred in its column
            tile = np.repeat(np.repeat(img[y:y + ch, x:x + cw], z, axis=0), z, axis=1)
            canvas[y0:y0 + ch * z, tx:tx + cw * z] = tile
            _draw_frame(canvas, tx, y0, cw * z, ch * z, patch_colour, min(FRAME, GAP // 2))
            tiles[(i, label)] = (tx, y0)
        y0 += row_h[i] + GAP
    for j, (label, _) in enumerate(columns):
        labels.append((grid_x + j * (col_w + GAP) + col_w / 2, MARGIN + LABEL_H / 2, label, LABEL_PT))
    path = out_path or os.path.join(model, "figures", f"comparison_{os.path.splitext(name)[0]}.png")
    _save_figure(canvas, labels, path)
    return {"path": path, "size": (width, height), "view": name, "crops": crops, "zooms": zooms,
            "tiles": tiles, "methods": list(methods)}


# ------------------------------------------------------------------------------------------------
# SR step plots

STEP_SERIES = (("psnr_render_vs_decoded", "renders vs decoded HR"),
               ("psnr_lr_consistency", "LR consistency (down(render) vs LR)"),
               ("psnr_hr_test", "HR test views vs GT"))
PLOT_SIZE_IN = (8.0, 4.5)


def find_sr_logs(model):
    """[(run name, log path)]: MODEL/sr/<run>/log.json sorted by run, then MODEL/sr/log.json as 'sr'."""
    logs = [(os.path.basename(os.path.dirname(p)), p)
            for p in sorted(glob.glob(os.path.join(glob.escape(model), "sr", "*", "log.json")))]
    single = os.path.join(model, "sr", "log.json")
    if os.path.isfile(single):
        logs.append(("sr", single))
    return logs


def _number(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def load_sr_log(path):
    log = read_json_object(path, "sr_refine.py or delete it")
    steps = log.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise ThreeDSRError(f"{path} has no \"steps\" list of per-step records; it is not an sr_refine.py log")
    final = log.get("final")
    return log, steps, final if isinstance(final, dict) else None


def sr_steps_figure(model, run, log_path, out_path=None):
    """Plot one SR run's per-step PSNRs to MODEL/figures/sr_steps_<run>.png (or out_path);
    returns {"path", "size", "series": {key: [y or None per step]}}."""
    log, steps, final = load_sr_log(log_path)
    records = steps + ([final] if final is not None else [])
    if not records:
        raise ThreeDSRError(f"{log_path} holds no steps yet; let sr_refine.py finish a step first")
    xs = list(range(1, len(records) + 1))
    ticks = [f"{r.get('step', i + 1)}\nt={r.get('timestep')}" if r is not final else "final"
             for i, r in enumerate(records)]
    fig = Figure(figsize=PLOT_SIZE_IN, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    series = {}
    for key, label in STEP_SERIES:
        ys = [_number(r.get(key)) for r in records]
        if all(y is None for y in ys):
            continue
        series[key] = ys
        ax.plot(xs, [np.nan if y is None else y for y in ys], marker="o", label=label)
    if not series:
        raise ThreeDSRError(f"{log_path} logs none of {', '.join(k for k, _ in STEP_SERIES)}; nothing to plot")
    ax.set_xticks(xs)
    ax.set_xticklabels(ticks, fontsize=8)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    title = f"{run}: {log.get('mode', '?')} x{log.get('scale', '?')}, {log.get('sr_model', '?')}"
    total = _number(log.get("total_seconds"))
    if total is not None:
        title += f", {total:.0f} s"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = out_path or os.path.join(model, "figures", f"sr_steps_{run}.png")
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    return {"path": path, "size": (round(PLOT_SIZE_IN[0] * DPI), round(PLOT_SIZE_IN[1] * DPI)), "series": series}


# ------------------------------------------------------------------------------------------------
# CLI


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("model", help="model folder (holds <split>/<method>/renders and/or sr/<run>/log.json)")
    p.add_argument("--methods", nargs="+", default=None, metavar="FOLDER",
                   help=f"method folders to compare, in order (default: {' '.join(DEFAULT_METHODS)} where present)")
    p.add_argument("--crop", nargs="+", default=None, metavar="X,Y,W,H", help="crop windows in GT pixels")
    p.add_argument("--num_crops", type=int, default=2, help="number of automatic crops (default 2)")
    p.add_argument("--view", type=int, default=0, help="index of the view in name order (default 0)")
    p.add_argument("--split", default="test", help="render split (default test)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.model):
        raise ThreeDSRError(f"model folder {args.model} does not exist; pass the -m folder of a trained model")
    if args.num_crops < 1:
        raise ThreeDSRError(f"--num_crops must be at least 1, got {args.num_crops}")
    written = []
    have_renders = bool(find_method_folders(args.model, args.split))
    logs = find_sr_logs(args.model)
    if not have_renders and not logs:
        raise ThreeDSRError(f"{args.model} has neither {args.split}/<method>/renders nor sr/<run>/log.json; "
                            f"render views (render.py) or run sr_refine.py first")
    if have_renders or args.methods or args.crop:
        written.append(comparison_figure(args.model, args.methods, args.view, args.crop, args.num_crops,
                                         args.split)["path"])
    else:
        print(f"note: no {args.split}/<method>/renders in {args.model}; no comparison figure")
    for run, log_path in logs:
        written.append(sr_steps_figure(args.model, run, log_path)["path"])
    if not logs:
        print(f"note: no sr/<run>/log.json in {args.model}; no SR step plots")
    for w in written:
        print(f"wrote {w}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
