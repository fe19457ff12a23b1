"""view.py / viewer/: the scene list of a model folder, camera snapping, PLY -> splat buffers, the
preview cap, errors, on-demand renders and a headless server start/stop (no browser)."""
import json
import math
import os
import socket
import time
from argparse import Namespace

import numpy as np
import pytest
import torch

from arguments import write_cfg_args
from scene.dataset_readers import BasicPointCloud
from scene.gaussian_model import GaussianModel
from utils.errors import ModelNotFoundError, PlyFormatError
from utils.sh_utils import SH2RGB
from viewer import splats as S


def make_gaussians(n=40, seed=0):
    rng = np.random.default_rng(seed)
    pcd = BasicPointCloud(points=(rng.normal(size=(n, 3)) * 0.5).astype(np.float32),
                          colors=rng.random((n, 3)).astype(np.float32), normals=np.zeros((n, 3), np.float32))
    g = GaussianModel(1)
    g.create_from_pcd(pcd, spatial_lr_scale=1.0)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for p in g.params.values():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    g.filter_3D = torch.rand(n, 1, generator=torch.Generator().manual_seed(seed + 1)) * 0.05
    return g


def look_rotation(position, target):
    """camera-to-world rotation (OpenCV axes) of a camera at `position` looking at `target`."""
    z = np.asarray(target, float) - np.asarray(position, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, -1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], 1)


def camera_entry(i, position, w=64, h=48, f=60.0):
    R = look_rotation(position, [0, 0, 0])
    return {"id": i, "img_name": f"view_{i:02d}", "width": w, "height": h, "position": list(map(float, position)),
            "rotation": R.tolist(), "fx": f, "fy": f * 1.1}


@pytest.fixture
def model(tmp_path):
    out = tmp_path / "garden"
    write_cfg_args(str(out), Namespace(source_path=str(tmp_path / "nodata"), model_path=str(out), images="images",
                                       resolution=8, white_background=False, sh_degree=1, kernel_size=0.1,
                                       filter_2d="mip"))
    cams = [camera_entry(i, [3 * math.cos(i), 0.3 * i, 3 * math.sin(i)]) for i in range(3)]
    (out / "cameras.json").write_text(json.dumps(cams))
    for it, seed in ((500, 1), (1000, 2)):
        make_gaussians(seed=seed).save_ply(str(out / "point_cloud" / f"iteration_{it}" / "point_cloud.ply"))
    run = out / "sr" / "sr"
    write_cfg_args(str(run), Namespace(model_path=str(run), kernel_size=0.1, filter_2d="mip", sh_degree=1))
    make_gaussians(seed=3).save_ply(str(run / "point_cloud" / "iteration_300" / "point_cloud.ply"))
    make_gaussians(seed=4).save_ply(str(out / "sr" / "sr_bicubic" / "point_cloud" / "iteration_7" / "point_cloud.ply"))
    # render.py / metrics.py outputs for view_01 (test) and view_00 (train)
    test_dir = out / "test" / "3dsr"
    (test_dir / "gt").mkdir(parents=True)
    (test_dir / "cameras.json").write_text(json.dumps([{**cams[1], "render": "00000.png"}]))
    from utils.image_utils import save_image
    save_image(str(test_dir / "gt" / "00000.png"), np.full((48, 64, 3), 0.25, np.float32))
    train_dir = out / "train" / "ours_1000"
    train_dir.mkdir(parents=True)
    (train_dir / "cameras.json").write_text(json.dumps([{**cams[0], "render": "00000.png"}]))
    (out / "per_view.json").write_text(json.dumps({"3dsr": {"PSNR": {"00000.png": 27.5}, "SSIM": {"00000.png": 0.9}}}))
    return str(out)


def test_scene_list_of_a_model_folder(model):
    assert S.viewer_iterations(model) == ["1000", "sr", "sr_bicubic"]
    assert S.iteration_label("1000") == "LR 3DGS (iteration 1000)"
    assert S.iteration_label("sr") == "SR run 'sr'"
    g = S.load_gaussians(model, "sr")
    assert g.num_points == 40 and g.filter_2d == "mip"
    assert torch.allclose(g.get_xyz, make_gaussians(seed=3).get_xyz)


