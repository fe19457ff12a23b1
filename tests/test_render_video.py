"""render.py --video on a tiny trained model: frame count, size, and the path starts and ends at the
first and last train cameras (by name)."""
import os
import sys

import numpy as np
import pytest
from cli import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


run = run_script


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from gaussian_renderer import backend_status
    from tools.make_scene import make_scene
    scene = str(tmp_path_factory.mktemp("scene") / "tiny")
    make_scene(scene, views=8, width=128, height=96, kind="llff", seed=4, num_points=800, progress=False)
    out = str(tmp_path_factory.mktemp("model") / "tiny")
    backend = "cpu" if backend_status("cpu", "cpu")[0] else "torch"
    run(["train.py", "-s", scene, "-m", out, "-r", "4", "--iterations", "100", "--densify_until_iter", "0",
         "--test_iterations", "100", "--save_iterations", "100", "--backend", backend, "--quiet"])
    return out


def read_video(path):
    import imageio.v2 as imageio
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return [np.asarray(f, dtype=np.float64) / 255.0 for f in reader]
    finally:
        reader.close()


def test_video_follows_the_train_cameras(model):
    from utils.image_utils import load_image
    from utils.video_utils import ffmpeg_available
    if not ffmpeg_available()[0]:
        pytest.skip("imageio-ffmpeg is not installed")
    proc = run(["render.py", "-m", model, "--video", "--video_frames", "5", "--fps", "5", "--quiet"])
    path = os.path.join(model, "video", "ours_100.mp4")
    assert path in proc.stdout and "5 frames at 32x24" in proc.stdout
    frames = read_video(path)
    assert len(frames) == 5 and frames[0].shape == (24, 32, 3)
    assert not os.path.isdir(os.path.join(model, "train"))  # --video renders only the path
    # the path starts at the first and ends at the last train camera (name order = the train renders' order)
    run(["render.py", "-m", model, "--quiet"])
    renders = os.path.join(model, "train", "ours_100", "renders")
    names = sorted(os.listdir(renders))
    first, last = load_image(os.path.join(renders, names[0])), load_image(os.path.join(renders, names[-1]))
    assert np.abs(frames[0] - first).mean() < 0.02  # H.264 at this tiny size is lossy (~0.01 here)
    assert np.abs(frames[-1] - last).mean() < 0.02
    assert np.abs(frames[0] - last).mean() > np.abs(frames[0] - first).mean() + 0.02  # and the views differ
    # at -r 2 (a model trained at -r 4 rendered at 2x) the video has the 2x size and its own name
    proc = run(["render.py", "-m", model, "-r", "2", "--video", "--video_frames", "2", "--quiet"])
    frames = read_video(os.path.join(model, "video", "lr-3dgs_x2.mp4"))
    assert len(frames) == 2 and frames[0].shape == (48, 64, 3)


def test_video_flags_are_checked(model):
    proc = run(["render.py", "-m", model, "--video", "--video_frames", "0"], check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error: ") and "\n" not in err and "--video_frames" in err
