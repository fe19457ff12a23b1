"""Tests for scene/colmap_io.py: binary/text round trips, rotations, corrupt files, pycolmap cross-check."""
import os

import numpy as np
import pytest

from scene.colmap_io import (
    CAMERA_MODELS,
    ColmapCamera,
    ColmapImage,
    ColmapPoints,
    qvec_to_rotmat,
    read_model,
    rotmat_to_qvec,
    write_model,
)
from utils.errors import SceneFormatError


def random_model(seed=0, n_cams=4, n_imgs=6, n_pts=50):
    rng = np.random.default_rng(seed)
    models = ["SIMPLE_PINHOLE", "PINHOLE", "OPENCV", "SIMPLE_RADIAL", "FULL_OPENCV", "THIN_PRISM_FISHEYE"]
    cameras = {}
    for k in range(n_cams):
        cid = 3 * k + 1  # non-contiguous ids
        model = models[k % len(models)]
        cameras[cid] = ColmapCamera(cid, model, int(rng.integers(10, 4000)), int(rng.integers(10, 3000)),
                                    rng.normal(size=CAMERA_MODELS[model][1]) * 100)
    cam_ids = list(cameras)
    point_ids = np.arange(n_pts) * 2 + 1  # non-contiguous ids
    observed = point_ids[: n_pts - 5]  # the last five points are seen by no image: empty tracks
    images = {}
    tracks = {int(p): [] for p in point_ids}
    for k in range(n_imgs):
        iid = 10 + 7 * k
        q = rotmat_to_qvec(qvec_to_rotmat(rng.normal(size=4)))
        n2d = 0 if k in (0, 3) else int(rng.integers(1, 30))  # some images without keypoints
        ids = np.where(rng.random(n2d) < 0.3, -1, rng.choice(observed, n2d))
        for idx, pid in enumerate(ids.tolist()):
            if pid >= 0:
                tracks[pid].append((iid, idx))
        images[iid] = ColmapImage(iid, q, rng.normal(size=3) * 5, cam_ids[k % len(cam_ids)],
                                  f"frame_{k:03d}.png" if k != 2 else "sub_dir/nested.jpg",
                                  rng.uniform(0, 1000, size=(n2d, 2)), ids)
    points = ColmapPoints(ids=point_ids, xyz=rng.normal(size=(n_pts, 3)) * 10,
                          rgb=rng.integers(0, 256, size=(n_pts, 3)), errors=rng.uniform(0, 2, n_pts),
                          tracks=[np.array(tracks[int(p)], dtype=np.int32).reshape(-1, 2) for p in point_ids])
    return cameras, images, points


def assert_models_equal(a, b):
    ca, ia, pa = a
    cb, ib, pb = b
    assert set(ca) == set(cb)
    for k in ca:
        assert (ca[k].id, ca[k].model, ca[k].width, ca[k].height) == (cb[k].id, cb[k].model, cb[k].width, cb[k].height)
        np.testing.assert_array_equal(ca[k].params, cb[k].params)
        assert cb[k].params.dtype == np.float64
    assert set(ia) == set(ib)
    for k in ia:
        x, y = ia[k], ib[k]
        assert (x.id, x.camera_id, x.name) == (y.id, y.camera_id, y.name)
        np.testing.assert_array_equal(x.qvec, y.qvec)
        np.testing.assert_array_equal(x.tvec, y.tvec)
        np.testing.assert_array_equal(x.xys, y.xys)
        np.testing.assert_array_equal(x.point3D_ids, y.point3D_ids)
        assert y.xys.shape == (len(x.xys), 2) and y.xys.dtype == np.float64
        assert y.point3D_ids.dtype == np.int64
    np.testing.assert_array_equal(pa.ids, pb.ids)
    np.testing.assert_array_equal(pa.xyz, pb.xyz)
    np.testing.assert_array_equal(pa.rgb, pb.rgb)
    np.testing.assert_array_equal(pa.errors, pb.errors)
    assert pb.ids.dtype == np.int64 and pb.xyz.dtype == np.float64 and pb.rgb.dtype == np.uint8
    assert len(pa.tracks) == len(pb.tracks)
    for ta, tb in zip(pa.tracks, pb.tracks):
        assert tb.shape == (len(ta), 2)
        np.testing.assert_array_equal(ta, tb)


