"""Read and write COLMAP sparse models (cameras, images, points3D), binary and text.

The on-disk layouts are the ones COLMAP documents ("Output format" in the COLMAP manual):

binary, little-endian
    cameras.bin   uint64 n; n x [int32 camera_id, int32 model_id, uint64 width, uint64 height,
                  float64 params[num_params(model)]]
    images.bin    uint64 n; n x [uint32 image_id, float64 qw qx qy qz, float64 tx ty tz, uint32 camera_id,
                  name (bytes, NUL-terminated), uint64 num_points2D, num_points2D x [float64 x, float64 y,
                  int64 point3D_id]]   (point3D_id = -1, i.e. 2^64-1 unsigned, means "no 3D point")
    points3D.bin  uint64 n; n x [uint64 point3D_id, float64 x y z, uint8 r g b, float64 error,
                  uint64 track_length, track_length x [int32 image_id, int32 point2D_idx]]
text
    cameras.txt   CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]
    images.txt    two lines per image: IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME / POINTS2D[] as (X Y POINT3D_ID)
    points3D.txt  POINT3D_ID X Y Z R G B ERROR TRACK[] as (IMAGE_ID POINT2D_IDX)

(qvec, tvec) is the world-to-camera transform: x_cam = R(qvec) @ x_world + tvec, quaternion (w, x, y, z).
Newer COLMAP versions also write rigs.bin / frames.bin; they are not needed for single-camera-per-image
models and are ignored here.
"""
from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass, field

import numpy as np

from utils.errors import SceneFormatError
from utils.system_utils import atomic_write

# name -> (model_id, number of params). 0..10 are the classic COLMAP models; 11.. were added by newer
# COLMAP releases and are listed so that such models can at least be read.
CAMERA_MODELS = {
    "SIMPLE_PINHOLE": (0, 3),
    "PINHOLE": (1, 4),
    "SIMPLE_RADIAL": (2, 4),
    "RADIAL": (3, 5),
    "OPENCV": (4, 8),
    "OPENCV_FISHEYE": (5, 8),
    "FULL_OPENCV": (6, 12),
    "FOV": (7, 5),
    "SIMPLE_RADIAL_FISHEYE": (8, 4),
    "RADIAL_FISHEYE": (9, 5),
    "THIN_PRISM_FISHEYE": (10, 12),
    "RAD_TAN_THIN_PRISM_FISHEYE": (11, 16),
    "SIMPLE_DIVISION": (12, 4),
    "DIVISION": (13, 5),
    "SIMPLE_FISHEYE": (14, 3),
    "FISHEYE": (15, 4),
    "EUCM": (16, 6),
    "EQUIRECTANGULAR": (17, 2),
}
CAMERA_MODEL_NAMES = {mid: name for name, (mid, _) in CAMERA_MODELS.items()}

MODEL_FILES = ("cameras", "images", "points3D")


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # float64

    def __post_init__(self):
        self.params = np.asarray(self.params, dtype=np.float64).reshape(-1)


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # [4] (w, x, y, z), world-to-camera rotation
    tvec: np.ndarray  # [3] world-to-camera translation
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))  # [K, 2]
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # [K], -1 = none

    def __post_init__(self):
        self.qvec = np.asarray(self.qvec, dtype=np.float64).reshape(4)
        self.tvec = np.asarray(self.tvec, dtype=np.float64).reshape(3)
        self.xys = np.asarray(self.xys, dtype=np.float64).reshape(-1, 2)
        self.point3D_ids = np.asarray(self.point3D_ids, dtype=np.int64).reshape(-1)
        if len(self.xys) != len(self.point3D_ids):
            raise ValueError(f"image {self.id}: {len(self.xys)} xys but {len(self.point3D_ids)} point3D_ids")


@dataclass
class ColmapPoints:
    ids: np.ndarray  # [P] int64
    xyz: np.ndarray  # [P, 3] float64
    rgb: np.ndarray  # [P, 3] uint8
    errors: np.ndarray  # [P] float64
    tracks: list  # P arrays [L, 2] int32 (image_id, point2D_idx)

    def __post_init__(self):
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        self.xyz = np.asarray(self.xyz, dtype=np.float64).reshape(-1, 3)
        self.rgb = np.asarray(self.rgb, dtype=np.uint8).reshape(-1, 3)
        self.errors = np.asarray(self.errors, dtype=np.float64).reshape(-1)
        if self.tracks is None:
            self.tracks = [np.zeros((0, 2), np.int32) for _ in range(len(self.ids))]
        n = len(self.ids)
        if not (len(self.xyz) == len(self.rgb) == len(self.errors) == len(self.tracks) == n):
            raise ValueError("ColmapPoints: ids, xyz, rgb, errors and tracks must have the same length")

    def __len__(self):
        return len(self.ids)

    @staticmethod
    def empty() -> "ColmapPoints":
        return ColmapPoints(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.uint8),
                            np.zeros(0), [])