def test_view_snapping_matches_the_dataset_camera(model):
    import viser.transforms as tf
    for e in S.read_cameras(model):
        pose = S.snap_pose(e, look_distance=2.0)
        R, C = np.asarray(e["rotation"]), np.asarray(e["position"])
        np.testing.assert_allclose(pose["position"], C)
        # viser: wxyz = R_world_camera with OpenCV axes (look +Z, up -Y)
        np.testing.assert_allclose(tf.SO3(pose["wxyz"]).as_matrix(), R, atol=1e-9)
        look = pose["look_at"] - pose["position"]
        np.testing.assert_allclose(look / np.linalg.norm(look), R[:, 2], atol=1e-9)
        np.testing.assert_allclose(look / np.linalg.norm(look), -C / np.linalg.norm(C), atol=1e-9)  # at the origin
        np.testing.assert_allclose(pose["up_direction"], -R[:, 1])
        assert pose["fov"] == pytest.approx(2 * math.atan(e["height"] / (2 * e["fy"])))
        # the renderer's camera of the same entry is the same pose
        cam = S.camera_from_entry(e, factor=2)
        np.testing.assert_allclose(cam.camera_center.numpy(), C, atol=1e-5)
        assert (cam.width, cam.height) == (128, 96) and cam.fov_y_rad == pytest.approx(pose["fov"], rel=1e-6)


def test_apply_pose_sets_a_camera_handle():
    class Handle:
        pass
    e = camera_entry(0, [1.0, 2.0, 3.0])
    h = Handle()
    S.apply_pose(h, S.snap_pose(e))
    R = np.asarray(e["rotation"])
    np.testing.assert_allclose(h.position, e["position"])
    np.testing.assert_allclose(h.look_at - h.position, R[:, 2])
    np.testing.assert_allclose(h.up_direction, -R[:, 1])
    # and back: a free camera -> entry keeps pose and vertical fov
    h.wxyz = S.snap_pose(e)["wxyz"]
    h.fov = S.snap_pose(e)["fov"]
    from viewer.app import entry_from_camera
    back = entry_from_camera(h, e["width"], e["height"])
    np.testing.assert_allclose(back["rotation"], R, atol=1e-9)
    assert back["fy"] == pytest.approx(e["fy"])


def test_rotmat_quaternion_round_trip():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(200, 4))
    R = S.quat_to_rotmat(q)
    for qi, Ri in zip(q, R):
        back = S.rotmat_to_wxyz(Ri)
        qi = qi / np.linalg.norm(qi) * np.sign(qi[0])
        np.testing.assert_allclose(back, qi, atol=1e-9)


