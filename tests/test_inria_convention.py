"""A model renders with the 2D filter it was trained with: an Inria 3DGS folder (no kernel_size in its
cfg_args, no filter_3D in its PLY) with 3DGS's 0.3 px^2 dilation and no opacity compensation; ours and
Mip-Splatting's with the Mip 2D filter; --filter_2d overrides."""
import importlib.util
import math
import os
from argparse import ArgumentParser, Namespace

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from arguments import ModelParams, get_combined_args, write_cfg_args
from gaussian_renderer import render
from scene import GaussianModel, Scene
from scene.cameras import Camera
from scene.conventions import detect_filter_2d, model_filter_2d, training_filter_2d
from tests.cli import run_script, tiny_llff_scene
from utils.errors import ThreeDSRError
from utils.sh_utils import RGB2SH

BACKENDS = ["torch"] + (["cpu"] if importlib.util.find_spec("threedsr_cpu_rasterizer") else [])


def inria_cfg(source_path, model_path, **extra):
    """cfg_args as Inria 3DGS's train.py writes it: the repr of its ModelParams Namespace."""
    return Namespace(sh_degree=3, source_path=source_path, model_path=model_path, images="images",
                     resolution=-1, white_background=False, data_device="cuda", eval=False, **extra)


def write_gaussians_ply(path, xyz, scale, opacity, rgb, filter_3D=None, degree=3):
    """A 3DGS-layout PLY (x y z nx ny nz f_dc f_rest opacity scale rot [filter_3D]) written with
    plyfile, as Inria's GaussianModel.save_ply does: log scales, logit opacities, identity rotations."""
    n = len(xyz)
    cols = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "nx": 0, "ny": 0, "nz": 0}
    dc = RGB2SH(torch.as_tensor(rgb, dtype=torch.float32)).numpy()
    cols.update({f"f_dc_{i}": dc[:, i] for i in range(3)})
    cols.update({f"f_rest_{i}": 0.0 for i in range(3 * ((degree + 1) ** 2 - 1))})
    cols["opacity"] = np.log(opacity / (1 - opacity))
    cols.update({f"scale_{i}": np.log(scale[:, i]) for i in range(3)})
    cols.update({"rot_0": 1.0, "rot_1": 0.0, "rot_2": 0.0, "rot_3": 0.0})
    if filter_3D is not None:
        cols["filter_3D"] = filter_3D
    arr = np.zeros(n, dtype=[(k, "f4") for k in cols])
    for k, v in cols.items():
        arr[k] = v
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))


def model_folder(root, cfg, filter_3D=False, n=1, seed=0):
    """A model folder: cfg_args and point_cloud/iteration_30000/point_cloud.ply."""
    os.makedirs(root, exist_ok=True)
    write_cfg_args(str(root), cfg)
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3)).astype(np.float32) * 0.3
    scale = np.full((n, 3), 0.01, np.float32)
    ply = os.path.join(root, "point_cloud", "iteration_30000", "point_cloud.ply")
    write_gaussians_ply(ply, xyz, scale, np.full(n, 0.8, np.float32), rng.random((n, 3)),
                        filter_3D=np.full(n, 0.002, np.float32) if filter_3D else None)
    return str(root), ply


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    return tiny_llff_scene(tmp_path_factory, "inria_conv", views=3, seed=0, num_points=50, width=64, height=48)


# ---- detection ------------------------------------------------------------------------------------
def test_an_inria_folder_is_detected_as_inria(tmp_path):
    folder, ply = model_folder(tmp_path / "inria", inria_cfg("/data/garden", str(tmp_path / "inria")))
    convention, reason = detect_filter_2d(folder, ply)
    assert convention == "inria" and "no kernel_size" in reason and "filter_3D" in reason


@pytest.mark.parametrize("extra,filter_3D,why", [
    ({"kernel_size": 0.1}, True, "kernel_size"),     # Mip-Splatting: ModelParams.kernel_size and filter_3D
    ({"kernel_size": 0.1}, False, "kernel_size"),    # kernel_size alone (e.g. a fused export beside it)
    ({}, True, "filter_3D"),                         # filter_3D alone (a cfg_args pruned by hand)
    ({"kernel_size": 0.1, "filter_2d": "mip"}, True, "recorded"),  # ours: train.py records the convention
])
def test_mip_splatting_and_our_folders_are_detected_as_mip(tmp_path, extra, filter_3D, why):
    folder, ply = model_folder(tmp_path / "m", inria_cfg("/data/garden", str(tmp_path / "m"), **extra), filter_3D)
    convention, reason = detect_filter_2d(folder, ply)
    assert convention == "mip" and why in reason


