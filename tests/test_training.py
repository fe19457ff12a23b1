"""End-to-end: train.py on a tiny generated scene improves test PSNR; render.py writes the layout;
checkpoints resume; the CLIs refuse bad input with one line and a non-zero exit."""
import json
import os

import pytest
from cli import run_script, tiny_llff_scene

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


run = run_script


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    return tiny_llff_scene(tmp_path_factory, "scene", views=16, seed=1, num_points=2000)


@pytest.fixture(scope="module")
def trained(tiny_scene, tmp_path_factory):
    model = str(tmp_path_factory.mktemp("model") / "tiny")
    proc = run(["train.py", "-s", tiny_scene, "-m", model, "-r", "4", "--eval", "--iterations", "300",
                "--densify_from_iter", "100", "--densify_until_iter", "250", "--densification_interval", "50",
                "--opacity_reset_interval", "100000", "--sh_increase_interval", "100",
                "--test_iterations", "1", "300", "--save_iterations", "150", "300",
                "--checkpoint_iterations", "150", "--backend", "torch", "--quiet"])
    return model, proc


def test_training_improves_test_psnr(trained):
    model, _ = trained
    log = json.load(open(os.path.join(model, "train_log.json")))
    test = {e["iteration"]: e["psnr"] for e in log["evaluations"] if e["split"] == "test"}
    assert test[300] > test[1] + 6.0, test
    assert test[300] > 20.0, test
    for f in ("cfg_args", "cameras.json", "input.ply", "point_cloud/iteration_300/point_cloud.ply",
              "point_cloud/iteration_150/point_cloud.ply", "chkpnt150.pth"):
        assert os.path.isfile(os.path.join(model, f)), f


def test_render_writes_layout_at_any_resolution(trained):
    model, _ = trained
    run(["render.py", "-m", model, "--skip_train", "--quiet"])
    renders = os.path.join(model, "test", "ours_300", "renders")
    assert sorted(os.listdir(renders)) == ["00000.png", "00001.png"]
    from PIL import Image
    assert Image.open(os.path.join(renders, "00000.png")).size == (64, 48)
    # The LR model rendered at 2x its training resolution (images_2 of the same scene).
    run(["render.py", "-m", model, "-r", "2", "--iteration", "150", "--skip_train", "--quiet"])
    img = Image.open(os.path.join(model, "test", "lr-3dgs_x2", "renders", "00000.png"))
    gt = Image.open(os.path.join(model, "test", "lr-3dgs_x2", "gt", "00000.png"))
    assert img.size == gt.size == (128, 96)
    # --upscale 2 is the same render (ground truth from images_2, which exist at that size)
    run(["render.py", "-m", model, "--upscale", "2", "--iteration", "150", "--skip_train", "--quiet",
         "--method", "up2"])
    up = os.path.join(model, "test", "up2")
    import numpy as np
    assert np.array_equal(np.asarray(Image.open(os.path.join(up, "renders", "00000.png"))), np.asarray(img))
    assert os.path.isfile(os.path.join(up, "gt", "00000.png"))


def test_resume_from_checkpoint_matches_uninterrupted(trained, tiny_scene, tmp_path):
    from plyfile import PlyData
    import numpy as np
    model, _ = trained
    resumed = str(tmp_path / "resumed")
    run(["train.py", "-s", tiny_scene, "-m", resumed, "-r", "4", "--eval", "--iterations", "300",
         "--densify_from_iter", "100", "--densify_until_iter", "250", "--densification_interval", "50",
         "--opacity_reset_interval", "100000", "--sh_increase_interval", "100",
         "--test_iterations", "300", "--save_iterations", "300", "--backend", "torch", "--quiet",
         "--start_checkpoint", os.path.join(model, "chkpnt150.pth")])
    a = PlyData.read(os.path.join(model, "point_cloud/iteration_300/point_cloud.ply"))["vertex"]
    b = PlyData.read(os.path.join(resumed, "point_cloud/iteration_300/point_cloud.ply"))["vertex"]
    assert a.count == b.count
    for prop in ("x", "y", "z", "opacity", "scale_0", "f_dc_0", "rot_0"):  # bit-identical
        np.testing.assert_array_equal(np.asarray(a[prop]), np.asarray(b[prop]))


def one_line_error(proc):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_missing_source_folder(tmp_path):
    err = one_line_error(run(["train.py", "-s", str(tmp_path / "nope"), "-m", str(tmp_path / "m")], check=False))
    assert "nope" in err
    assert not os.path.exists(tmp_path / "m")


def test_unknown_backend(tiny_scene, tmp_path):
    err = one_line_error(run(["train.py", "-s", tiny_scene, "-m", str(tmp_path / "m"), "--backend", "vulkan"],
                             check=False))
    assert "vulkan" in err


def test_missing_iteration(trained):
    model, _ = trained
    err = one_line_error(run(["render.py", "-m", model, "--iteration", "12345"], check=False))
    assert "12345" in err and "300" in err


def test_corrupt_ply_at_render(trained, tmp_path):
    import shutil
    model, _ = trained
    copy = str(tmp_path / "copy")
    shutil.copytree(model, copy)
    ply = os.path.join(copy, "point_cloud", "iteration_300", "point_cloud.ply")
    data = open(ply, "rb").read()
    open(ply, "wb").write(data[: len(data) // 3])
    err = one_line_error(run(["render.py", "-m", copy, "--iteration", "300"], check=False))
    assert "point_cloud.ply" in err


def test_model_folder_of_another_scene_is_refused(trained, tmp_path):
    from tools.make_scene import make_scene
    model, _ = trained
    other = tmp_path / "other"
    make_scene(str(other), views=8, width=128, height=96, kind="llff", seed=2, num_points=300, progress=False)
    err = one_line_error(run(["train.py", "-s", str(other), "-m", model, "--iterations", "1"], check=False))
    assert "already holds" in err