def test_splat_buffers_match_our_model():
    g = make_gaussians(n=60, seed=5)
    b = S.splat_buffers(g, max_splats=0)
    assert b["total"] == b["shown"] == 60
    np.testing.assert_allclose(b["centers"], g.get_xyz.detach().numpy(), rtol=1e-6)
    # covariance from the model's own rotation and filtered scale (build Sigma with torch independently)
    q = torch.nn.functional.normalize(g.params["rotation"].detach().double(), dim=-1)
    w, x, y, z = q.unbind(-1)
    R = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)
    s = g.get_scaling_with_3D_filter.detach().double()
    sigma = R @ torch.diag_embed(s ** 2) @ R.transpose(1, 2)
    np.testing.assert_allclose(b["covariances"], sigma.numpy(), rtol=1e-4, atol=1e-9)
    # the 3D filter is in: eigenvalues are scale^2 + filter^2
    ev = np.sort(np.linalg.eigvalsh(b["covariances"].astype(np.float64)), 1)
    want = np.sort((g.get_scaling.detach().double() ** 2 + g.filter_3D.double() ** 2).numpy(), 1)
    np.testing.assert_allclose(ev, want, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(b["opacities"], g.get_opacity_with_3D_filter.detach().numpy(), rtol=1e-5)
    assert (b["opacities"] < torch.sigmoid(g.params["opacity"]).detach().numpy() + 1e-7).all()
    rgb = np.clip(SH2RGB(g.params["f_dc"].detach().numpy().reshape(-1, 3)), 0, 1)
    np.testing.assert_allclose(b["rgbs"], rgb, atol=1e-6)
    assert b["rgbs"].min() >= 0 and b["rgbs"].max() <= 1
    assert b["centers"].dtype == b["covariances"].dtype == np.float32
    assert b["opacities"].shape == (60, 1) and b["covariances"].shape == (60, 3, 3)


def test_subsample_cap_is_fixed_and_noted():
    g = make_gaussians(n=100, seed=6)
    b1, b2 = S.splat_buffers(g, max_splats=30), S.splat_buffers(g, max_splats=30)
    assert b1["shown"] == 30 and b1["total"] == 100 and len(b1["centers"]) == 30
    np.testing.assert_array_equal(b1["centers"], b2["centers"])  # fixed seed
    idx = S.subsample_indices(100, 30)
    assert len(set(idx.tolist())) == 30 and (np.diff(idx) > 0).all()
    np.testing.assert_allclose(b1["centers"], g.get_xyz.detach().numpy()[idx])
    assert "30 of 100" in S.splat_note(b1)
    assert "of" not in S.splat_note(S.splat_buffers(g, max_splats=100)).split("splats")[0]
    assert len(S.subsample_indices(10, 0)) == 10


def test_ground_truth_and_metrics_of_a_view(model):
    gt = S.ground_truth_path(model, "view_01")
    assert gt and gt.endswith(os.path.join("test", "3dsr", "gt", "00000.png"))
    assert S.ground_truth_path(model, "view_02") is None
    assert S.view_metrics(model, "view_01") == {"3dsr": {"PSNR": 27.5, "SSIM": 0.9}}
    assert S.view_metrics(model, "view_00") == {}
    assert "27.5000" in S.format_metrics(S.view_metrics(model, "view_01"))
    assert S.camera_split(model, S.read_cameras(model)) == {"view_00": "train", "view_01": "test", "view_02": ""}


def test_render_entry_writes_the_png(model):
    e = S.read_cameras(model)[1]
    g = S.load_gaussians(model, "1000")
    img, path = S.render_entry(model, "1000", g, e, 2, backend="torch")
    assert img.shape == (96, 128, 3) and img.dtype == np.uint8 and img.max() > 0
    assert path == os.path.join(model, "view_renders", "1000_view_01_x2.png") and os.path.isfile(path)


def run_view(argv, capsys):
    import view
    from utils.system_utils import run_cli
    with pytest.raises(SystemExit) as exc:
        run_cli(view.main, argv)
    return exc.value.code, capsys.readouterr().err


def test_errors_are_one_line(model, tmp_path, capsys):
    code, err = run_view(["-m", str(tmp_path / "missing")], capsys)
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    (tmp_path / "plain").mkdir()
    code, err = run_view(["-m", str(tmp_path / "plain")], capsys)
    assert code == 2 and "is not a model folder" in err
    empty = tmp_path / "empty"
    write_cfg_args(str(empty), Namespace(model_path=str(empty)))
    code, err = run_view(["-m", str(empty)], capsys)
    assert code == 2 and "no saved iterations" in err
    with pytest.raises(ModelNotFoundError, match="iteration sr_x not found"):
        S.load_gaussians(model, "sr_x")
    ply = os.path.join(model, "point_cloud", "iteration_1000", "point_cloud.ply")
    with open(ply, "wb") as f:
        f.write(b"ply\nformat garbage\n")
    code, err = run_view(["-m", model, "--port", "0"], capsys)
    assert code == 2 and err.count("\n") == 1 and "point_cloud.ply" in err
    with pytest.raises(PlyFormatError):
        S.load_gaussians(model, "1000")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_starts_serves_and_stops(model):
    pytest.importorskip("viser")
    import urllib.request
    from viewer.app import ViewerApp
    port = free_port()
    app = ViewerApp(model, host="127.0.0.1", port=port, max_splats=25, verbose=False)
    try:
        app.start()
        with urllib.request.urlopen(f"http://127.0.0.1:{app.port}/", timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        assert set(app._handles) == {"1000"} and "25 of 40" in app.gui_note.content
        assert app.gui_model.options == ("LR 3DGS (iteration 1000)", "SR run 'sr'", "SR run 'sr_bicubic'")
        app.show("sr", wait=True)
        assert set(app._handles) == {"1000", "sr"}
        assert app._handles["sr"].visible and not app._handles["1000"].visible
        app.show("1000", wait=True)  # cached: not sent again
        assert len(app._handles) == 2 and app._handles["1000"].visible and app.previous == "sr"
        app.snap(app.views[next(k for k in app.views if "view_01" in k)])
        assert app.gui_gt.visible and app.gui_gt.image.shape == (48, 64, 3) and "27.5" in app.gui_metrics.content
        path = app.request_render(1.0).result(timeout=120)
        assert path.endswith("1000_view_01_x1.png") and os.path.isfile(path) and app.gui_image.visible
    finally:
        app.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)


# ---- side by side --------------------------------------------------------------------------------
class FakeCamera:
    """A viser camera handle as a moved browser reports it."""
    def __init__(self, entry, width=400, height=200):
        pose = S.snap_pose(entry)
        self.position, self.wxyz, self.fov = pose["position"] + 0.3, pose["wxyz"], pose["fov"]
        self.image_width, self.image_height, self.update_timestamp = width, height, 1.0


@pytest.fixture
def started(model):
    pytest.importorskip("viser")
    from viewer.app import ViewerApp
    app = ViewerApp(model, host="127.0.0.1", port=free_port(), max_splats=25, verbose=False, backend="torch")
    app.start()
    yield app
    app.stop()


def test_side_by_side_renders_both_models_with_one_camera(started, monkeypatch):
    from viewer import app as A
    from viewer import compare as C
    app = started
    calls = []
    real = S.render_view
    monkeypatch.setattr(A.S, "render_view", lambda g, e, f, *a: calls.append((g, e, f)) or real(g, e, f, *a))
    app.set_compare(left="1000", right="sr", enabled=True, side_width=64)
    assert app.wait_compare(60)
    (g1, e1, f1), (g2, e2, f2) = calls[-2:]  # GUI callbacks may have queued (superseded) requests too
    assert e1 is e2 and f1 == f2 and g1 is app.gaussians("1000") and g2 is app.gaussians("sr")
    last = app.last_compare
    ks, white = app.render_settings
    want_l = S.to_uint8(real(app.gaussians("1000"), e1, f1, ks, white, "torch"))
    want_r = S.to_uint8(real(app.gaussians("sr"), e1, f1, ks, white, "torch"))
    np.testing.assert_array_equal(last["left_image"], want_l)
    np.testing.assert_array_equal(last["right_image"], want_r)
    left, right = C.split_side_by_side(last["image"])
    np.testing.assert_array_equal(left[30:], want_l[30:])  # below the burnt-in label
    np.testing.assert_array_equal(right[30:], want_r[30:])
    assert app.gui_compare_image.label == "left: LR 3DGS (iteration 1000) | right: SR run 'sr'"
    assert app.compare_panel.visible and app.gui_left.value == "LR 3DGS (iteration 1000)"
    # swap: the left/right choice follows
    app.set_compare(left="sr", right="1000")
    assert app.wait_compare(60)
    np.testing.assert_array_equal(app.last_compare["left_image"], want_r)
    # a moved browser camera: both sides use its pose, vertical fov and aspect
    calls.clear()
    cam = FakeCamera(S.read_cameras(app.model_path)[0])
    app.request_compare(cam)
    assert app.wait_compare(60)
    (_, e1, _), (_, e2, _) = calls[-2:]
    assert e1 is e2 and e1["img_name"] == "browser camera" and (e1["width"], e1["height"]) == (64, 32)
    np.testing.assert_allclose(e1["position"], cam.position)
    # snapped and still there: the dataset camera itself
    view = app.views[next(k for k in app.views if "view_01" in k)]
    app.snap(view)
    pose = S.snap_pose(view)
    cam.position = pose["position"]
    cam.wxyz = pose["wxyz"]
    assert app.compare_view(cam) == (view, 64 / view["width"])
    app.set_compare(enabled=False)
    assert not app.compare_panel.visible


def test_side_by_side_errors(started, model):
    app = started
    with pytest.raises(ModelNotFoundError, match="iteration sr_x not found"):
        app.set_compare(right="sr_x")
    # a run that vanishes while the viewer runs: the page says so, the server keeps going
    os.remove(os.path.join(model, "sr", "sr_bicubic", "point_cloud", "iteration_7", "point_cloud.ply"))
    app.set_compare(right="sr_bicubic", enabled=True)
    assert app.wait_compare(60)
    assert "error" in app.last_compare and "compare failed" in app.gui_compare_status.content
    app.set_compare(right="sr")
    assert app.wait_compare(60) and "error" not in app.last_compare


def test_latest_request_wins():
    import threading
    from viewer.compare import LatestWorker, compare_size, side_by_side
    gate, seen = threading.Event(), []
    worker = LatestWorker(lambda r: (gate.wait(10), seen.append(r)))
    try:
        worker.submit(0)
        time.sleep(0.2)  # 0 is running
        for i in range(1, 20):
            worker.submit(i)
        gate.set()
        assert worker.wait_idle(10)
        assert seen == [0, 19]
    finally:
        worker.stop()
    assert compare_size(320, 2.0) == (320, 160) and compare_size(100, 0) == (100, 75)
    img = side_by_side(np.zeros((10, 20, 3), np.uint8), np.zeros((12, 20, 3), np.uint8), gap=4)
    assert img.shape == (12, 44, 3)