def test_a_recorded_convention_wins_over_the_heuristics(tmp_path):
    """An SR run of an Inria model keeps fitting with 3DGS's filter while it gains a filter_3D."""
    folder, ply = model_folder(tmp_path / "r", inria_cfg("/d", str(tmp_path / "r"), filter_2d="inria"), True)
    assert detect_filter_2d(folder, ply)[0] == "inria"
    folder, ply = model_folder(tmp_path / "a", inria_cfg("/d", str(tmp_path / "a"), filter_2d="auto"), True)
    assert detect_filter_2d(folder, ply)[0] == "mip"  # "auto" records nothing: detected


def test_the_folder_holding_the_ply_decides(tmp_path):
    """An SR run under OUT/sr/<name>/ is a model folder of its own: its cfg_args, not OUT's, is read."""
    out, _ = model_folder(tmp_path / "out", inria_cfg("/d", str(tmp_path / "out")))
    run, ply = model_folder(tmp_path / "out" / "sr" / "sr", inria_cfg("/d", str(tmp_path / "out"),
                                                                       filter_2d="mip"), True)
    assert detect_filter_2d(out, ply)[0] == "mip"
    assert detect_filter_2d(out, os.path.join(out, "point_cloud", "iteration_30000", "point_cloud.ply"))[0] == "inria"


def test_flag_overrides_and_bad_values_are_one_line_errors(tmp_path, capsys):
    folder, ply = model_folder(tmp_path / "inria", inria_cfg("/d", str(tmp_path / "inria")))
    assert model_filter_2d(folder, ply, "auto") == "inria"
    assert "Inria 3DGS's 0.3 px^2 dilation" in capsys.readouterr().out  # said once, with the override
    assert model_filter_2d(folder, ply, "mip") == "mip"
    assert model_filter_2d(folder, ply, None) == "inria"
    with pytest.raises(ThreeDSRError, match="choose one of auto, mip, inria") as err:
        model_filter_2d(folder, ply, "gaussian")
    assert "\n" not in str(err.value)
    assert training_filter_2d("auto") == "mip" and training_filter_2d("inria") == "inria"


def test_scene_loads_an_inria_folder_with_its_filter_and_the_flag_overrides(tmp_path, tiny_scene):
    """Through the path render.py and sr_refine.py take: saved cfg_args merged with flags, then Scene."""
    folder, _ = model_folder(tmp_path / "inria", inria_cfg(tiny_scene, str(tmp_path / "inria")), n=20)
    for flags, expected in (([], "inria"), (["--filter_2d", "mip"], "mip")):
        parser = ArgumentParser()
        model = ModelParams(parser, sentinel=True)
        dataset = model.extract(get_combined_args(parser, ["-m", folder] + flags))
        gaussians = GaussianModel(dataset.sh_degree)
        Scene(dataset, gaussians, load_iteration=-1)
        assert gaussians.filter_2d == expected and gaussians.num_points == 20
    ours, _ = model_folder(tmp_path / "ours", inria_cfg(tiny_scene, str(tmp_path / "ours"), kernel_size=0.1,
                                                        llffhold=8, filter_2d="mip"), filter_3D=True)
    parser = ArgumentParser()
    model = ModelParams(parser, sentinel=True)
    gaussians = GaussianModel(3)
    Scene(model.extract(get_combined_args(parser, ["-m", ours])), gaussians, load_iteration=-1)
    assert gaussians.filter_2d == "mip"


def test_render_py_renders_an_inria_folder_with_its_filter(tmp_path, tiny_scene):
    folder, _ = model_folder(tmp_path / "inria", inria_cfg(tiny_scene, str(tmp_path / "inria")), n=20)
    proc = run_script(["render.py", "-m", folder, "--quiet", "--backend", "torch"], timeout=300)
    assert "2D filter: Inria 3DGS's" in proc.stdout
    assert os.path.isdir(os.path.join(folder, "train", "ours_30000", "renders"))


