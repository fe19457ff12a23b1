"""Device canary: the whole pipeline with torch's default device set to `meta` and `--device cpu`.

Our users run on CUDA; these machines have no GPU. A tensor created without its inputs' device (a
`torch.zeros(n)` in the strategy, a `torch.arange` in a backend, a network built without a device)
lands on the default device. Setting that to `meta` makes every such tensor fail loudly, so this test
catches, on CPU, exactly the bugs that would stop a CUDA run ("expected all tensors on the same
device"). The CLIs run in-process through their `main`, model loading included.
"""
import json
import os

import pytest
import torch

from cli import tiny_llff_scene

LR_FACTOR = 8


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return tiny_llff_scene(tmp_path_factory, "canary", views=9, seed=3, num_points=800)


@pytest.fixture(scope="module")
def tiny_sr(tmp_path_factory):
    from sr.testing import save_tiny_x4_upscaler
    return save_tiny_x4_upscaler(str(tmp_path_factory.mktemp("canary_sr") / "x4"))


def test_meta_default_device_catches_a_deviceless_tensor(meta_default_device):
    """The canary itself: a tensor made without a device lands on meta and cannot be used with CPU data."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.ones(3, device="cpu") + torch.zeros(3)
    assert torch.zeros(3, device="cpu").device.type == "cpu"


def test_pipeline_runs_with_meta_default_device(scene, tiny_sr, tmp_path, one_thread, meta_default_device):
    import metrics
    import render
    import sr_refine
    import train

    model = str(tmp_path / "model")
    dev = ["--device", "cpu", "--quiet"]
    # densification, an opacity reset, a checkpoint and its resume
    train_args = ["-s", scene, "-m", model, "-r", str(LR_FACTOR), "--eval", "--iterations", "120",
                  "--densify_from_iter", "20", "--densification_interval", "20", "--densify_until_iter", "100",
                  "--opacity_reset_interval", "60", "--test_iterations", "120", "--save_iterations", "120",
                  "--checkpoint_iterations", "80", "--backend", "cpu"] + dev
    assert train.main(train_args) == 0
    assert train.main(train_args + ["--start_checkpoint", os.path.join(model, "chkpnt80.pth")]) == 0
    assert os.path.isfile(os.path.join(model, "point_cloud", "iteration_120", "point_cloud.ply"))
    with open(os.path.join(model, "cfg_args")) as f:
        assert "device=" not in f.read().replace("data_device=", "")  # an invocation flag, not the model's

    # the reference backend renders (its own index tensors), at the training resolution and at 2x
    assert render.main(["-m", model, "--backend", "torch", "--skip_train"] + dev) == 0
    assert render.main(["-m", model, "--backend", "cpu", "--skip_train", "-r", str(LR_FACTOR // 4)] + dev) == 0

    sr_common = ["-m", model, "--sr_model", tiny_sr, "--steps", "2", "--iters_per_step", "15", "--final_iters", "10",
                 "--iters_schedule", "uniform",
                 "--backend", "cpu", "--densify_from_iter", "5", "--densification_interval", "5"] + dev
    for mode in ("3dsr", "per-view", "bicubic"):
        assert sr_refine.main(sr_common + ["--mode", mode]) == 0
    # resume a finished step: take the run back to after step 1 and continue
    run = os.path.join(model, "sr", "sr")
    assert sr_refine.main(sr_common + ["--name", "sr_eta", "--eta", "1", "--keep_checkpoints"]) == 0
    os.remove(os.path.join(model, "sr", "sr_eta", "step_2", "checkpoint.pth"))
    os.remove(os.path.join(model, "sr", "sr_eta", "point_cloud", "iteration_40", "point_cloud.ply"))
    assert sr_refine.main(sr_common + ["--name", "sr_eta", "--eta", "1", "--keep_checkpoints", "--resume"]) == 0
    with open(os.path.join(run, "log.json")) as f:
        log = json.load(f)
    assert log["complete"] and len(log["steps"]) == 2

    assert render.main(["-m", model, "--iteration", "sr", "-r", str(LR_FACTOR // 4), "--skip_train",
                        "--method", "3dsr", "--backend", "torch"] + dev) == 0
    assert metrics.main(["-m", model, "--device", "cpu", "--quiet"]) == 0
    with open(os.path.join(model, "results.json")) as f:
        results = json.load(f)
    assert "3dsr" in results and results["3dsr"]["PSNR"] > 10
