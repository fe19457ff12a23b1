"""SR beyond the captured resolution, as 3DGS users type it (issue: drop-in for 3DGS users).

    python train.py -s data/garden            # default resolution, no -m
    python sr_refine.py -m output/garden      # x4 of the training size: no ground truth needed
    python render.py -m output/garden --upscale 4

plus: SR runs are 3DGS model folders of their own (numeric iterations, as 3DGS tools parse them),
--hr_images gives ground truth where no images_N does, and the memory estimate tracks the measured peak.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cli import ROOT, run_script, tiny_llff_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return tiny_llff_scene(tmp_path_factory, "anyres", views=8, seed=5, num_points=600, width=128, height=96)


@pytest.fixture(scope="module")
def tiny_sr(tmp_path_factory):
    from sr.testing import save_tiny_x4_upscaler
    return save_tiny_x4_upscaler(str(tmp_path_factory.mktemp("anyres_sr") / "x4"))


def run_in(cwd, args, check=True):
    """A repository script run from `cwd`, so relative paths (output/<scene>) resolve as for a user."""
    args = [os.path.join(ROOT, args[0])] + list(args[1:]) + ["--device", "cpu"]
    proc = subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if check and proc.returncode:
        raise AssertionError(f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def inria_max_iteration(model_path):
    """What Inria 3DGS's searchForMaxIteration does: int() of every point_cloud/iteration_* suffix."""
    return max(int(d.split("_")[-1]) for d in os.listdir(os.path.join(model_path, "point_cloud")))


def test_the_literal_two_commands_then_render_upscaled(scene, tiny_sr, tmp_path):
    work = tmp_path / "user"
    (work / "data").mkdir(parents=True)
    shutil.copytree(scene, work / "data" / "garden")
    run_in(work, ["train.py", "-s", "data/garden", "--iterations", "60", "--quiet"])
    model = work / "output" / "garden"
    assert (model / "point_cloud" / "iteration_60" / "point_cloud.ply").is_file()

    proc = run_in(work, ["sr_refine.py", "-m", "output/garden", "--sr_model", tiny_sr, "--steps", "2",
                         "--iters_per_step", "10", "--final_iters", "5", "--quiet"])
    assert "memory estimate" in proc.stdout and "128x96 -> 512x384" in proc.stdout
    run_dir = model / "sr" / "sr"
    log = json.loads((run_dir / "log.json").read_text())
    assert log["complete"] and log["hr_size"] == [512, 384]
    assert all(e["psnr_hr_test"] is None for e in log["steps"])  # no images at 4x: nothing to compare with

    # the SR run is a 3DGS model folder; both folders parse as 3DGS tools parse them
    assert inria_max_iteration(str(model)) == 60
    assert inria_max_iteration(str(run_dir)) == 1 + 10 + 5  # the default ramp: 0.1 x 10, 10, then 5 final
    cfg = (run_dir / "cfg_args").read_text()
    assert re.search(r"\bscale=4\b", cfg) and "lr_iteration='60'" in cfg
    cams = json.loads((run_dir / "cameras.json").read_text())
    assert cams[0]["width"] == 512 and cams[0]["height"] == 384

    run_in(work, ["render.py", "-m", "output/garden", "--upscale", "4", "--quiet"])
    run_in(work, ["render.py", "-m", "output/garden", "--iteration", "sr", "--quiet"])  # its own scale
    for method in ("lr-3dgs", "3dsr"):
        renders = sorted(os.listdir(model / "train" / method / "renders"))
        assert len(renders) == 8
        assert Image.open(model / "train" / method / "renders" / renders[0]).size == (512, 384)
        assert os.listdir(model / "train" / method / "gt") == []  # no ground truth at 4x
    sr_img = np.asarray(Image.open(model / "train" / "3dsr" / "renders" / "00000.png"), dtype=np.float32)
    lr_img = np.asarray(Image.open(model / "train" / "lr-3dgs" / "renders" / "00000.png"), dtype=np.float32)
    assert np.abs(sr_img - lr_img).mean() > 0.5  # a different model was rendered

    # the SR folder opened directly, as a 3DGS tool would: renders at its HR-or-LR `resolution`
    run_in(work, ["render.py", "-m", str(run_dir), "--quiet"])
    assert (run_dir / "train" / "ours_16" / "renders" / "00000.png").is_file()


