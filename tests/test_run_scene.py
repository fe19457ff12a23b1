"""tools/run_scene.py: one scene of the protocol end to end on tiny settings; stages are skipped when
their results exist; a method without SR weights is recorded as unavailable, not run."""
import json
import os

import pytest
from cli import run_script, tiny_llff_scene

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


run = run_script


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return tiny_llff_scene(tmp_path_factory, "runscene", views=10, seed=2, num_points=1500)


TINY = ["--lr_res", "8", "--scale", "4", "--train_iters", "150", "--steps", "2", "--iters_per_step", "10",
        "--extra_train=--densify_from_iter 50 --densify_until_iter 100 --densification_interval 50"]


def test_run_scene_all_methods_then_skip(scene, tmp_path):
    from sr.testing import save_tiny_realesrgan, save_tiny_x4_upscaler
    sr_folder = save_tiny_x4_upscaler(str(tmp_path / "x4"))
    isr = save_tiny_realesrgan(str(tmp_path / "rrdb.safetensors"))
    models = ["--sr_model", sr_folder, "--isr", isr]
    model = str(tmp_path / "out" / "tiny")
    run(["tools/run_scene.py", "-s", scene, "-m", model] + models + TINY)
    results = json.load(open(os.path.join(model, "results.json")))
    assert sorted(results) == ["3dsr", "bicubic", "lr-3dgs", "per-view-isr", "per-view-sr"]
    from PIL import Image
    for method in results:
        assert results[method]["views"] == 2 and isinstance(results[method]["PSNR"], float)
        img = Image.open(os.path.join(model, "test", method, "renders", "00000.png"))
        assert img.size == (128, 96)  # images_2 of the 256x192 scene: x4 of the 32x24 LR views
    timings = json.load(open(os.path.join(model, "timings.json")))
    for stage in ("train", "render lr-3dgs", "sr bicubic", "sr per-view-isr", "sr per-view-sr", "sr 3dsr",
                  "render 3dsr", "metrics"):
        assert timings[stage] > 0, stage
    assert not os.path.exists(os.path.join(model, "unavailable.json")) or \
        json.load(open(os.path.join(model, "unavailable.json"))) == {}

    # a rerun does no training, SR or rendering again (only the metrics are refreshed)
    proc = run(["tools/run_scene.py", "-s", scene, "-m", model] + models + TINY)
    ran = [line.split("]")[0][1:] for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [r for r in ran if not r.startswith("render] backend")] == ["metrics"], ran

    # the summary table names every method with its numbers
    run(["tools/summarize.py", str(tmp_path / "out")])
    table = open(str(tmp_path / "out" / "results.md")).read()
    for name in ("LR 3DGS @HR", "Bicubic → 3DGS", "Real-ESRGAN → 3DGS", "Per-view SR → 3DGS", "3DSR"):
        assert name in table


def test_run_scene_records_missing_sr_weights(scene, tmp_path):
    model = str(tmp_path / "tiny")
    proc = run(["tools/run_scene.py", "-s", scene, "-m", model, "--sr_model", str(tmp_path / "no_weights"),
                "--methods", "lr-3dgs", "3dsr"] + TINY)
    assert "unavailable" in proc.stdout
    why = json.load(open(os.path.join(model, "unavailable.json")))
    assert list(why) == ["3dsr"] and "does not exist" in why["3dsr"]
    assert sorted(json.load(open(os.path.join(model, "results.json")))) == ["lr-3dgs"]
    assert not os.path.exists(os.path.join(model, "sr", "sr"))


def test_run_scene_bad_scale(scene, tmp_path):
    proc = run(["tools/run_scene.py", "-s", scene, "-m", str(tmp_path / "m"), "--lr_res", "8", "--scale", "3"],
               check=False)
    assert proc.returncode == 2 and "does not divide" in proc.stderr.strip().splitlines()[-1]
