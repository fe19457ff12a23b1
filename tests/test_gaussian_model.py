"""GaussianModel: PLY round trip in the 3DGS layout, the Mip-Splatting 3D filter, densify ops."""
import math

import numpy as np
import pytest
import torch
from plyfile import PlyData

from scene.cameras import Camera
from scene.dataset_readers import BasicPointCloud
from scene.gaussian_model import GaussianModel
from training import densify_ops
from utils.errors import PlyFormatError


def make_model(n=50, seed=0, degree=3):
    rng = np.random.default_rng(seed)
    pcd = BasicPointCloud(points=rng.normal(size=(n, 3)).astype(np.float32),
                          colors=rng.random((n, 3)).astype(np.float32), normals=np.zeros((n, 3), np.float32))
    g = GaussianModel(degree)
    g.create_from_pcd(pcd, spatial_lr_scale=2.0)
    with torch.no_grad():
        for p in g.params.values():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.1)
    g.filter_3D = torch.rand(n, 1) * 0.01
    return g


def camera(z=0.0, f=100.0, w=64, h=48):
    w2c = torch.eye(4)
    w2c[2, 3] = z
    return Camera(uid=0, image_name="c", world_to_camera=w2c, fx=f, fy=f, cx=w / 2, cy=h / 2, width=w, height=h)


def test_ply_round_trip_is_identity(tmp_path):
    g = make_model()
    path = tmp_path / "point_cloud.ply"
    g.save_ply(path)
    names = [p.name for p in PlyData.read(str(path))["vertex"].properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert "f_rest_44" in names and "filter_3D" in names and names[-5:-1] == ["rot_0", "rot_1", "rot_2", "rot_3"]
    h = GaussianModel(3)
    h.load_ply(path)
    for n in g.params:
        assert torch.equal(g.params[n].detach(), h.params[n].detach()), n
    assert torch.equal(g.filter_3D, h.filter_3D)
    assert h.active_sh_degree == 3


def test_ply_f_rest_is_channel_major(tmp_path):
    """3DGS viewers expect all R coefficients first: f_rest_0..14 = R, 15..29 = G, 30..44 = B."""
    g = make_model(n=3)
    with torch.no_grad():
        g.params["f_rest"].zero_()
        g.params["f_rest"][:, 2, 1] = 7.0  # coefficient 2 of the green channel
    g.save_ply(tmp_path / "p.ply")
    v = PlyData.read(str(tmp_path / "p.ply"))["vertex"]
    assert np.all(v["f_rest_17"] == 7.0) and np.all(v["f_rest_2"] == 0.0)


def test_lower_sh_degree_ply_loads(tmp_path):
    g = make_model(degree=1)
    g.save_ply(tmp_path / "p.ply")
    h = GaussianModel(3)
    h.load_ply(tmp_path / "p.ply")
    assert h.max_sh_degree == 1 and h.get_features.shape[1] == 4


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing_prop"])
def test_corrupt_ply_raises_clear_error(tmp_path, damage):
    g = make_model()
    path = tmp_path / "p.ply"
    g.save_ply(path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a ply at all\n" * 10)
    else:
        path.write_bytes(data.replace(b"property float opacity\n", b"property float opacitx\n"))
    with pytest.raises(PlyFormatError) as err:
        GaussianModel(3).load_ply(path)
    assert "\n" not in str(err.value)


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    g = make_model()
    path = tmp_path / "p.ply"
    g.save_ply(path)
    before = path.read_bytes()
    g.params["xyz"] = torch.zeros(1, 3)  # inconsistent sizes -> save fails midway
    with pytest.raises(Exception):
        g.save_ply(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.ply"]


def test_3d_filter_hand_computed():
    """Two Gaussians seen by two cameras: filter = sqrt(0.2) * z / f for the highest rate f/z."""
    g = GaussianModel(0)
    g.params = {"xyz": torch.tensor([[0.0, 0.0, 4.0], [0.0, 0.0, 10.0], [100.0, 0.0, 1.0]])}
    cams = [camera(z=0.0, f=100.0), camera(z=2.0, f=300.0)]  # second camera sits 2 further back
    g.compute_3D_filter(cams)
    # point 0: rates 100/4 = 25 and 300/6 = 50 -> 50. point 1: 100/10 = 10, 300/12 = 25 -> 25.
    # point 2 is outside both images (x/z = 100): gets the coarsest seen filter (rate 25).
    expected = math.sqrt(0.2) / torch.tensor([50.0, 25.0, 25.0])
    assert torch.allclose(g.filter_3D.squeeze(1), expected)


def test_3d_filter_applied_to_scale_and_opacity():
    g = make_model(n=5)
    s = g.get_scaling
    f = g.filter_3D
    assert torch.allclose(g.get_scaling_with_3D_filter, torch.sqrt(s ** 2 + f ** 2))
    coef = torch.sqrt(torch.prod(s ** 2, 1) / torch.prod(s ** 2 + f ** 2, 1))
    assert torch.allclose(g.get_opacity_with_3D_filter.squeeze(1), g.get_opacity.squeeze(1) * coef)


class _Opt:
    position_lr_init, position_lr_final, position_lr_delay_mult, position_lr_max_steps = 1.6e-4, 1.6e-6, 0.01, 30000
    feature_lr, opacity_lr, scaling_lr, rotation_lr = 0.0025, 0.05, 0.005, 0.001


def test_densify_ops_keep_optimizer_in_step():
    g = make_model(n=20)
    g.training_setup(_Opt)
    loss = sum(p.square().sum() for p in g.params.values())
    loss.backward()
    g.optimizer.step()
    mask = torch.zeros(20, dtype=torch.bool)
    mask[[1, 4, 7]] = True
    avg_before = g.optimizer.state[g.params["xyz"]]["exp_avg"].clone()
    densify_ops.duplicate(g, mask)
    assert g.num_points == 23 and g.filter_3D.shape[0] == 23
    st = g.optimizer.state[g.params["xyz"]]
    assert torch.equal(st["exp_avg"][:20], avg_before) and torch.all(st["exp_avg"][20:] == 0)
    split_mask = torch.zeros(23, dtype=torch.bool)
    split_mask[[0, 2]] = True
    scale0 = g.get_scaling[0].clone()
    densify_ops.split(g, split_mask, generator=torch.Generator().manual_seed(0))
    assert g.num_points == 23 - 2 + 4
    assert torch.allclose(g.get_scaling[-4], scale0 / 1.6)  # children follow in order
    densify_ops.remove(g, torch.arange(g.num_points) < 5)
    assert g.num_points == 20
    for group in g.optimizer.param_groups:
        p = group["params"][0]
        assert g.params[group["name"]] is p and g.optimizer.state[p]["exp_avg"].shape == p.shape


def test_reset_opacity_caps_filtered_opacity():
    g = make_model(n=10)
    g.training_setup(_Opt)
    with torch.no_grad():
        g.params["opacity"].fill_(3.0)
    densify_ops.reset_opacity(g, 0.01)
    assert torch.all(g.get_opacity_with_3D_filter <= 0.01 + 1e-6)