def test_hr_images_give_ground_truth_beyond_images_n(scene, tiny_sr, tmp_path):
    """-r 2 at x4 has no images_N at 4x the LR size; --hr_images supplies them, and the log has test PSNR."""
    model = str(tmp_path / "m")
    run_script(["train.py", "-s", scene, "-m", model, "-r", "2", "--eval", "--iterations", "40", "--quiet"])
    hr = tmp_path / "hr_images"
    hr.mkdir()
    for f in os.listdir(os.path.join(scene, "images")):
        img = Image.open(os.path.join(scene, "images", f))
        img.resize((img.width * 2, img.height * 2), Image.BICUBIC).save(hr / f)
    run_script(["sr_refine.py", "-m", model, "--mode", "bicubic", "--steps", "1", "--iters_per_step", "5",
                "--final_iters", "5", "--quiet"])
    log = json.load(open(os.path.join(model, "sr", "sr_bicubic", "log.json")))
    assert log["final"]["psnr_hr_test"] is None
    run_script(["sr_refine.py", "-m", model, "--mode", "bicubic", "--steps", "1", "--iters_per_step", "5",
                "--final_iters", "5", "--quiet", "--hr_images", str(hr), "--overwrite"])
    log = json.load(open(os.path.join(model, "sr", "sr_bicubic", "log.json")))
    assert log["hr_size"] == [256, 192] and log["final"]["psnr_hr_test"] > 15


@pytest.fixture(scope="module")
def larger_scene(tmp_path_factory):
    """Large enough that the per-pixel terms, not the process baseline, separate the two sizes."""
    return tiny_llff_scene(tmp_path_factory, "anyres_big", views=8, seed=6, num_points=600, width=256, height=192)


def test_memory_estimate_tracks_the_measured_peak(larger_scene, tmp_path):
    """On CPU, at two HR sizes: the estimate within 2x of the peak RSS, and its growth between the sizes
    within 2x of the measured growth (so the per-pixel terms are right, not only the baseline)."""
    measured, estimated = [], []
    for r in (2, 1):
        model = str(tmp_path / f"m{r}")
        run_script(["train.py", "-s", larger_scene, "-m", model, "-r", str(r), "--iterations", "20", "--quiet"])
        proc = run_script(["sr_refine.py", "-m", model, "--mode", "bicubic", "--steps", "1", "--iters_per_step",
                           "5", "--final_iters", "5", "--quiet"])
        est = float(re.search(r"memory estimate: ~([\d.]+) GiB", proc.stdout).group(1)) * 1024
        peak = json.load(open(os.path.join(model, "sr", "sr_bicubic", "log.json")))["final"]["peak_memory_mb"]
        estimated.append(est)
        measured.append(peak)
    for est, peak in zip(estimated, measured):
        assert 0.5 < est / peak < 2.0, (estimated, measured)
    growth_est, growth_meas = estimated[1] - estimated[0], measured[1] - measured[0]
    assert growth_meas > 200 and 0.5 < growth_est / growth_meas < 2.0, (estimated, measured)


def test_memory_check_switches_tiling_on_and_refuses_what_cannot_fit(monkeypatch, capsys):
    from types import SimpleNamespace

    import sr_refine
    import training.memory as mem
    from utils.errors import ThreeDSRError
    cams = [SimpleNamespace(width=504, height=378)] * 17
    scene = SimpleNamespace(train_cameras=cams, gaussians=SimpleNamespace(num_points=300_000, max_sh_degree=3))
    args = SimpleNamespace(memory_check="auto")
    opts = {"vae_tiling": False, "sr_batch": 1}
    cpu = sr_refine.torch.device("cpu")
    # an untiled 2016x1512 decode does not fit 16 GiB, a tiled one does
    monkeypatch.setattr(mem, "device_capacity", lambda device: 16 * mem.GiB)
    out = sr_refine.plan_memory(args, None, opts, "SDx4Upscaler", 3 * mem.GiB, scene, 4, cpu, cpu, True)
    assert out["vae_tiling"] is True and "switching on" in capsys.readouterr().out
    assert sr_refine.plan_memory(SimpleNamespace(memory_check="off"), None, opts, "SDx4Upscaler", 3 * mem.GiB,
                                 scene, 4, cpu, cpu, True) == opts
    monkeypatch.setattr(mem, "device_capacity", lambda device: 2 * mem.GiB)
    with pytest.raises(ThreeDSRError, match="needs about .* GiB") as err:
        sr_refine.plan_memory(args, None, opts, "SDx4Upscaler", 3 * mem.GiB, scene, 4, cpu, cpu, True)
    assert "\n" not in str(err.value)
