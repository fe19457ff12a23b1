"""Tests for scene/dataset_readers.py on tiny COLMAP and Blender scenes written into tmp_path."""
import json
import math
import os

import cv2
import numpy as np
import pytest

from scene.colmap_io import ColmapCamera, ColmapImage, ColmapPoints, rotmat_to_qvec, write_model
from scene.dataset_readers import read_scene
from utils.errors import SceneFormatError, ThreeDSRError

W, H = 40, 32
MARKER = np.array([0.3, -0.2, 0.25])  # a 3D point painted into every image as one bright pixel


def look_at_w2c(center, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)):
    """OpenCV world-to-camera [4,4] for a camera at `center` looking at `target`."""
    c = np.asarray(center, float)
    f = np.asarray(target, float) - c
    f /= np.linalg.norm(f)
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    R = np.stack([r, d, f])  # rows: x right, y down, z forward
    w2c = np.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ c
    return w2c


def project(w2c, K, X):
    x = w2c[:3, :3] @ X + w2c[:3, 3]
    return np.array([K[0] * x[0] / x[2] + K[2], K[1] * x[1] / x[2] + K[3]]), x[2]


def single_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def make_colmap_scene(root, n=10, ext=".bin", models=("PINHOLE", "SIMPLE_PINHOLE"), size=(W, H), seed=0,
                      img_ext=".png", points=True):
    """Write a scene: `n` cameras on a circle looking at the origin, noise images with the marker painted in.

    Returns a dict with the ground truth (name -> w2c, intrinsics, marker pixel, centres).
    """
    rng = np.random.default_rng(seed)
    w, h = size
    cams = {}
    intr = {}
    for k, model in enumerate(models):
        cid = k + 1
        if model == "PINHOLE":
            params = [0.9 * w, 0.95 * w, w / 2 + 0.3, h / 2 - 0.4]
        elif model == "SIMPLE_PINHOLE":
            params = [0.85 * w, w / 2 - 0.2, h / 2 + 0.1]
        else:  # a distorted model, for the error test
            params = [0.9 * w, 0.9 * w, w / 2, h / 2] + [0.01] * (8 - 4 if model == "OPENCV" else 0)
        cams[cid] = ColmapCamera(cid, model, w, h, params)
        p = params
        intr[cid] = (p[0], p[0], p[1], p[2]) if model == "SIMPLE_PINHOLE" else tuple(p[:4])
    images, truth = {}, {}
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    # COLMAP image ids deliberately not in name order
    names = [f"img_{(7 * k) % n:02d}{img_ext}" for k in range(n)]
    for k, name in enumerate(names):
        ang = 2 * np.pi * k / n
        centre = np.array([4 * np.cos(ang), 4 * np.sin(ang), 0.5 + 0.1 * k])
        w2c = look_at_w2c(centre)
        cid = 1 + k % len(models)
        images[100 + k] = ColmapImage(100 + k, rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3], cid, name)
        uv, z = project(w2c, intr[cid], MARKER)
        assert z > 0
        img = (rng.uniform(0, 0.2, size=(h, w, 3)) * 255).astype(np.uint8)
        px = (int(np.floor(uv[0])), int(np.floor(uv[1])))
        if 0 <= px[0] < w and 0 <= px[1] < h:  # inside for the default size
            img[px[1], px[0]] = 255  # even after 2x2 averaging brighter than any noise-only pixel
        cv2.imwrite(os.path.join(root, "images", name), img[:, :, ::-1])
        truth[os.path.splitext(name)[0]] = dict(w2c=w2c, K=intr[cid], px=px, centre=centre, rgb=img, name=name)
    if points:
        pts = ColmapPoints(ids=[1, 2, 3], xyz=[MARKER, [0, 0, 0], [1, 1, 1]],
                           rgb=[[255, 128, 255], [0, 0, 0], [10, 20, 30]], errors=[0.1, 0.2, 0.3], tracks=None)
    else:
        pts = ColmapPoints.empty()
    write_model(os.path.join(root, "sparse", "0"), cams, images, pts, ext=ext)
    return truth