# ----------------------------------------------------------------------------------------------
# rotations


def qvec_to_rotmat(qvec) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation matrix (the quaternion is normalised first)."""
    q = np.asarray(qvec, dtype=np.float64).reshape(4)
    n = np.linalg.norm(q)
    if n == 0:
        raise ValueError("zero quaternion")
    w, x, y, z = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotmat_to_qvec(R) -> np.ndarray:
    """3x3 rotation matrix -> unit quaternion (w, x, y, z) with w >= 0.

    Uses the eigenvector of the symmetric 4x4 matrix built from R (robust to slightly
    non-orthonormal input: it returns the quaternion of the nearest rotation).
    """
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    (r00, r01, r02), (r10, r11, r12), (r20, r21, r22) = R
    # K is built so that its top eigenvector is (x, y, z, w)
    K = np.array([
        [r00 - r11 - r22, r10 + r01, r20 + r02, r21 - r12],
        [r10 + r01, r11 - r00 - r22, r21 + r12, r02 - r20],
        [r20 + r02, r21 + r12, r22 - r00 - r11, r10 - r01],
        [r21 - r12, r02 - r20, r10 - r01, r00 + r11 + r22],
    ]) / 3.0
    vals, vecs = np.linalg.eigh(K)
    x, y, z, w = vecs[:, np.argmax(vals)]
    q = np.array([w, x, y, z])
    if q[0] < 0:
        q = -q
    return q / np.linalg.norm(q)


# ----------------------------------------------------------------------------------------------
# helpers


def _corrupt(path, what):
    return SceneFormatError(
        f"{path} is truncated or corrupt ({what}); copy it again if it was cut off in transfer, or re-export "
        f"the model from COLMAP")


def _ends_early(path, data, what):
    if len(data) == 0:
        return _corrupt(path, "the file is empty")
    return _corrupt(path, f"{len(data)} bytes, ends inside {what}")


def _model_params(model_name, cam_id, path):
    if model_name not in CAMERA_MODELS:
        raise SceneFormatError(
            f"{path}: camera {cam_id} has unknown camera model {model_name!r}; "
            f"use one of {', '.join(CAMERA_MODELS)} (re-export the model with a COLMAP version that writes them)")
    return CAMERA_MODELS[model_name][1]


def _gather_segments(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate buf[s:s+l] for every (s, l) without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return buf[:0].copy()
    seg_start_in_out = np.cumsum(lengths) - lengths
    idx = np.arange(total, dtype=np.int64) + np.repeat(starts - seg_start_in_out, lengths)
    return buf[idx]


def _scatter_segments(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, data: np.ndarray):
    """Inverse of _gather_segments: buf[s:s+l] = consecutive pieces of data."""
    total = int(lengths.sum())
    if total == 0:
        return
    seg_start_in_out = np.cumsum(lengths) - lengths
    idx = np.arange(total, dtype=np.int64) + np.repeat(starts - seg_start_in_out, lengths)
    buf[idx] = data


def _split_tracks(flat: np.ndarray, lengths: np.ndarray) -> list:
    ends = np.cumsum(lengths)
    return [flat[a:b] for a, b in zip((ends - lengths).tolist(), ends.tolist())]


# ----------------------------------------------------------------------------------------------
# binary reading


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def read_cameras_binary(path) -> dict:
    data = _read_bytes(path)
    cameras = {}
    what = "the header"
    try:
        (n,) = struct.unpack_from("<Q", data, 0)
        off = 8
        for i in range(n):
            what = f"camera record {i + 1} of {n}"
            cam_id, model_id, width, height = struct.unpack_from("<iiQQ", data, off)
            off += 24
            if model_id not in CAMERA_MODEL_NAMES:
                raise _corrupt(path, f"camera {cam_id} has unknown camera model id {model_id}")
            model = CAMERA_MODEL_NAMES[model_id]
            k = CAMERA_MODELS[model][1]
            if off + 8 * k > len(data):
                raise struct.error("short")
            params = np.frombuffer(data, dtype="<f8", count=k, offset=off).astype(np.float64)
            off += 8 * k
            cameras[cam_id] = ColmapCamera(cam_id, model, int(width), int(height), params)
    except struct.error:
        raise _ends_early(path, data, what) from None
    if off != len(data):
        raise _corrupt(path, f"{len(data) - off} unexpected bytes after the last camera")
    return cameras


_P2D_DTYPE = np.dtype([("xy", "<f8", (2,)), ("id", "<i8")])  # 24 bytes


def read_images_binary(path) -> dict:
    data = _read_bytes(path)
    images = {}
    what = "the header"
    try:
        (n,) = struct.unpack_from("<Q", data, 0)
        off = 8
        for i in range(n):
            what = f"image record {i + 1} of {n}"
            vals = struct.unpack_from("<I7dI", data, off)
            off += 64
            end = data.find(b"\0", off)
            if end < 0:
                raise struct.error("no name terminator")
            try:
                name = data[off:end].decode("utf-8")
            except UnicodeDecodeError:
                raise _corrupt(path, f"{what}: the image name is not UTF-8") from None
            off = end + 1
            (k,) = struct.unpack_from("<Q", data, off)
            off += 8
            if off + 24 * k > len(data):
                raise struct.error("short")
            p2d = np.frombuffer(data, dtype=_P2D_DTYPE, count=k, offset=off)
            off += 24 * k
            img = ColmapImage(vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8], name,
                              p2d["xy"].astype(np.float64), p2d["id"].astype(np.int64))
            images[img.id] = img
    except struct.error:
        raise _ends_early(path, data, what) from None
    if off != len(data):
        raise _corrupt(path, f"{len(data) - off} unexpected bytes after the last image")
    return images


_P3D_HDR = np.dtype([("id", "<i8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("err", "<f8"),
                     ("tlen", "<u8")])  # packed, 51 bytes
assert _P3D_HDR.itemsize == 51


def read_points3D_binary(path) -> ColmapPoints:
    data = _read_bytes(path)
    if len(data) < 8:
        raise _ends_early(path, data, "the header")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > (len(data) - 8) // 51:
        raise _corrupt(path, f"the header announces {n} points but {len(data)} bytes hold at most "
                             f"{(len(data) - 8) // 51}")
    offsets = np.empty(n, dtype=np.int64)
    tlens = np.empty(n, dtype=np.int64)
    off = 8
    size = len(data)
    unpack = struct.Struct("<Q").unpack_from
    for i in range(n):  # sequential walk: records have variable length
        if off + 51 > size:
            raise _ends_early(path, data, f"point record {i + 1} of {n}")
        offsets[i] = off
        (t,) = unpack(data, off + 43)
        if t > (size - off - 51) // 8:
            raise _ends_early(path, data, f"the track of point record {i + 1} of {n}")
        tlens[i] = t
        off += 51 + 8 * t
    if off != size:
        raise _corrupt(path, f"{size - off} unexpected bytes after the last point")
    buf = np.frombuffer(data, dtype=np.uint8)
    hdr_bytes = _gather_segments(buf, offsets, np.full(n, 51, np.int64))
    hdr = hdr_bytes.view(_P3D_HDR)
    track_bytes = _gather_segments(buf, offsets + 51, tlens * 8)
    flat = track_bytes.view("<i4").reshape(-1, 2).astype(np.int32)
    return ColmapPoints(hdr["id"].copy(), hdr["xyz"].copy(), hdr["rgb"].copy(), hdr["err"].copy(),
                        _split_tracks(flat, tlens))


# ----------------------------------------------------------------------------------------------
# text reading


def _data_lines(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return [ln.rstrip("\r\n") for ln in f]
    except UnicodeDecodeError:
        raise _corrupt(path, "not UTF-8 text") from None


def read_cameras_text(path) -> dict:
    cameras = {}
    for lineno, line in enumerate(_data_lines(path), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        el = s.split()
        try:
            cam_id, model, width, height = int(el[0]), el[1], int(el[2]), int(el[3])
            k = _model_params(model, cam_id, path)
            params = np.array([float(v) for v in el[4:]], dtype=np.float64)
            if len(params) != k:
                raise ValueError(f"model {model} needs {k} params, found {len(params)}")
        except (ValueError, IndexError) as exc:
            raise _corrupt(path, f"line {lineno}: {exc}") from None
        cameras[cam_id] = ColmapCamera(cam_id, model, width, height, params)
    return cameras


def _fromstring(text: str) -> np.ndarray:
    """Parse whitespace-separated numbers at C speed; ValueError on a non-numeric token.

    numpy >= 2.? raises on unparsable text, older ones warn and stop early (callers check the count).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            return np.fromstring(text, dtype=np.float64, sep=" ")
        except DeprecationWarning as exc:
            raise ValueError(str(exc)) from None