@pytest.mark.parametrize("ext", [".bin", ".txt"])
def test_round_trip(tmp_path, ext):
    model = random_model(seed=1)
    write_model(tmp_path, *model, ext=ext)
    assert sorted(os.listdir(tmp_path)) == sorted(f + ext for f in ("cameras", "images", "points3D"))
    assert_models_equal(model, read_model(tmp_path))


def test_bin_txt_bin_equal(tmp_path):
    model = random_model(seed=2)
    write_model(tmp_path / "a", *model, ext=".bin")
    write_model(tmp_path / "b", *read_model(tmp_path / "a"), ext=".txt")
    write_model(tmp_path / "c", *read_model(tmp_path / "b"), ext=".bin")
    for f in ("cameras.bin", "images.bin", "points3D.bin"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "c" / f).read_bytes()
    assert_models_equal(model, read_model(tmp_path / "c"))


def test_empty_model_round_trip(tmp_path):
    for ext in (".bin", ".txt"):
        d = tmp_path / ext[1:]
        write_model(d, {}, {}, ColmapPoints.empty(), ext=ext)
        cams, imgs, pts = read_model(d)
        assert cams == {} and imgs == {} and len(pts) == 0
        assert pts.xyz.shape == (0, 3) and pts.tracks == []


def test_binary_layout_is_colmap(tmp_path):
    """Hand-check the byte layout of cameras.bin against COLMAP's documented format."""
    import struct
    cams = {5: ColmapCamera(5, "PINHOLE", 640, 480, [500.0, 501.0, 320.0, 240.0])}
    img = ColmapImage(7, [1, 0, 0, 0], [1, 2, 3], 5, "a.png", [[1.5, 2.5]], [-1])
    write_model(tmp_path, cams, {7: img}, ColmapPoints.empty())
    data = (tmp_path / "cameras.bin").read_bytes()
    assert data == struct.pack("<QiiQQ4d", 1, 5, 1, 640, 480, 500.0, 501.0, 320.0, 240.0)
    data = (tmp_path / "images.bin").read_bytes()
    expect = (struct.pack("<QI7dI", 1, 7, 1, 0, 0, 0, 1, 2, 3, 5) + b"a.png\0"
              + struct.pack("<Q2dQ", 1, 1.5, 2.5, 2 ** 64 - 1))
    assert data == expect


def test_names_with_spaces(tmp_path):
    cams = {1: ColmapCamera(1, "SIMPLE_PINHOLE", 4, 3, [1, 2, 3])}
    imgs = {1: ColmapImage(1, [1, 0, 0, 0], [0, 0, 0], 1, "my photo.png")}
    write_model(tmp_path, cams, imgs, ColmapPoints.empty(), ext=".bin")  # binary stores any name
    assert read_model(tmp_path)[1][1].name == "my photo.png"
    with pytest.raises(ValueError, match="whitespace"):
        write_model(tmp_path / "t", cams, imgs, ColmapPoints.empty(), ext=".txt")
    assert not (tmp_path / "t" / "cameras.txt").exists()  # nothing half-written


def test_text_reader_tolerates_variants(tmp_path):
    """CRLF endings, blank lines, extra spaces, and a missing POINTS2D line for the last image."""
    (tmp_path / "cameras.txt").write_text("# c\r\n\r\n1  PINHOLE 4 3 1 2 3 4\r\n")
    (tmp_path / "images.txt").write_text(
        "# i\n1 1 0 0 0 0 0 0 1 first.png\n\n2 1 0 0 0 1 2 3 1 second.png\n1.5 2.5 7 3 4 -1\n"
        "3 1 0 0 0 0 0 1 1 third.png\n")
    (tmp_path / "points3D.txt").write_text("# p\n7 1 2 3 255 0 10 0.5 2 1\n")
    cams, imgs, pts = read_model(tmp_path)
    assert cams[1].params.tolist() == [1, 2, 3, 4]
    assert imgs[1].xys.shape == (0, 2) and imgs[3].xys.shape == (0, 2)
    assert imgs[2].point3D_ids.tolist() == [7, -1] and imgs[2].xys.tolist() == [[1.5, 2.5], [3, 4]]
    assert imgs[3].name == "third.png"
    assert pts.rgb.tolist() == [[255, 0, 10]] and pts.tracks[0].tolist() == [[2, 1]]