# ------------------------------------------------------------------------------------------ COLMAP


@pytest.mark.parametrize("ext", [".bin", ".txt"])
def test_colmap_full_resolution(tmp_path, ext):
    truth = make_colmap_scene(tmp_path, ext=ext)
    info = read_scene(tmp_path, resolution=1)
    assert info.source_format == "colmap"
    assert info.test_cameras == []
    cams = info.train_cameras
    assert [c.image_name for c in cams] == sorted(truth)  # sorted by name
    assert [c.uid for c in cams] == list(range(len(cams)))
    for c in cams:
        t = truth[c.image_name]
        assert (c.width, c.height) == (W, H) and c.image.shape == (H, W, 3) and c.image.dtype == np.float32
        assert (c.fx, c.fy, c.cx, c.cy) == pytest.approx(t["K"], abs=1e-12)
        np.testing.assert_allclose(c.world_to_camera, t["w2c"], atol=1e-12)
        np.testing.assert_array_equal(c.image, t["rgb"].astype(np.float32) / 255)
        assert c.image_path == os.path.join(str(tmp_path), "images", t["name"])
    pc = info.point_cloud
    assert pc.points.dtype == np.float32 and pc.points.shape == (3, 3)
    np.testing.assert_allclose(pc.points[0], MARKER, atol=1e-6)
    np.testing.assert_allclose(pc.colors[0], [1.0, 128 / 255, 1.0], atol=1e-7)
    np.testing.assert_array_equal(pc.normals, 0)


@pytest.mark.parametrize("resolution", [1, 2])
def test_colmap_pose_projects_marker(tmp_path, resolution):
    """world_to_camera + intrinsics project the marker onto the pixel that was painted."""
    make_colmap_scene(tmp_path)
    for c in read_scene(tmp_path, resolution=resolution).train_cameras:
        uv, z = project(c.world_to_camera, (c.fx, c.fy, c.cx, c.cy), MARKER)
        assert z > 0
        brightest = np.unravel_index(np.argmax(c.image.sum(axis=2)), c.image.shape[:2])
        assert (int(np.floor(uv[1])), int(np.floor(uv[0]))) == tuple(int(v) for v in brightest)