# ---- rendering ------------------------------------------------------------------------------------
def axis_camera(f=40.0, size=16):
    return Camera(uid=0, image_name="c", world_to_camera=torch.eye(4), fx=f, fy=f, cx=size / 2 + 0.5,
                  cy=size / 2 + 0.5, width=size, height=size)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_small_gaussian_peaks_as_inria_draws_it(tmp_path, backend):
    """One isotropic white Gaussian of 0.2 px standard deviation on the optical axis, loaded from an
    Inria folder: every pixel is opacity * exp(-d^2 / 2 (v + 0.3)), v its image-plane variance (3DGS's
    dilated covariance, no compensation), where the Mip filter gives a peak sqrt(v^2 / (v + 0.1)^2)
    times as bright, here less than half."""
    f, z, s, o = 40.0, 2.0, 0.01, 0.8
    folder = tmp_path / "inria"
    write_cfg_args(str(folder), inria_cfg("/d", str(folder)))
    ply = os.path.join(folder, "point_cloud", "iteration_7000", "point_cloud.ply")
    write_gaussians_ply(ply, np.array([[0.0, 0.0, z]], np.float32), np.full((1, 3), s, np.float32),
                        np.array([o], np.float32), np.ones((1, 3)))
    gaussians = GaussianModel(3)
    gaussians.load_ply(ply)
    gaussians.filter_2d = model_filter_2d(str(folder), ply, announce=False)
    assert gaussians.filter_2d == "inria"
    cam = axis_camera(f)
    pipe = Namespace(backend=backend)
    inria = render(cam, gaussians, pipe, torch.zeros(3))["render"][0].detach().double()
    v = (f * s / z) ** 2  # 0.04 px^2
    u = torch.arange(cam.width, dtype=torch.float64) + 0.5
    d2 = (u[None, :] - cam.cx) ** 2 + (u[:, None] - cam.cy) ** 2
    expected = o * torch.exp(-0.5 * d2 / (v + 0.3))
    expected = torch.where(expected >= 1 / 255, expected, torch.zeros_like(expected))
    assert torch.allclose(inria, expected, atol=2e-6)
    assert float(inria.max()) == pytest.approx(o, abs=1e-6)  # the peak keeps the whole opacity

    gaussians.filter_2d = "mip"
    mip = render(cam, gaussians, pipe, torch.zeros(3), kernel_size=0.1)["render"][0].detach().double()
    comp = math.sqrt(v * v / (v + 0.1) ** 2)
    assert float(mip.max()) == pytest.approx(o * comp, rel=1e-5)
    assert float(inria.max()) / float(mip.max()) > 2.0


# ---- an imported model refines directly --------------------------------------------------------------
def test_sr_refine_takes_an_inria_model_folder_without_retraining(tmp_path, tiny_scene):
    """sr_refine.py -m <Inria 3DGS folder> (its cfg_args with data_device='cuda', no kernel_size; a PLY without
    filter_3D): the SR run fits with Inria's 2D filter, records it, and render.py renders the result."""
    folder, _ = model_folder(tmp_path / "inria", inria_cfg(tiny_scene, str(tmp_path / "inria")), n=200)
    run_script(["sr_refine.py", "-m", folder, "--mode", "bicubic", "--steps", "1", "--iters_per_step", "4",
                "--final_iters", "2", "--quiet"])
    run_dir = os.path.join(folder, "sr", "sr_bicubic")
    assert "filter_2d='inria'" in open(os.path.join(run_dir, "cfg_args")).read()
    assert os.path.isfile(os.path.join(run_dir, "point_cloud", "iteration_6", "point_cloud.ply"))
    assert model_filter_2d(run_dir, os.path.join(run_dir, "point_cloud", "iteration_6", "point_cloud.ply"),
                           "auto") == "inria"
    run_script(["render.py", "-m", folder, "--iteration", "sr_bicubic", "--quiet"])
    renders = os.path.join(folder, "train", "bicubic", "renders")
    assert len(os.listdir(renders)) == 3
    from PIL import Image
    assert Image.open(os.path.join(renders, "00000.png")).size == (256, 192)  # 4x the 64x48 training size