def test_text_images_omitted_points_line(tmp_path):
    (tmp_path / "cameras.txt").write_text("1 SIMPLE_PINHOLE 4 3 1 2 3\n")
    (tmp_path / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n2 1 0 0 0 0 0 0 1 b.png\n")
    _, imgs, pts = read_model(tmp_path)
    assert sorted(im.name for im in imgs.values()) == ["a.png", "b.png"]
    assert len(pts) == 0  # no points3D file: empty point set


def test_rotations():
    rng = np.random.default_rng(3)
    for _ in range(100):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        R = qvec_to_rotmat(q)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        q2 = rotmat_to_qvec(R)
        assert q2[0] >= 0
        np.testing.assert_allclose(q2, q * np.sign(q[0]), atol=1e-10)
        np.testing.assert_allclose(qvec_to_rotmat(q2), R, atol=1e-12)
    # 180-degree rotations (w = 0) and identity
    for R in (np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1]), np.eye(3)):
        np.testing.assert_allclose(qvec_to_rotmat(rotmat_to_qvec(R)), R, atol=1e-12)
    # quaternion convention: 90 degrees about z maps x to y
    q = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    np.testing.assert_allclose(qvec_to_rotmat(q) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_read_speed_200k_points(tmp_path):
    """Not a timing assertion: just exercise the vectorised path on a realistic size."""
    rng = np.random.default_rng(4)
    n = 200_000
    lens = rng.integers(2, 6, n)
    flat = rng.integers(0, 1000, size=(int(lens.sum()), 2)).astype(np.int32)
    ends = np.cumsum(lens)
    tracks = [flat[a:b] for a, b in zip(ends - lens, ends)]
    pts = ColmapPoints(np.arange(n) + 1, rng.normal(size=(n, 3)), rng.integers(0, 256, (n, 3)), rng.random(n), tracks)
    write_model(tmp_path, {}, {}, pts)
    _, _, back = read_model(tmp_path)
    np.testing.assert_array_equal(back.xyz, pts.xyz)
    np.testing.assert_array_equal(back.tracks[-1], tracks[-1])
    assert sum(len(t) for t in back.tracks) == len(flat)


# ------------------------------------------------------------------------------------------ bad input


def _single_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


@pytest.mark.parametrize("fname,cut", [("cameras.bin", 10), ("cameras.bin", -3), ("images.bin", -5),
                                       ("images.bin", 30), ("points3D.bin", -4), ("points3D.bin", 60),
                                       ("points3D.bin", 4)])
def test_truncated_binary(tmp_path, fname, cut):
    write_model(tmp_path, *random_model(seed=5))
    p = tmp_path / fname
    data = p.read_bytes()
    p.write_bytes(data[:cut])
    with pytest.raises(SceneFormatError) as e:
        read_model(tmp_path)
    _single_line_error(e, fname)


def test_huge_track_length(tmp_path):
    import struct
    write_model(tmp_path, *random_model(seed=6))
    p = tmp_path / "points3D.bin"
    data = bytearray(p.read_bytes())
    data[8 + 43:8 + 51] = struct.pack("<Q", 2 ** 64 - 1)
    p.write_bytes(bytes(data))
    with pytest.raises(SceneFormatError) as e:
        read_model(tmp_path)
    _single_line_error(e, "points3D.bin", "track")


def test_binary_file_as_text(tmp_path):
    write_model(tmp_path, *random_model(seed=6), ext=".txt")
    (tmp_path / "images.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SceneFormatError) as e:
        read_model(tmp_path)
    _single_line_error(e, "images.txt")


def test_trailing_garbage_binary(tmp_path):
    write_model(tmp_path, *random_model(seed=6))
    with open(tmp_path / "points3D.bin", "ab") as f:
        f.write(b"xyz")
    with pytest.raises(SceneFormatError) as e:
        read_model(tmp_path)
    _single_line_error(e, "points3D.bin")


def test_corrupt_text(tmp_path):
    write_model(tmp_path, *random_model(seed=7), ext=".txt")
    p = tmp_path / "points3D.txt"
    lines = p.read_text().splitlines()
    lines[5] = lines[5].replace(" ", " abc ", 1)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SceneFormatError) as e:
        read_model(tmp_path)
    _single_line_error(e, "points3D.txt")

    write_model(tmp_path, *random_model(seed=7), ext=".txt")
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 10 10 1 2 3\n")  # one param short
    with pytest.raises(SceneFormatError) as e:
        read_model(tmp_path)
    _single_line_error(e, "cameras.txt", "PINHOLE")


def test_missing_model(tmp_path):
    with pytest.raises(SceneFormatError) as e:
        read_model(tmp_path / "nope")
    _single_line_error(e, "nope")
    (tmp_path / "cameras.bin").write_bytes(b"")
    with pytest.raises(SceneFormatError) as e:
        read_model(tmp_path)
    _single_line_error(e, "cameras.bin", "images")


def test_image_refers_to_unknown_camera(tmp_path):
    cams, imgs, pts = random_model(seed=8)
    del cams[1]
    write_model(tmp_path, cams, imgs, pts)
    with pytest.raises(SceneFormatError) as e:
        read_model(tmp_path)
    _single_line_error(e, "camera 1")


# ------------------------------------------------------------------------------------------ pycolmap


@pytest.mark.parametrize("ext", [".bin", ".txt"])
def test_pycolmap_cross_check(tmp_path, ext):
    pycolmap = pytest.importorskip("pycolmap")
    cams, imgs, pts = random_model(seed=9)
    write_model(tmp_path, cams, imgs, pts, ext=ext)
    rec = pycolmap.Reconstruction(str(tmp_path))
    assert rec.num_cameras() == len(cams) and rec.num_images() == len(imgs) and rec.num_points3D() == len(pts)
    for cid, cam in cams.items():
        pc = rec.cameras[cid]
        assert pc.model.name == cam.model and (pc.width, pc.height) == (cam.width, cam.height)
        np.testing.assert_array_equal(np.asarray(pc.params), cam.params)
    for iid, img in imgs.items():
        pi = rec.images[iid]
        assert pi.name == img.name and pi.camera_id == img.camera_id
        cfw = pi.cam_from_world() if callable(pi.cam_from_world) else pi.cam_from_world
        np.testing.assert_allclose(np.asarray(cfw.rotation.matrix()), qvec_to_rotmat(img.qvec), atol=1e-12)
        np.testing.assert_allclose(np.asarray(cfw.translation), img.tvec, atol=1e-12)
        p2d = pi.points2D
        assert len(p2d) == len(img.xys)
        for k in range(len(p2d)):
            np.testing.assert_array_equal(np.asarray(p2d[k].xy), img.xys[k])
            pid = int(p2d[k].point3D_id)
            assert (pid if pid < 2 ** 63 else -1) == img.point3D_ids[k]
    for k in (0, 1, len(pts) - 1):
        pp = rec.points3D[int(pts.ids[k])]
        np.testing.assert_array_equal(np.asarray(pp.xyz), pts.xyz[k])
        np.testing.assert_array_equal(np.asarray(pp.color), pts.rgb[k])
        assert pp.error == pts.errors[k]
        track = sorted((e.image_id, e.point2D_idx) for e in pp.track.elements)
        assert track == sorted(map(tuple, pts.tracks[k].tolist()))

    # and the other way: pycolmap writes, we read
    out = tmp_path / "from_pycolmap"
    out.mkdir()
    (rec.write_binary if ext == ".bin" else rec.write_text)(str(out))
    cams2, imgs2, pts2 = read_model(out)
    assert_models_equal((cams, imgs, _sorted_points(pts)), (cams2, imgs2, _sorted_points(pts2)))


def _sorted_points(p):
    order = np.argsort(p.ids)
    return ColmapPoints(p.ids[order], p.xyz[order], p.rgb[order], p.errors[order],
                        [np.array(sorted(map(tuple, p.tracks[i].tolist())), dtype=np.int32).reshape(-1, 2)
                         for i in order])