def test_colmap_downsample_in_memory(tmp_path):
    truth = make_colmap_scene(tmp_path, n=4)
    info = read_scene(tmp_path, resolution=2)
    for c in info.train_cameras:
        t = truth[c.image_name]
        assert (c.width, c.height) == (W // 2, H // 2)
        assert (c.fx, c.fy, c.cx, c.cy) == pytest.approx(tuple(v / 2 for v in t["K"]), abs=1e-12)
        full = t["rgb"].astype(np.float32) / 255
        box = full.reshape(H // 2, 2, W // 2, 2, 3).mean(axis=(1, 3))  # area averaging = 2x2 box mean
        np.testing.assert_allclose(c.image, box, atol=1e-6)
        assert c.image_path.endswith(os.path.join("images", t["name"]))


def test_colmap_uses_images_N_folder(tmp_path):
    """An images_2 folder is used as is; intrinsics follow its actual size, even with other extensions."""
    truth = make_colmap_scene(tmp_path, n=4, img_ext=".jpg")
    os.makedirs(tmp_path / "images_2")
    w2, h2 = 21, 15  # deliberately not exactly W/2, H/2: scaling uses the loaded size per axis
    for t in truth.values():
        stem = os.path.splitext(t["name"])[0]
        cv2.imwrite(str(tmp_path / "images_2" / f"{stem}.png"), np.full((h2, w2, 3), 77, np.uint8))
    info = read_scene(tmp_path, resolution=2)
    for c in info.train_cameras:
        t = truth[c.image_name]
        assert c.image_path == os.path.join(str(tmp_path), "images_2", c.image_name + ".png")
        assert (c.width, c.height) == (w2, h2)
        fx, fy, cx, cy = t["K"]
        assert (c.fx, c.cx) == pytest.approx((fx * w2 / W, cx * w2 / W), abs=1e-12)
        assert (c.fy, c.cy) == pytest.approx((fy * h2 / H, cy * h2 / H), abs=1e-12)
        np.testing.assert_allclose(c.image, 77 / 255, atol=1e-7)


def test_colmap_custom_images_folder_and_N(tmp_path):
    make_colmap_scene(tmp_path, n=3)
    os.rename(tmp_path / "images", tmp_path / "rgb")
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path)
    single_line(e, "images", "--images")
    info = read_scene(tmp_path, images="rgb", resolution=2)
    assert info.train_cameras[0].image_path.startswith(os.path.join(str(tmp_path), "rgb", ""))
    os.makedirs(tmp_path / "rgb_2")
    for f in os.listdir(tmp_path / "rgb"):
        cv2.imwrite(str(tmp_path / "rgb_2" / f), np.zeros((H // 2, W // 2, 3), np.uint8))
    info = read_scene(tmp_path, images="rgb", resolution=2)
    assert info.train_cameras[0].image_path.startswith(os.path.join(str(tmp_path), "rgb_2", ""))


def test_colmap_not_divisible_warns(tmp_path, capsys):
    truth = make_colmap_scene(tmp_path, n=3, size=(41, 30))
    info = read_scene(tmp_path, resolution=4)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "41x30" in out[0] and "10x8" in out[0]  # round(10.25), round(7.5) = 8
    c = info.train_cameras[0]
    assert (c.width, c.height) == (10, 8)
    fx, fy, cx, cy = truth[c.image_name]["K"]
    assert (c.fx, c.fy, c.cx, c.cy) == pytest.approx((fx * 10 / 41, fy * 8 / 30, cx * 10 / 41, cy * 8 / 30))


def test_colmap_auto_resolution_caps_width(tmp_path, capsys):
    make_colmap_scene(tmp_path, n=2, size=(1700, 20))
    info = read_scene(tmp_path)  # resolution -1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "1600" in out[0]
    c = info.train_cameras[0]
    assert (c.width, c.height) == (1600, round(20 / (1700 / 1600)))
    capsys.readouterr()
    assert read_scene(tmp_path, resolution=1).train_cameras[0].width == 1700
    assert capsys.readouterr().out == ""


def test_colmap_eval_split(tmp_path):
    truth = make_colmap_scene(tmp_path, n=10)
    names = sorted(truth)
    info = read_scene(tmp_path, eval=True)
    assert [c.image_name for c in info.test_cameras] == [names[0], names[8]]
    assert [c.image_name for c in info.train_cameras] == [n for i, n in enumerate(names) if i % 8]
    info3 = read_scene(tmp_path, eval=True, llffhold=3)
    assert [c.image_name for c in info3.test_cameras] == names[::3]
    uids = [c.uid for c in info.train_cameras + info.test_cameras]
    assert sorted(uids) == list(range(10))


def test_colmap_nerf_normalization(tmp_path):
    truth = make_colmap_scene(tmp_path, n=10)
    names = sorted(truth)
    for eval_ in (False, True):
        info = read_scene(tmp_path, eval=eval_)
        train_names = [n for i, n in enumerate(names) if not eval_ or i % 8]
        centres = np.array([truth[n]["centre"] for n in train_names])
        mean = centres.mean(axis=0)
        radius = 1.1 * max(np.linalg.norm(c - mean) for c in centres)
        norm = info.nerf_normalization
        np.testing.assert_allclose(norm["translate"], -mean, atol=1e-9)  # Inria: translate = -centre
        assert norm["radius"] == pytest.approx(radius, rel=1e-9)


def test_colmap_rgba_and_gray_images(tmp_path):
    truth = make_colmap_scene(tmp_path, n=2)
    names = sorted(truth)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = 200  # red, fully transparent on the left half, opaque on the right
    rgba[:, W // 2:, 3] = 255
    cv2.imwrite(str(tmp_path / "images" / truth[names[0]]["name"]), rgba[..., [2, 1, 0, 3]])
    cv2.imwrite(str(tmp_path / "images" / truth[names[1]]["name"]), np.full((H, W), 51, np.uint8))
    for white in (False, True):
        a, b = read_scene(tmp_path, white_background=white).train_cameras
        bg = 1.0 if white else 0.0
        np.testing.assert_allclose(a.image[:, : W // 2], bg)
        np.testing.assert_allclose(a.image[:, W // 2:], np.broadcast_to([200 / 255, 0, 0], (H, W // 2, 3)),
                                   atol=1e-7)
        assert b.image.shape == (H, W, 3)
        np.testing.assert_allclose(b.image, 0.2, atol=1e-7)


# ------------------------------------------------------------------------------------------ COLMAP errors


def test_missing_source_folder(tmp_path):
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path / "does_not_exist")
    single_line(e, "does_not_exist")


def test_unknown_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path)
    single_line(e, "sparse/0", "transforms_train.json")


def test_model_directly_in_sparse_gets_a_hint(tmp_path):
    make_colmap_scene(tmp_path, n=2)
    os.rename(tmp_path / "sparse" / "0", tmp_path / "tmp0")
    os.rmdir(tmp_path / "sparse")
    os.rename(tmp_path / "tmp0", tmp_path / "sparse")
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path)
    single_line(e, "sparse/0")


def test_unsupported_camera_model(tmp_path):
    make_colmap_scene(tmp_path, n=3, models=("PINHOLE", "OPENCV"))
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path)
    single_line(e, "OPENCV", "camera 2", "image_undistorter")


def test_image_missing_on_disk(tmp_path):
    truth = make_colmap_scene(tmp_path, n=3)
    gone = truth[sorted(truth)[1]]["name"]
    os.remove(tmp_path / "images" / gone)
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path)
    single_line(e, gone, os.path.join(str(tmp_path), "images"))


def test_mixed_image_sizes(tmp_path):
    truth = make_colmap_scene(tmp_path, n=3)
    odd = truth[sorted(truth)[2]]["name"]
    cv2.imwrite(str(tmp_path / "images" / odd), np.zeros((H + 2, W, 3), np.uint8))
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path)
    single_line(e, odd, "different sizes")


def test_unreadable_image(tmp_path):
    truth = make_colmap_scene(tmp_path, n=2)
    bad = truth[sorted(truth)[0]]["name"]
    (tmp_path / "images" / bad).write_bytes(b"not a png")
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path)
    single_line(e, bad)


@pytest.mark.parametrize("fname", ["cameras.bin", "points3D.bin", "images.bin"])
def test_truncated_model_file(tmp_path, fname):
    make_colmap_scene(tmp_path, n=3)
    p = tmp_path / "sparse" / "0" / fname
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path)
    single_line(e, fname)


