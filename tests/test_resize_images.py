"""tools/resize_images.py: exact block averages, INTER_AREA for other sizes, alpha, skip/force, errors."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tools.resize_images import area_downsample_array, resize_scene  # noqa: E402
from utils.errors import SceneFormatError  # noqa: E402


def block_sums(img, f):
    h, w = img.shape[:2]
    return img.astype(np.int64).reshape(h // f, f, w // f, f, -1).sum(axis=(1, 3))


def read(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def write(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), img)


def test_divisible_sizes_are_exact_block_means(tmp_path):
    rng = np.random.default_rng(0)
    # (a) random content: rounded (half up) block means, for every factor
    noise = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    # (b) a +-1 checkerboard on a blocky base: every 2x2 (so 4x4, 8x8) block mean is an integer
    base = rng.integers(1, 255, (6, 8, 3)).astype(np.int64)
    checker = np.where((np.add.outer(np.arange(48), np.arange(64)) % 2) == 0, 1, -1)[:, :, None]
    blocky = (np.kron(base, np.ones((8, 8, 1), np.int64)) + checker).astype(np.uint8)
    write(tmp_path / "scene" / "images" / "noise.png", noise)
    write(tmp_path / "scene" / "images" / "blocky.png", blocky)
    status = resize_scene(str(tmp_path / "scene"), factors=(2, 4, 8), progress=False)
    assert status == {2: "written", 4: "written", 8: "written"}
    for f in (2, 4, 8):
        n = f * f
        out = read(tmp_path / "scene" / f"images_{f}" / "noise.png")
        assert out.shape == (48 // f, 64 // f, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, ((block_sums(noise, f) + n // 2) // n).astype(np.uint8))
        exact = block_sums(blocky, f)
        assert (exact % n == 0).all()
        np.testing.assert_array_equal(read(tmp_path / "scene" / f"images_{f}" / "blocky.png"), exact // n)
    np.testing.assert_array_equal(read(tmp_path / "scene" / "images_8" / "blocky.png"), base)


def test_non_divisible_size_uses_inter_area_at_rounded_size(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (22, 30, 3), dtype=np.uint8)
    out = area_downsample_array(img, 4)
    assert out.shape == (round(22 / 4), round(30 / 4), 3) == (6, 8, 3)  # train.py's own target size
    want = cv2.resize(img.astype(np.float32), (8, 6), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out, np.floor(want + 0.5).astype(np.uint8))
    flat = np.full((22, 30, 3), 77, np.uint8)  # area averaging keeps a constant image constant
    assert (area_downsample_array(flat, 4) == 77).all()
    write(tmp_path / "s" / "images" / "odd.png", img)
    resize_scene(str(tmp_path / "s"), factors=(4,), progress=False)
    np.testing.assert_array_equal(read(tmp_path / "s" / "images_4" / "odd.png"), out)


def test_sixteen_bit_grey_and_alpha(tmp_path):
    rng = np.random.default_rng(2)
    grey16 = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    out = area_downsample_array(grey16, 2)
    assert out.dtype == np.uint16 and out.shape == (4, 4)
    sums = grey16.astype(np.int64).reshape(4, 2, 4, 2).sum(axis=(1, 3))
    np.testing.assert_array_equal(out, (sums + 2) // 4)
    # alpha: colour is averaged premultiplied, so compositing commutes with downsampling
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    rgba[:4, :4, 3] = 0  # a fully transparent block
    small = area_downsample_array(rgba, 4).astype(np.float64)
    comp_small = small[:, :, :3] * small[:, :, 3:] / 255.0
    comp_big = rgba[:, :, :3].astype(np.float64) * rgba[:, :, 3:] / 255.0
    want = comp_big.reshape(4, 4, 4, 4, 3).mean(axis=(1, 3))
    assert np.abs(comp_small - want).max() <= 1.0  # one 8-bit rounding step
    assert (small[0, 0] == 0).all()


def test_matches_make_scene_downsamples_and_jpeg_names(tmp_path):
    from tools.make_scene import make_scene
    scene = tmp_path / "synth"
    make_scene(str(scene), views=2, width=64, height=48, num_points=50, progress=False)
    before = {f: {n: read(scene / f"images_{f}" / n) for n in os.listdir(scene / f"images_{f}")} for f in (2, 4, 8)}
    resize_scene(str(scene), factors=(2, 4, 8), force=True, progress=False)
    for f, imgs in before.items():
        assert sorted(os.listdir(scene / f"images_{f}")) == sorted(imgs)
        for n, img in imgs.items():
            np.testing.assert_array_equal(read(scene / f"images_{f}" / n), img)
    # a JPEG source becomes a PNG of the same stem, which the dataset reader finds by stem
    jpg = tmp_path / "j"
    write(jpg / "images" / "IMG_0001.JPG", np.full((16, 16, 3), 100, np.uint8))
    resize_scene(str(jpg), factors=(2,), progress=False)
    assert os.listdir(jpg / "images_2") == ["IMG_0001.png"]


def test_skips_existing_unless_force(tmp_path, capsys):
    scene = tmp_path / "s"
    write(scene / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    resize_scene(str(scene), factors=(2,), progress=False)
    stale = scene / "images_2" / "stale.png"
    write(stale, np.zeros((2, 2, 3), np.uint8))
    assert resize_scene(str(scene), factors=(2, 4), progress=False) == {2: "skipped", 4: "written"}
    assert stale.exists() and "--force" in capsys.readouterr().out
    assert resize_scene(str(scene), factors=(2,), force=True, progress=False) == {2: "written"}
    assert sorted(os.listdir(scene / "images_2")) == ["a.png"]  # replaced whole, stale file gone
    assert not [d for d in os.listdir(scene) if d.startswith(".")]  # no staging folders left


def test_bad_input(tmp_path):
    with pytest.raises(SceneFormatError, match="does not exist"):
        resize_scene(str(tmp_path / "nope"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneFormatError, match="has no images/"):
        resize_scene(str(tmp_path / "empty"), progress=False)
    (tmp_path / "empty" / "images").mkdir()
    with pytest.raises(SceneFormatError, match="holds no images"):
        resize_scene(str(tmp_path / "empty"), progress=False)
    write(tmp_path / "clash" / "images" / "a.png", np.zeros((4, 4, 3), np.uint8))
    write(tmp_path / "clash" / "images" / "a.jpg", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(SceneFormatError, match="would both become a.png"):
        resize_scene(str(tmp_path / "clash"), progress=False)
    # the CLI: one line, exit 2
    proc = subprocess.run([sys.executable, "tools/resize_images.py", str(tmp_path / "nope")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "nope" in err, err
    proc = subprocess.run([sys.executable, "tools/resize_images.py", str(tmp_path / "clash"), "--factors", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and ">= 2" in proc.stderr
