"""Tests for tools/make_scene.py, the embedded synthetic COLMAP scene."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tools.make_scene import SceneArgumentError, make_scene  # noqa: E402
from utils.errors import SceneFormatError  # noqa: E402

SMALL = dict(views=8, width=128, height=96, num_points=300, progress=False)


def _read_rgb(path):
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img[:, :, ::-1]


def _all_files(root):
    out = {}
    for base, _, files in os.walk(root):
        for f in files:
            p = os.path.join(base, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


@pytest.fixture(scope="module")
def small_llff(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes") / "llff_s3"
    meta = make_scene(out, seed=3, **SMALL)
    return out, meta


@pytest.fixture(scope="module")
def medium_scene(tmp_path_factory):
    """Enough resolution that texture filtering does not dominate the colour comparison."""
    out = tmp_path_factory.mktemp("scenes") / "medium"
    make_scene(out, views=4, width=320, height=240, num_points=600, seed=1, progress=False)
    return out


def test_layout(small_llff):
    out, meta = small_llff
    names = sorted(os.listdir(out / "images"))
    assert names == [f"view_{i:03d}.png" for i in range(8)]
    for f in (2, 4, 8):
        assert sorted(os.listdir(out / f"images_{f}")) == names
    for stem in ("cameras", "images", "points3D"):
        assert (out / "sparse" / "0" / f"{stem}.bin").is_file()
    on_disk = json.loads((out / "scene_meta.json").read_text())
    assert on_disk["kind"] == "llff" and on_disk["seed"] == 3 and on_disk["views"] == 8
    assert on_disk["size"] == [128, 96]
    assert on_disk["textures"] and all(t["licence"] for t in on_disk["textures"].values())
    assert meta["num_points"] == on_disk["num_points"] > 100
    # no temp folders left beside the scene
    assert [p for p in os.listdir(out.parent) if p.startswith(".")] == []


def test_deterministic_and_seed_sensitive(small_llff, tmp_path):
    out, _ = small_llff
    again = tmp_path / "again"
    make_scene(again, seed=3, **SMALL)
    a, b = _all_files(out), _all_files(again)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]

    other = tmp_path / "other"
    make_scene(other, seed=4, **SMALL)
    c = _all_files(other)
    assert c["images/view_000.png"] != a["images/view_000.png"]
    assert c["sparse/0/images.bin"] != a["sparse/0/images.bin"]
    m3 = json.loads(a["scene_meta.json"])
    m4 = json.loads(c["scene_meta.json"])
    assert [o.get("centre") for o in m3["objects"]] != [o.get("centre") for o in m4["objects"]]


def test_downsampled_images_are_area_averages(small_llff):
    out, _ = small_llff
    full = _read_rgb(out / "images" / "view_002.png")
    assert full.shape == (96, 128, 3)
    for f in (2, 4, 8):
        lr = _read_rgb(out / f"images_{f}" / "view_002.png")
        assert lr.shape == (96 // f, 128 // f, 3)
        mean = full.reshape(96 // f, f, 128 // f, f, 3).astype(np.float64).mean(axis=(1, 3))
        assert np.abs(lr - mean).max() <= 0.5 + 1e-9
        area = cv2.resize(full, (128 // f, 96 // f), interpolation=cv2.INTER_AREA)
        assert np.abs(lr.astype(int) - area.astype(int)).max() <= 1


def test_cameras_poses_and_points_are_exact(medium_scene):
    from scene.colmap_io import qvec_to_rotmat, read_model

    cams, imgs, pts = read_model(medium_scene / "sparse" / "0")
    assert list(cams) == [1]
    cam = cams[1]
    assert cam.model == "PINHOLE" and (cam.width, cam.height) == (320, 240)
    fx, fy, cx, cy = cam.params
    assert fx == fy and (cx, cy) == (160.0, 120.0)
    assert len(imgs) == 4 and len(pts) > 300
    assert min(len(t) for t in pts.tracks) >= 2

    images = {iid: _read_rgb(medium_scene / "images" / im.name).astype(np.float64) for iid, im in imgs.items()}
    err, err_shifted = [], []
    for i in range(len(pts)):
        for iid, k in pts.tracks[i]:
            im = imgs[int(iid)]
            R = qvec_to_rotmat(im.qvec)
            pc = R @ pts.xyz[i] + im.tvec
            assert pc[2] > 0
            uv = np.array([fx * pc[0] / pc[2] + cx, fy * pc[1] / pc[2] + cy])
            # the stored 2D observation is the exact projection (COLMAP pixel convention)
            np.testing.assert_allclose(im.xys[k], uv, atol=1e-6)
            assert im.point3D_ids[k] == pts.ids[i]
            x, y = int(uv[0]), int(uv[1])  # the pixel whose area contains the projection
            img = images[int(iid)]
            err.append(np.abs(img[y, x] - pts.rgb[i]).mean())
            for dx, dy in ((3, 0), (-3, 0), (0, 3), (0, -3)):
                xs, ys = min(max(x + dx, 0), cam.width - 1), min(max(y + dy, 0), cam.height - 1)
                err_shifted.append(np.abs(img[ys, xs] - pts.rgb[i]).mean())
    err, err_shifted = np.array(err), np.array(err_shifted)
    # colours agree up to texture filtering and supersampling; a 3-pixel pose error would be far worse
    assert np.median(err) < 6, np.median(err)
    assert np.mean(err) < 0.55 * np.mean(err_shifted), (np.mean(err), np.mean(err_shifted))


def test_fine_detail_is_lost_at_one_eighth(tmp_path):
    out = tmp_path / "hf"
    make_scene(out, views=2, width=960, height=720, num_points=50, seed=0, progress=False)
    full = _read_rgb(out / "images" / "view_000.png")
    lr = _read_rgb(out / "images_8" / "view_000.png")
    assert lr.shape == (90, 120, 3)
    up = cv2.resize(lr, (960, 720), interpolation=cv2.INTER_CUBIC)
    mse = ((full.astype(np.float64) - up.astype(np.float64)) ** 2).mean()
    psnr = 10 * np.log10(255.0 ** 2 / mse)

    def hf(img):
        grey = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY).astype(np.float64)
        return np.abs(cv2.Laplacian(grey, cv2.CV_64F)).mean()

    assert psnr < 27, psnr  # bicubic from images_8 is far from the full-resolution image
    assert hf(full) > 4 * hf(up), (hf(full), hf(up))


def test_360_kind(tmp_path):
    from scene.colmap_io import read_model

    out = tmp_path / "ring"
    meta = make_scene(out, views=8, width=128, height=96, kind="360", num_points=200, seed=2, progress=False)
    assert meta["kind"] == "360"
    cams, imgs, pts = read_model(out / "sparse" / "0")
    assert len(imgs) == 8 and len(pts) > 50
    centres = np.array([-qvec_R(im).T @ im.tvec for im in imgs.values()])
    # cameras surround the origin: the mean camera direction from the centre is small
    horiz = centres[:, [0, 2]]
    assert np.linalg.norm(horiz.mean(0)) < 0.3 * np.linalg.norm(horiz, axis=1).mean()
    img = _read_rgb(out / "images" / "view_000.png")
    assert img.std() > 10


def qvec_R(im):
    from scene.colmap_io import qvec_to_rotmat

    return qvec_to_rotmat(im.qvec)


@pytest.mark.parametrize("kwargs, words", [
    (dict(width=100), "multiple of 8"),
    (dict(height=60), "multiple of 8"),
    (dict(kind="sphere"), "kind"),
    (dict(views=1), "views"),
])
def test_bad_arguments(tmp_path, kwargs, words):
    args = dict(SMALL, **kwargs)
    with pytest.raises(SceneArgumentError, match=words) as exc:
        make_scene(tmp_path / "x", **args)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, SceneFormatError)
    assert not (tmp_path / "x").exists()


def test_existing_output_folder(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SceneFormatError, match="not empty"):
        make_scene(out, **SMALL)
    assert (out / "keep.txt").read_text() == "mine"
    make_scene(out, force=True, **dict(SMALL, views=2, num_points=20))
    assert not (out / "keep.txt").exists()
    assert len(os.listdir(out / "images")) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    make_scene(empty, **dict(SMALL, views=2, num_points=20))  # an empty folder is fine
    assert (empty / "scene_meta.json").is_file()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    import tools.make_scene as ms

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ms, "_write_sparse", boom)
    with pytest.raises(KeyboardInterrupt):
        ms.make_scene(tmp_path / "half", **dict(SMALL, views=2))
    assert os.listdir(tmp_path) == []


def test_cli_one_line_error_and_help(tmp_path):
    env = dict(os.environ, PYTHONPATH="")
    r = subprocess.run([sys.executable, "tools/make_scene.py", "--out", str(tmp_path / "s"), "--width", "100"],
                       cwd=REPO, capture_output=True, text=True, env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "multiple of 8" in lines[0]
    assert not (tmp_path / "s").exists()
    r = subprocess.run([sys.executable, "tools/make_scene.py", "--help"], cwd=REPO, capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0 and "--kind" in r.stdout