def _numbers_or_none(line: str):
    """float64 array of the whitespace-separated numbers on `line`, or None if any token is not a number."""
    k = len(line.split())
    if k == 0:
        return np.zeros(0)
    try:
        flat = _fromstring(line)
    except ValueError:
        return None
    return flat if len(flat) == k else None


def read_images_text(path) -> dict:
    lines = _data_lines(path)
    images = {}
    i = 0
    while i < len(lines):
        s = lines[i].strip()
        i += 1
        if not s or s.startswith("#"):
            continue
        el = s.split(maxsplit=9)
        try:
            if len(el) < 10:
                raise ValueError("expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
            image_id = int(el[0])
            qvec = np.array([float(v) for v in el[1:5]])
            tvec = np.array([float(v) for v in el[5:8]])
            cam_id = int(el[8])
            name = el[9].strip()
            # the POINTS2D line follows (it may be empty); tolerate files that omit it entirely:
            # a following line with a non-numeric token is the next image's header, not points
            pts_line = lines[i] if i < len(lines) else ""
            nums = _numbers_or_none(pts_line)
            if nums is None:
                nums = np.zeros(0)
            else:
                i += 1
            if len(nums) % 3:
                raise ValueError(f"POINTS2D line has {len(nums)} values, not a multiple of 3")
            arr = nums.reshape(-1, 3)
            xys = arr[:, :2].copy()
            ids = np.where(arr[:, 2] >= 2.0 ** 63, -1, arr[:, 2]).astype(np.int64)
        except (ValueError, IndexError) as exc:
            raise _corrupt(path, f"line {i}: {exc}") from None
        images[image_id] = ColmapImage(image_id, qvec, tvec, cam_id, name, xys, ids)
    return images


def _parse_numbers(text: str, expected: int, path) -> np.ndarray:
    """Whitespace-separated numbers -> float64 array (C speed), checking that all `expected` parsed."""
    if expected == 0:
        return np.zeros(0)
    try:
        flat = _fromstring(text)
    except ValueError:
        flat = None
    if flat is None or len(flat) != expected:
        raise _corrupt(path, "a value is not a number")
    return flat


def read_points3D_text(path) -> ColmapPoints:
    data, counts = [], []
    for lineno, line in enumerate(_data_lines(path), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        k = len(s.split())
        if k < 8 or (k - 8) % 2:
            raise _corrupt(path, f"line {lineno}: expected POINT3D_ID X Y Z R G B ERROR TRACK[] as pairs")
        data.append(s)
        counts.append(k)
    if not data:
        return ColmapPoints.empty()
    counts = np.array(counts, dtype=np.int64)
    flat = _parse_numbers(" ".join(data), int(counts.sum()), path)
    starts = np.cumsum(counts) - counts
    head = flat[starts[:, None] + np.arange(8)]
    if np.abs(head[:, 0]).max() >= 2.0 ** 53:  # ids too large for exact float64: parse them as integers
        ids = np.array([int(s.split(None, 1)[0]) for s in data], dtype=np.int64)
    else:
        ids = head[:, 0].astype(np.int64)
    rgb = head[:, 4:7]
    if rgb.min() < 0 or rgb.max() > 255 or np.any(rgb != np.round(rgb)):
        raise _corrupt(path, "a colour is not an integer in 0..255")
    tlens = (counts - 8) // 2
    tflat = _gather_segments(flat, starts + 8, counts - 8).astype(np.int64).reshape(-1, 2).astype(np.int32)
    return ColmapPoints(ids, head[:, 1:4].copy(), rgb.astype(np.uint8), head[:, 7].copy(),
                        _split_tracks(tflat, tlens))


# ----------------------------------------------------------------------------------------------
# writing


def write_cameras_binary(cameras: dict, path):
    parts = [struct.pack("<Q", len(cameras))]
    for cam in cameras.values():
        mid, k = CAMERA_MODELS[cam.model] if cam.model in CAMERA_MODELS else (None, None)
        if mid is None:
            raise ValueError(f"camera {cam.id}: unknown model {cam.model!r}")
        params = np.asarray(cam.params, dtype="<f8").reshape(-1)
        if len(params) != k:
            raise ValueError(f"camera {cam.id}: model {cam.model} needs {k} params, got {len(params)}")
        parts.append(struct.pack("<iiQQ", cam.id, mid, cam.width, cam.height))
        parts.append(params.tobytes())
    with atomic_write(path, "wb") as f:
        f.write(b"".join(parts))


def write_images_binary(images: dict, path):
    parts = [struct.pack("<Q", len(images))]
    for img in images.values():
        name = img.name.encode("utf-8")
        if b"\0" in name:
            raise ValueError(f"image {img.id}: name contains a NUL byte")
        parts.append(struct.pack("<I7dI", img.id, *np.asarray(img.qvec, float), *np.asarray(img.tvec, float),
                                 img.camera_id))
        parts.append(name + b"\0")
        p2d = np.empty(len(img.xys), dtype=_P2D_DTYPE)
        p2d["xy"] = img.xys
        p2d["id"] = img.point3D_ids
        parts.append(struct.pack("<Q", len(p2d)))
        parts.append(p2d.tobytes())
    with atomic_write(path, "wb") as f:
        f.write(b"".join(parts))


def write_points3D_binary(points: ColmapPoints, path):
    n = len(points.ids)
    tlens = np.array([len(t) for t in points.tracks], dtype=np.int64)
    rec = 51 + 8 * tlens
    offsets = 8 + np.cumsum(rec) - rec
    buf = np.empty(8 + int(rec.sum()), dtype=np.uint8)
    buf[:8] = np.frombuffer(struct.pack("<Q", n), np.uint8)
    hdr = np.empty(n, dtype=_P3D_HDR)
    hdr["id"] = points.ids
    hdr["xyz"] = points.xyz
    hdr["rgb"] = points.rgb
    hdr["err"] = points.errors
    hdr["tlen"] = tlens
    _scatter_segments(buf, offsets, np.full(n, 51, np.int64), hdr.view(np.uint8))
    if n and tlens.sum():
        flat = np.concatenate([np.asarray(t).reshape(-1, 2) for t in points.tracks]).astype("<i4")
        _scatter_segments(buf, offsets + 51, tlens * 8, flat.view(np.uint8).reshape(-1))
    with atomic_write(path, "wb") as f:
        f.write(buf.tobytes())


def _fmt(v: float) -> str:
    return repr(float(v))  # shortest string that round-trips exactly


def write_cameras_text(cameras: dict, path):
    lines = ["# Camera list with one line of data per camera:",
             "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
             f"# Number of cameras: {len(cameras)}"]
    for cam in cameras.values():
        k = _model_params(cam.model, cam.id, path)
        if len(cam.params) != k:
            raise ValueError(f"camera {cam.id}: model {cam.model} needs {k} params, got {len(cam.params)}")
        lines.append(" ".join([str(cam.id), cam.model, str(cam.width), str(cam.height)]
                              + [_fmt(p) for p in cam.params]))
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_images_text(images: dict, path):
    mean_obs = (sum(len(im.xys) for im in images.values()) / len(images)) if images else 0.0
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             f"# Number of images: {len(images)}, mean observations per image: {mean_obs}"]
    for img in images.values():
        if not img.name or len(img.name.split()) != 1:
            raise ValueError(f"image {img.id}: name {img.name!r} contains whitespace, which COLMAP's text format "
                             f"cannot store; write the model with ext='.bin' or rename the image")
        lines.append(" ".join([str(img.id)] + [_fmt(v) for v in img.qvec] + [_fmt(v) for v in img.tvec]
                              + [str(img.camera_id), img.name]))
        lines.append(" ".join(f"{_fmt(x)} {_fmt(y)} {int(pid)}"
                              for (x, y), pid in zip(img.xys.tolist(), img.point3D_ids.tolist())))
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_points3D_text(points: ColmapPoints, path):
    n = len(points.ids)
    mean_track = (sum(len(t) for t in points.tracks) / n) if n else 0.0
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
             f"# Number of points: {n}, mean track length: {mean_track}"]
    ids, xyz, rgb, err = (points.ids.tolist(), points.xyz.tolist(), points.rgb.tolist(), points.errors.tolist())
    for i in range(n):
        x, y, z = xyz[i]
        r, g, b = rgb[i]
        track = " ".join(str(int(v)) for v in np.asarray(points.tracks[i]).reshape(-1).tolist())
        line = f"{ids[i]} {_fmt(x)} {_fmt(y)} {_fmt(z)} {r} {g} {b} {_fmt(err[i])}"
        lines.append(line + (" " + track if track else ""))
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# whole model


