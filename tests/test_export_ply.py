"""tools/export_ply.py --fused: a standard 3DGS PLY with the 3D filter folded in, which a viewer that
ignores filter_3D draws exactly as 3dsr draws the model (under the same 2D filter)."""
import importlib.util
import os
from argparse import Namespace

import numpy as np
import pytest
import torch
from plyfile import PlyData

from arguments import write_cfg_args
from gaussian_renderer import render
from scene.cameras import Camera
from scene.conventions import detect_filter_2d
from scene.dataset_readers import BasicPointCloud
from scene.gaussian_model import GaussianModel
from tests.cli import run_script
from tools.export_ply import FUSED_NAME, main as export_main
from utils.errors import ModelNotFoundError, ThreeDSRError

BACKENDS = ["torch"] + (["cpu"] if importlib.util.find_spec("threedsr_cpu_rasterizer") else [])
# Inria 3DGS's property list for SH degree 3, in order: what plain viewers (SIBR reads it as a struct) expect
STANDARD = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def trained_like_model(n=400, seed=0):
    """Gaussians in front of the cameras below, many of them thin or sub-pixel so the 3D filter matters."""
    g = torch.Generator().manual_seed(seed)
    pts = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([1.6, 1.2, 0.8]) + torch.tensor([0.0, 0.0, 3.0])
    pcd = BasicPointCloud(points=pts.numpy(), colors=torch.rand(n, 3, generator=g).numpy(),
                          normals=np.zeros((n, 3), np.float32))
    model = GaussianModel(3)
    model.create_from_pcd(pcd, spatial_lr_scale=1.0)
    with torch.no_grad():
        model.params["scaling"].copy_(torch.log(0.02 * torch.exp(torch.randn(n, 3, generator=g))))
        model.params["opacity"].copy_(torch.randn(n, 1, generator=g) * 1.5)
        model.params["rotation"].copy_(torch.randn(n, 4, generator=g))
        model.params["f_rest"].copy_(torch.randn(model.params["f_rest"].shape, generator=g) * 0.1)
    model.active_sh_degree = 3
    model.compute_3D_filter([camera()])
    return model


def camera(f=60.0, w=64, h=48, tx=0.0):
    w2c = torch.eye(4)
    w2c[0, 3] = tx
    return Camera(uid=0, image_name="c", world_to_camera=w2c, fx=f, fy=f, cx=w / 2, cy=h / 2, width=w, height=h)


def our_model_folder(root, cfg_extra=None, iteration=1000):
    model = trained_like_model()
    cfg = {"sh_degree": 3, "source_path": "/data/scene", "model_path": str(root), "images": "images",
           "resolution": 8, "white_background": False, "data_device": "", "eval": True, "kernel_size": 0.1,
           "filter_2d": "mip"}
    cfg.update(cfg_extra or {})
    write_cfg_args(str(root), Namespace(**{k: v for k, v in cfg.items() if v is not None}))
    ply = os.path.join(root, "point_cloud", f"iteration_{iteration}", "point_cloud.ply")
    model.save_ply(ply)
    return model, ply


def render_image(model, backend, cam):
    return render(cam, model, Namespace(backend=backend), torch.tensor([0.1, 0.2, 0.3]))["render"].detach()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_viewer_ignoring_filter_3D_draws_the_fused_ply_as_we_draw_the_model(tmp_path, backend, capsys):
    model, ply = our_model_folder(tmp_path / "out")
    assert float(model.filter_3D.max()) > float(model.get_scaling.min())  # the filter changes things
    assert export_main(["-m", str(tmp_path / "out"), "--fused"]) == 0
    fused_path = os.path.join(os.path.dirname(ply), FUSED_NAME)
    assert fused_path in capsys.readouterr().out
    names = [p.name for p in PlyData.read(fused_path)["vertex"].properties]
    assert names == STANDARD
    with open(fused_path, "rb") as f:  # SIBR reads the vertex count from the third header line
        assert f.readline() == b"ply\n" and f.readline().startswith(b"format binary_little_endian")
        assert f.readline() == f"element vertex {model.num_points}\n".encode()

    viewer = GaussianModel(3)
    viewer.load_ply(fused_path)  # a viewer without filter_3D: zeros
    assert float(viewer.filter_3D.abs().max()) == 0.0 and viewer.filter_2d == "mip"
    for cam in (camera(), camera(f=120.0, w=128, h=96, tx=0.2)):
        ours, theirs = render_image(model, backend, cam), render_image(viewer, backend, cam)
        assert (ours - theirs).abs().max() <= 1e-5
    plain = GaussianModel(3)
    plain.load_ply(ply)
    plain.filter_3D = torch.zeros_like(plain.filter_3D)  # the unfused file in the same viewer is not the model
    assert (render_image(model, backend, camera()) - render_image(plain, backend, camera())).abs().max() > 1e-2


