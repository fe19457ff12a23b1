"""utils/camera_path.py (slerp, pose interpolation) and utils/video_utils.py (MP4 / PNG fallback)."""
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from utils.camera_path import (interpolate_poses, quaternion_to_rotation_np, rotation_to_quaternion,  # noqa: E402
                               slerp)


def random_rotation(rng):
    q = rng.normal(size=4)
    return quaternion_to_rotation_np(q / np.linalg.norm(q))


def axis_angle(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def w2c(R_c2w, centre):
    m = np.eye(4)
    m[:3, :3] = R_c2w.T
    m[:3, 3] = -R_c2w.T @ centre
    return m


def test_quaternion_round_trip_including_half_turns():
    rng = np.random.default_rng(0)
    mats = [random_rotation(rng) for _ in range(50)]
    mats += [axis_angle(a, np.pi) for a in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0])]  # trace = -1
    for R in mats:
        q = rotation_to_quaternion(R)
        assert q[0] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(quaternion_to_rotation_np(q), R, atol=1e-12)


def test_slerp_endpoints_midpoint_and_short_arc():
    q0 = rotation_to_quaternion(np.eye(3))
    q1 = rotation_to_quaternion(axis_angle([0, 0, 1], 1.2))
    np.testing.assert_allclose(slerp(q0, q1, 0.0), q0, atol=1e-12)
    np.testing.assert_allclose(slerp(q0, q1, 1.0), q1, atol=1e-12)
    # constant angular speed: a quarter of the way is a quarter of the angle about the same axis
    np.testing.assert_allclose(quaternion_to_rotation_np(slerp(q0, q1, 0.25)), axis_angle([0, 0, 1], 0.3), atol=1e-12)
    # -q1 is the same rotation: slerp must take the short way (0.3 rad), not the long one
    np.testing.assert_allclose(quaternion_to_rotation_np(slerp(q0, -q1, 0.25)), axis_angle([0, 0, 1], 0.3),
                               atol=1e-12)
    # nearly equal quaternions (the linear fallback) stay unit and in between
    q2 = rotation_to_quaternion(axis_angle([0, 1, 0], 1e-4))
    mid = slerp(q0, q2, 0.5)
    assert abs(np.linalg.norm(mid) - 1) < 1e-12
    np.testing.assert_allclose(quaternion_to_rotation_np(mid), axis_angle([0, 1, 0], 5e-5), atol=1e-9)


def test_interpolated_path_passes_through_keyframes():
    rng = np.random.default_rng(1)
    keys = np.stack([w2c(random_rotation(rng), rng.normal(size=3)) for _ in range(4)])
    frames = interpolate_poses(keys, 10)  # s = f * 3 / 9: frames 0, 3, 6, 9 are the keyframes
    assert frames.shape == (10, 4, 4)
    for f, k in ((0, 0), (3, 1), (6, 2), (9, 3)):
        np.testing.assert_allclose(frames[f], keys[k], atol=1e-12)
    for m in frames:
        R = m[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert abs(np.linalg.det(R) - 1) < 1e-12
        np.testing.assert_array_equal(m[3], [0, 0, 0, 1])
    np.testing.assert_allclose(interpolate_poses(keys, 4), keys, atol=1e-12)  # as many frames as keys
    assert interpolate_poses(keys, 1).shape == (1, 4, 4)
    np.testing.assert_allclose(interpolate_poses(keys[:1], 5), np.repeat(keys[:1], 5, axis=0), atol=1e-12)


def test_centres_move_linearly_and_rotation_by_slerp():
    R0, R1 = np.eye(3), axis_angle([0, 1, 0], 0.8)
    c0, c1 = np.array([0.0, 0.0, 0.0]), np.array([2.0, -1.0, 4.0])
    frames = interpolate_poses(np.stack([w2c(R0, c0), w2c(R1, c1)]), 5)
    for f, m in enumerate(frames):
        t = f / 4
        R = m[:3, :3]
        centre = -R.T @ m[:3, 3]
        np.testing.assert_allclose(centre, (1 - t) * c0 + t * c1, atol=1e-12)
        np.testing.assert_allclose(R.T, axis_angle([0, 1, 0], 0.8 * t), atol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError):
        interpolate_poses(np.zeros((0, 4, 4)), 5)
    with pytest.raises(ValueError):
        interpolate_poses(np.eye(4)[None], 0)


def gradient_frames(n, h=21, w=31):
    for i in range(n):
        f = np.zeros((h, w, 3), np.float32)
        f[:, :, 0] = np.linspace(0, 1, w)[None, :]
        f[:, :, 1] = i / max(n - 1, 1)
        yield f


def test_write_video_mp4_with_odd_size(tmp_path):
    from utils.video_utils import ffmpeg_available, write_video
    if not ffmpeg_available()[0]:
        pytest.skip("imageio-ffmpeg is not installed")
    import imageio.v2 as imageio
    path, kind, note = write_video(gradient_frames(6), tmp_path / "v" / "clip.mp4", fps=12)
    assert kind == "mp4" and note is None and path == str(tmp_path / "v" / "clip.mp4")
    reader = imageio.get_reader(path, format="FFMPEG")
    frames = [f for f in reader]
    reader.close()
    assert len(frames) == 6
    assert frames[0].shape == (22, 32, 3)  # padded to even sizes for yuv420p
    # lossy, but the content survives: red ramps left to right, green grows over time
    assert frames[0][:, -4:, 0].mean() > frames[0][:, :4, 0].mean() + 150
    assert frames[-1][:, :, 1].mean() > frames[0][:, :, 1].mean() + 150
    assert not [f for f in os.listdir(tmp_path / "v") if f.startswith(".")]  # no temp file left


def test_write_video_png_fallback(tmp_path):
    from PIL import Image
    from utils.video_utils import write_video
    old = tmp_path / "clip_frames"
    old.mkdir()
    Image.new("RGB", (2, 2)).save(old / "00009.png")  # from an earlier, longer run
    path, kind, note = write_video(gradient_frames(3), tmp_path / "clip.mp4", use_ffmpeg=False)
    assert kind == "png" and "turned off" in note and path == str(old)
    assert sorted(os.listdir(path)) == ["00000.png", "00001.png", "00002.png"]
    img = np.asarray(Image.open(os.path.join(path, "00002.png")))
    assert img.shape == (21, 31, 3) and img[0, -1, 0] == 255 and img[0, 0, 1] == 255
    assert not (tmp_path / "clip.mp4").exists()