def detect_model_ext(sparse_dir) -> str | None:
    """'.bin' or '.txt' if sparse_dir holds cameras + images in that format (binary preferred), else None."""
    for ext in (".bin", ".txt"):
        if all(os.path.isfile(os.path.join(sparse_dir, f + ext)) for f in ("cameras", "images")):
            return ext
    return None


def read_model(sparse_dir):
    """Read a COLMAP sparse model folder -> (cameras, images, points).

    Binary files are used when cameras.bin and images.bin exist, else the .txt ones. A missing
    points3D file yields an empty ColmapPoints (callers that need points report that themselves).
    """
    sparse_dir = os.fspath(sparse_dir)
    if not os.path.isdir(sparse_dir):
        raise SceneFormatError(f"COLMAP model folder {sparse_dir} does not exist; point to the folder that holds "
                               f"cameras.bin/images.bin/points3D.bin (usually <scene>/sparse/0)")
    ext = detect_model_ext(sparse_dir)
    if ext is None:
        present = sorted(f for f in os.listdir(sparse_dir) if not f.startswith("."))
        raise SceneFormatError(
            f"{sparse_dir} holds no COLMAP model (found: {', '.join(present) or 'nothing'}); it needs "
            f"cameras.bin + images.bin + points3D.bin or the .txt versions (run colmap mapper, or "
            f"colmap model_converter to convert)")
    path = lambda stem: os.path.join(sparse_dir, stem + ext)  # noqa: E731
    if ext == ".bin":
        cameras = read_cameras_binary(path("cameras"))
        images = read_images_binary(path("images"))
        points = read_points3D_binary(path("points3D")) if os.path.isfile(path("points3D")) else ColmapPoints.empty()
    else:
        cameras = read_cameras_text(path("cameras"))
        images = read_images_text(path("images"))
        points = read_points3D_text(path("points3D")) if os.path.isfile(path("points3D")) else ColmapPoints.empty()
    for img in images.values():
        if img.camera_id not in cameras:
            raise SceneFormatError(
                f"{path('images')}: image {img.name!r} refers to camera {img.camera_id}, which is not in "
                f"{path('cameras')}; the model files do not belong together, re-export them from COLMAP")
    return cameras, images, points