def test_no_points(tmp_path):
    make_colmap_scene(tmp_path, n=3, points=False)
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path)
    single_line(e, "point_triangulator")


def test_eval_leaves_no_training_views(tmp_path):
    make_colmap_scene(tmp_path, n=1)
    assert len(read_scene(tmp_path).train_cameras) == 1
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path, eval=True)
    single_line(e, "--eval")


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2"])
def test_bad_resolution(tmp_path, bad):
    make_colmap_scene(tmp_path, n=2)
    with pytest.raises(ThreeDSRError) as e:
        read_scene(tmp_path, resolution=bad)
    single_line(e, "resolution")


# ------------------------------------------------------------------------------------------ Blender


BW, BH = 16, 12
ANGLE_X = 0.69


def gl_look_at_c2w(centre, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)):
    """Blender/OpenGL camera-to-world: camera looks down its -z, y up."""
    c = np.asarray(centre, float)
    back = c - np.asarray(target, float)
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    cam_up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, cam_up, back, c
    return m


def make_blender_scene(root, n_train=3, n_test=2, with_ext=False):
    rng = np.random.default_rng(1)
    info = {}
    for split, n in (("train", n_train), ("test", n_test)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        frames = []
        for k in range(n):
            ang = 2 * np.pi * k / max(n, 1) + (0.3 if split == "test" else 0.0)
            centre = [3 * np.cos(ang), 3 * np.sin(ang), 1.0 + 0.2 * k]
            rgba = np.zeros((BH, BW, 4), np.uint8)
            rgba[..., :3] = rng.integers(0, 256, size=(BH, BW, 3))
            rgba[..., 3] = 255
            rgba[:, :4, 3] = 0  # transparent left strip
            rgba[:, 4:8, 3] = 128  # half-transparent strip
            cv2.imwrite(os.path.join(root, split, f"r_{k}.png"), rgba[..., [2, 1, 0, 3]])
            info[(split, k)] = dict(rgba=rgba, centre=np.array(centre))
            frames.append({"file_path": f"./{split}/r_{k}" + (".png" if with_ext else ""),
                           "rotation": 0.0, "transform_matrix": gl_look_at_c2w(centre).tolist()})
        with open(os.path.join(root, f"transforms_{split}.json"), "w") as f:
            json.dump({"camera_angle_x": ANGLE_X, "frames": frames}, f)
    return info


@pytest.mark.parametrize("with_ext", [False, True])
def test_blender_intrinsics_and_pose(tmp_path, with_ext):
    truth = make_blender_scene(tmp_path, with_ext=with_ext)
    before = sorted(os.listdir(tmp_path))
    info = read_scene(tmp_path, eval=True)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written into the source folder
    assert info.source_format == "blender"
    assert len(info.train_cameras) == 3 and len(info.test_cameras) == 2
    assert [c.image_name for c in info.test_cameras] == ["r_0", "r_1"]
    focal = 0.5 * BW / math.tan(0.5 * ANGLE_X)
    for split, cams in (("train", info.train_cameras), ("test", info.test_cameras)):
        for k, c in enumerate(cams):
            assert (c.width, c.height) == (BW, BH)
            assert (c.fx, c.fy, c.cx, c.cy) == pytest.approx((focal, focal, BW / 2, BH / 2))
            # the camera looks at the origin: it is in front (z > 0) and projects to the image centre
            x = c.world_to_camera[:3, :3] @ np.zeros(3) + c.world_to_camera[:3, 3]
            assert x[2] > 0
            np.testing.assert_allclose(x[:2], 0, atol=1e-12)
            # a point above the origin (world +z is "up" for these cameras) appears above the centre: v < cy
            uv, z = project(c.world_to_camera, (c.fx, c.fy, c.cx, c.cy), np.array([0, 0, 0.5]))
            assert z > 0 and uv[1] < c.cy
            # the centre recovered from world_to_camera is the one in transform_matrix
            R, t = c.world_to_camera[:3, :3], c.world_to_camera[:3, 3]
            np.testing.assert_allclose(-R.T @ t, truth[(split, k)]["centre"], atol=1e-12)
            np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
            assert np.linalg.det(R) == pytest.approx(1.0)
    uids = [c.uid for c in info.train_cameras + info.test_cameras]
    assert sorted(uids) == list(range(5))


def test_blender_background(tmp_path):
    truth = make_blender_scene(tmp_path, n_test=0)
    rgba = truth[("train", 0)]["rgba"].astype(np.float32) / 255
    a = rgba[..., 3:]
    for white, bg in ((True, 1.0), (False, 0.0)):
        c = read_scene(tmp_path, white_background=white).train_cameras[0]
        np.testing.assert_allclose(c.image[:, :4], bg)
        np.testing.assert_allclose(c.image, rgba[..., :3] * a + bg * (1 - a), atol=1e-6)
        assert c.image.dtype == np.float32 and c.image.shape == (BH, BW, 3)


def test_blender_downsample_and_merge(tmp_path):
    truth = make_blender_scene(tmp_path)
    info = read_scene(tmp_path, resolution=2, white_background=True)
    assert len(info.train_cameras) == 5 and info.test_cameras == []  # eval=False: test merged into train
    focal = 0.5 * (BW // 2) / math.tan(0.5 * ANGLE_X)
    c = info.train_cameras[0]
    assert (c.width, c.height) == (BW // 2, BH // 2)
    assert (c.fx, c.fy, c.cx, c.cy) == pytest.approx((focal, focal, BW / 4, BH / 4))
    rgba = truth[("train", 0)]["rgba"].astype(np.float32) / 255
    comp = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    np.testing.assert_allclose(c.image, comp.reshape(BH // 2, 2, BW // 2, 2, 3).mean(axis=(1, 3)), atol=1e-6)
    centres = np.array([t["centre"] for t in truth.values()])
    assert info.nerf_normalization["radius"] == pytest.approx(
        1.1 * np.linalg.norm(centres - centres.mean(0), axis=1).max())


def test_blender_random_point_cloud(tmp_path):
    make_blender_scene(tmp_path, n_test=0)
    a = read_scene(tmp_path, seed=3).point_cloud
    b = read_scene(tmp_path, seed=3).point_cloud
    c = read_scene(tmp_path, seed=4).point_cloud
    assert a.points.shape == (100_000, 3) and a.points.dtype == np.float32
    assert a.colors.shape == (100_000, 3) and a.colors.dtype == np.float32 and a.normals.shape == (100_000, 3)
    assert a.points.min() >= -1.3 and a.points.max() <= 1.3 and a.points.min() < -1.2 and a.points.max() > 1.2
    assert a.colors.min() >= 0 and a.colors.max() <= 1
    np.testing.assert_array_equal(a.points, b.points)
    assert not np.array_equal(a.points, c.points)


def test_blender_missing_image(tmp_path):
    make_blender_scene(tmp_path, n_test=0)
    os.remove(tmp_path / "train" / "r_1.png")
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path)
    single_line(e, "r_1", "transforms_train.json")


def test_blender_bad_json(tmp_path):
    make_blender_scene(tmp_path, n_test=0)
    (tmp_path / "transforms_train.json").write_text('{"frames": []}')
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path)
    single_line(e, "camera_angle_x")
    (tmp_path / "transforms_train.json").write_text('{"frames": [')
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path)
    single_line(e, "transforms_train.json")


def test_colmap_image_names_with_subfolders(tmp_path):
    truth = make_colmap_scene(tmp_path, n=3)
    # rename the images into a sub-folder and the COLMAP names with it
    from scene.colmap_io import read_model
    cams, imgs, pts = read_model(tmp_path / "sparse" / "0")
    os.makedirs(tmp_path / "images" / "cam0")
    for im in imgs.values():
        os.rename(tmp_path / "images" / im.name, tmp_path / "images" / "cam0" / im.name)
        im.name = "cam0/" + im.name
    write_model(tmp_path / "sparse" / "0", cams, imgs, pts)
    info = read_scene(tmp_path, resolution=1)
    assert sorted(c.image_name for c in info.train_cameras) == sorted(truth)
    assert all(os.sep + os.path.join("images", "cam0", "") in c.image_path for c in info.train_cameras)


def test_colmap_partial_images_N_folder(tmp_path):
    truth = make_colmap_scene(tmp_path, n=3)
    os.makedirs(tmp_path / "images_2")
    first = truth[sorted(truth)[0]]["name"]
    cv2.imwrite(str(tmp_path / "images_2" / first), np.zeros((H // 2, W // 2, 3), np.uint8))
    with pytest.raises(SceneFormatError) as e:
        read_scene(tmp_path, resolution=2)
    single_line(e, "images_2", "in memory")
