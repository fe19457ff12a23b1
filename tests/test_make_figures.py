"""tools/make_figures.py on synthetic model folders: crop selection, pixel-exact comparison tiles,
SR step plots from log.json, and clear errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tools import make_figures as MF  # noqa: E402
from utils.errors import ThreeDSRError  # noqa: E402

H, W = 48, 64
PATCH = (40, 8, 16, 16)  # x, y, w, h of the textured region of the ground truth


def make_gt(seed=0):
    rng = np.random.default_rng(seed)
    gt = np.full((H, W, 3), 120, np.uint8)
    x, y, w, h = PATCH
    gt[y:y + h, x:x + w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return gt


def save(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def model(tmp_path):
    root = tmp_path / "model"
    gts = [make_gt(0), make_gt(1)]
    for k, method in enumerate(("bicubic", "per-view-sr", "3dsr", "ours_300")):
        for v, gt in enumerate(gts):
            render = np.clip(gt.astype(int) + 10 * (k + 1) - 30, 0, 255).astype(np.uint8)
            save(root / "test" / method / "renders" / f"{v:05d}.png", render)
            save(root / "test" / method / "gt" / f"{v:05d}.png", gt)
    return root


def sr_log(steps=3, hr_test=None, final=True):
    rec = lambda i, t: {"step": i, "timestep": t, "t_prev": max(t - 250, 0), "fit_loss": 0.05 / i,  # noqa: E731
                        "psnr_render_vs_decoded": 25.0 + i, "psnr_lr_consistency": 34.0 + i,
                        "psnr_hr_test": None if hr_test is None else hr_test + i, "seconds": 1.0,
                        "num_gaussians": 1000, "peak_memory_mb": 10.0}
    log = {"mode": "3dsr", "scale": 4, "sr_model": "tiny", "total_seconds": 3.0,
           "steps": [rec(i + 1, 999 - 250 * i) for i in range(steps)]}
    log["final"] = ({**rec(steps + 1, 0), "step": "final", "timestep": None} if final else None)
    return log


def write_log(model, run, log):
    path = model / "sr" / run / "log.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(log))
    return path


def cli(*args):
    return subprocess.run([sys.executable, "tools/make_figures.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_crop_selection_finds_the_texture():
    gt = make_gt().astype(np.float64) / 255
    (x, y, w, h), = MF.select_crops(gt, 1, size=12)
    px, py, pw, ph = PATCH
    assert w == h == 12 and px <= x and x + w <= px + pw and py <= y and y + h <= py + ph
    crops = MF.select_crops(gt, 3, size=12)
    assert crops[0] == (x, y, w, h) and len(crops) == 3
    for i in range(3):
        for j in range(i):
            a, b = crops[i], crops[j]
            assert a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]
    assert MF.select_crops(gt, 3, size=12) == crops  # deterministic
    assert MF.select_crops(gt, 1)[0][2] == max(8, min(H, W) // 5)  # default size


def test_comparison_figure_is_pixel_exact(model):
    info = MF.comparison_figure(str(model), view=1)
    assert info["methods"] == ["bicubic", "per-view-sr", "3dsr"]  # defaults present; ours_300 not included
    assert info["path"] == str(model / "figures" / "comparison_00001.png")
    fig = np.asarray(Image.open(info["path"]).convert("RGB"))
    assert (fig.shape[1], fig.shape[0]) == info["size"]
    assert info["size"][1] >= H + 2 * MF.MARGIN + MF.LABEL_H
    assert len(info["crops"]) == 2
    labels = ["Bicubic → 3DGS", "Per-view SR → 3DGS", "3DSR", "GT"]
    folders = ["bicubic", "per-view-sr", "3dsr", None]
    for i, ((x, y, w, h), z) in enumerate(zip(info["crops"], info["zooms"])):
        assert z >= 1
        for label, folder in zip(labels, folders):
            sub = "gt" if folder is None else "renders"
            src = np.asarray(Image.open(model / "test" / (folder or "bicubic") / sub / "00001.png"))
            want = np.repeat(np.repeat(src[y:y + h, x:x + w], z, axis=0), z, axis=1)
            tx, ty = info["tiles"][(i, label)]
            np.testing.assert_array_equal(fig[ty:ty + h * z, tx:tx + w * z], want)
    # the full GT sits at the left, crop rectangles drawn only along the crops' borders
    gt = np.asarray(Image.open(model / "test" / "bicubic" / "gt" / "00001.png"))
    top = MF.MARGIN + MF.LABEL_H
    panel = fig[top:top + H, MF.MARGIN:MF.MARGIN + W]
    differs = np.any(panel != gt, axis=2)
    assert differs.any()
    inside = np.zeros((H, W), bool)
    for x, y, w, h in info["crops"]:
        inside[y:y + h, x:x + w] = True
    assert not (differs & ~inside).any()


def test_comparison_with_chosen_methods_and_crops(model):
    info = MF.comparison_figure(str(model), methods=["ours_300", "3dsr"], crops=["0,0,10,6", "30,20,20,20"])
    assert info["methods"] == ["ours_300", "3dsr"]
    assert info["crops"] == [(0, 0, 10, 6), (30, 20, 20, 20)]
    # H=48 split over two rows with one gap: target 20 px per row
    assert info["zooms"] == [(H - MF.GAP) // 2 // 6, (H - MF.GAP) // 2 // 20]
    fig = Image.open(info["path"])
    assert fig.size == info["size"]
    assert set(k[1] for k in info["tiles"]) == {"ours_300", "3DSR", "GT"}


def test_sr_step_plots(model):
    write_log(model, "run_a", sr_log(steps=3))
    write_log(model, "run_b", sr_log(steps=2, hr_test=20.0, final=False))
    proc = cli(model)
    assert proc.returncode == 0, proc.stderr
    for name in ("comparison_00000.png", "sr_steps_run_a.png", "sr_steps_run_b.png"):
        assert name in proc.stdout
    plot = Image.open(model / "figures" / "sr_steps_run_a.png")
    assert plot.size == (800, 450)
    info = MF.sr_steps_figure(str(model), "run_a", str(model / "sr" / "run_a" / "log.json"))
    assert set(info["series"]) == {"psnr_render_vs_decoded", "psnr_lr_consistency"}  # no HR test logged
    assert info["series"]["psnr_render_vs_decoded"] == [26.0, 27.0, 28.0, 29.0]  # 3 steps + final
    info = MF.sr_steps_figure(str(model), "run_b", str(model / "sr" / "run_b" / "log.json"))
    assert info["series"]["psnr_hr_test"] == [21.0, 22.0]


def test_only_sr_logs_is_fine(tmp_path):
    write_log(tmp_path / "m", "only", sr_log())
    proc = cli(tmp_path / "m")
    assert proc.returncode == 0, proc.stderr
    assert "no comparison figure" in proc.stdout
    assert os.path.isfile(tmp_path / "m" / "figures" / "sr_steps_only.png")


def one_line_error(proc):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def error_of(*args):
    """The message main() raises for these arguments (the CLI prints it as one `error:` line)."""
    with pytest.raises(ThreeDSRError) as info:
        MF.main([str(a) for a in args])
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_bad_input(model, tmp_path):
    assert "does not exist" in one_line_error(cli(tmp_path / "nope"))
    (tmp_path / "bare").mkdir()
    assert "render.py" in error_of(tmp_path / "bare")
    err = error_of(model, "--methods", "3dsr", "nope")
    assert "nope/renders" in err and "bicubic" in err
    assert "out of range" in error_of(model, "--view", "5")
    assert "does not fit" in error_of(model, "--crop", "60,0,10,10")
    assert "x,y,w,h" in one_line_error(cli(model, "--crop", "1,2,3"))
    os.remove(model / "test" / "3dsr" / "renders" / "00001.png")
    assert "lacks view 00001.png" in error_of(model, "--view", "1")
    small = np.zeros((10, 10, 3), np.uint8)
    save(model / "test" / "3dsr" / "renders" / "00000.png", small)
    assert "ground truth's resolution" in error_of(model)
    bad = tmp_path / "m2"
    write_log(bad, "r", {"mode": "3dsr"})
    assert "steps" in error_of(bad)
    (bad / "sr" / "r" / "log.json").write_text("{")
    assert "not valid JSON" in error_of(bad)
    log = sr_log()
    for rec in log["steps"] + [log["final"]]:
        rec["psnr_render_vs_decoded"] = rec["psnr_lr_consistency"] = None
    write_log(bad, "r", log)
    assert "nothing to plot" in error_of(bad)