def test_the_fold_is_mip_splatting_eq_8(tmp_path):
    model = trained_like_model(n=50)
    fused = model.fused_copy()
    assert torch.allclose(fused.get_scaling, model.get_scaling_with_3D_filter, rtol=1e-6)
    assert torch.allclose(fused.get_opacity, model.get_opacity_with_3D_filter, rtol=1e-5, atol=1e-7)
    for name in ("xyz", "f_dc", "f_rest", "rotation"):
        assert torch.equal(fused.params[name], model.params[name])
    assert fused.active_sh_degree == model.active_sh_degree and float(fused.filter_3D.abs().max()) == 0.0
    model.save_fused_ply(tmp_path / "f.ply")
    back = GaussianModel(3)
    back.load_ply(tmp_path / "f.ply")
    for name in fused.params:
        assert torch.equal(back.params[name].detach(), fused.params[name].detach()), name
    empty = GaussianModel(3)
    assert empty.fused_copy().num_points == 0


@pytest.mark.parametrize("cfg_extra", [{}, {"filter_2d": None}])  # ours; Mip-Splatting's (kernel_size only)
def test_the_fused_file_keeps_the_mip_convention(tmp_path, cfg_extra):
    """The fused PLY has no filter_3D, which alone would read as an Inria model: beside it the folder's
    cfg_args (kernel_size, or the recorded filter_2d) keeps it "mip", also when it replaces
    point_cloud.ply in a copy of the folder."""
    out = tmp_path / "out"
    _, ply = our_model_folder(out, cfg_extra)
    assert export_main(["-m", str(out), "--fused"]) == 0
    fused = os.path.join(os.path.dirname(ply), FUSED_NAME)
    assert detect_filter_2d(str(out), fused)[0] == "mip"
    copy = tmp_path / "copy"
    assert export_main(["-m", str(out), "--fused", "--out", str(copy / "point_cloud" / "iteration_1000"
                                                               / "point_cloud.ply")]) == 0
    write_cfg_args(str(copy), Namespace(kernel_size=0.1, **({} if cfg_extra else {"filter_2d": "mip"})))
    assert detect_filter_2d(str(copy), str(copy / "point_cloud" / "iteration_1000" / "point_cloud.ply"))[0] == "mip"


def test_iteration_choice_and_sr_runs(tmp_path):
    out = tmp_path / "out"
    our_model_folder(out, iteration=7000)
    our_model_folder(out, iteration=30000)
    run_model, run_ply = our_model_folder(out / "sr" / "sr", iteration=5000)
    assert export_main(["-m", str(out), "--fused", "--iteration", "7000"]) == 0
    assert os.path.isfile(out / "point_cloud" / "iteration_7000" / FUSED_NAME)
    assert not os.path.exists(out / "point_cloud" / "iteration_30000" / FUSED_NAME)
    assert export_main(["-m", str(out), "--fused"]) == 0  # latest numeric iteration
    assert os.path.isfile(out / "point_cloud" / "iteration_30000" / FUSED_NAME)
    assert export_main(["-m", str(out), "--fused", "--iteration", "sr"]) == 0
    assert os.path.isfile(os.path.join(os.path.dirname(run_ply), FUSED_NAME))


def test_bad_input_is_a_one_line_error(tmp_path):
    _, ply = our_model_folder(tmp_path / "out")
    with pytest.raises(ThreeDSRError, match="pass --fused"):
        export_main(["-m", str(tmp_path / "out")])
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        export_main(["-m", str(tmp_path / "missing"), "--fused"])
    with pytest.raises(ModelNotFoundError, match="iteration 5 not found"):
        export_main(["-m", str(tmp_path / "out"), "--fused", "--iteration", "5"])
    with pytest.raises(ThreeDSRError, match="the model's own PLY"):
        export_main(["-m", str(tmp_path / "out"), "--fused", "--out", ply])
    proc = run_script(["tools/export_ply.py", "-m", str(tmp_path / "missing"), "--fused"], check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