def write_model(sparse_dir, cameras: dict, images: dict, points: ColmapPoints, ext: str = ".bin"):
    """Write a COLMAP sparse model (each file atomically). ext is '.bin' or '.txt'."""
    if ext not in (".bin", ".txt"):
        raise ValueError(f"ext must be '.bin' or '.txt', not {ext!r}")
    sparse_dir = os.fspath(sparse_dir)
    os.makedirs(sparse_dir, exist_ok=True)
    if points is None:
        points = ColmapPoints.empty()
    # validate everything first so that a bad record never leaves a half-written model behind
    for cam in cameras.values():
        if cam.model not in CAMERA_MODELS:
            raise ValueError(f"camera {cam.id}: unknown model {cam.model!r}; use one of {', '.join(CAMERA_MODELS)}")
        if len(cam.params) != CAMERA_MODELS[cam.model][1]:
            raise ValueError(f"camera {cam.id}: model {cam.model} needs {CAMERA_MODELS[cam.model][1]} params, "
                             f"got {len(cam.params)}")
    for img in images.values():
        if ext == ".txt" and (not img.name or len(img.name.split()) != 1):
            raise ValueError(f"image {img.id}: name {img.name!r} contains whitespace, which COLMAP's text format "
                             f"cannot store; write the model with ext='.bin' or rename the image")
    if ext == ".bin":
        write_cameras_binary(cameras, os.path.join(sparse_dir, "cameras.bin"))
        write_images_binary(images, os.path.join(sparse_dir, "images.bin"))
        write_points3D_binary(points, os.path.join(sparse_dir, "points3D.bin"))
    else:
        write_cameras_text(cameras, os.path.join(sparse_dir, "cameras.txt"))
        write_images_text(images, os.path.join(sparse_dir, "images.txt"))
        write_points3D_text(points, os.path.join(sparse_dir, "points3D.txt"))
