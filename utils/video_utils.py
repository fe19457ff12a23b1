"""Writing rendered frames as an MP4 (imageio + imageio-ffmpeg), or as PNG frames without ffmpeg."""
import contextlib
import os
import tempfile

import numpy as np

from utils.image_utils import save_image

__all__ = ["ffmpeg_available", "write_video"]


def ffmpeg_available():
    """(True, None) if imageio can write MP4 here, else (False, why)."""
    try:
        import imageio.v2  # noqa: F401
    except ImportError:
        return False, "imageio is not installed (pip install 'imageio>=2.31')"
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError:
        return False, "imageio-ffmpeg is not installed (pip install 'imageio-ffmpeg>=0.5')"
    except RuntimeError as exc:  # package present but no usable ffmpeg binary
        return False, f"imageio-ffmpeg found no ffmpeg binary ({str(exc).splitlines()[0]})"
    return True, None


def _even(frame):
    """uint8 [H,W,3] padded by edge replication to even H and W (H.264 with yuv420p needs it)."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


def _to_uint8(frame):
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        arr = np.round(np.clip(np.nan_to_num(arr.astype(np.float64)), 0.0, 1.0) * 255.0).astype(np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"video frames must be [H,W,3], got shape {arr.shape}")
    return arr


def write_video(frames, path, fps=30, use_ffmpeg=None):
    """Write `frames` (iterable of [H,W,3] float in [0,1] or uint8) to the MP4 `path`, atomically.

    Without a working imageio-ffmpeg (or with use_ffmpeg=False) the frames go to
    `<path without .mp4>_frames/00000.png ...` instead. Returns (written path, kind, note) with
    kind "mp4" or "png"; note says why PNGs were written (None for MP4).
    H.264 (yuv420p, widely playable) needs even sizes: odd sizes are padded by one edge pixel.
    """
    path = os.fspath(path)
    ok, why = ffmpeg_available()
    if use_ffmpeg is False:
        ok, why = False, "MP4 output was turned off"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not ok:
        folder = os.path.splitext(path)[0] + "_frames"
        os.makedirs(folder, exist_ok=True)
        count = 0
        for count, frame in enumerate(frames, start=1):
            save_image(os.path.join(folder, f"{count - 1:05d}.png"), _to_uint8(frame))
        for name in os.listdir(folder):  # frames left from a longer earlier run would mix in
            stem, ext = os.path.splitext(name)
            if ext == ".png" and stem.isdigit() and int(stem) >= count:
                os.remove(os.path.join(folder, name))
        return folder, "png", why

    import imageio.v2 as imageio

    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                               prefix="." + os.path.basename(path) + ".", suffix=".mp4")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the video the usual permissions
    try:
        # macro_block_size=1: imageio would otherwise resize to multiples of 16; we pad to even sizes.
        with contextlib.closing(imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=float(fps),
                                                   codec="libx264", pixelformat="yuv420p", quality=8,
                                                   macro_block_size=1, ffmpeg_log_level="error")) as writer:
            for frame in frames:
                writer.append_data(_even(_to_uint8(frame)))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return path, "mp4", None
