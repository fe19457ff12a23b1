"""Scene readers: COLMAP (sparse/0 + images) and Blender / NeRF-synthetic (transforms_*.json).

`read_scene(source_path, ...)` returns a `SceneInfo` of plain numpy records: cameras with OpenCV
world-to-camera poses and pixel intrinsics at the loaded resolution, their images as float32 RGB in
[0, 1], a point cloud for initialisation, and the Inria-style NeRF++ normalisation.
Nothing here writes into the source folder.
"""
from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from scene.colmap_io import detect_model_ext, qvec_to_rotmat, read_model
from utils.errors import SceneFormatError, ThreeDSRError
from utils.image_utils import area_resize_np
from utils.sh_utils import SH2RGB

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".exr")
MAX_AUTO_WIDTH = 1600  # resolution -1: wider images are downscaled to this width (Inria behaviour)
NUM_RANDOM_POINTS = 100_000  # Blender scenes: random initial point cloud


@dataclass
class BasicPointCloud:
    points: np.ndarray  # [N, 3] float32
    colors: np.ndarray  # [N, 3] float32 in [0, 1]
    normals: np.ndarray  # [N, 3] float32


@dataclass
class CameraInfo:
    uid: int
    world_to_camera: np.ndarray  # [4, 4] float64, OpenCV (x right, y down, z forward)
    fx: float
    fy: float
    cx: float  # pixels, pixel-corner origin: the centre of the top-left pixel is (0.5, 0.5)
    cy: float
    width: int
    height: int
    image_name: str  # file name without extension
    image_path: str
    image: np.ndarray  # [H, W, 3] float32 in [0, 1]

    @property
    def camera_center(self) -> np.ndarray:
        R, t = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        return -R.T @ t


@dataclass
class SceneInfo:
    point_cloud: BasicPointCloud
    train_cameras: list
    test_cameras: list
    nerf_normalization: dict  # {"translate": -centre [3], "radius": float}
    source_format: str  # "colmap" | "blender"


# ----------------------------------------------------------------------------------------------
# helpers


def get_nerfpp_norm(cameras) -> dict:
    """Inria's getNerfppNorm: centre = mean camera centre, radius = 1.1 * max distance to it.

    `translate` is -centre (added to positions it moves the cameras' centre to the origin).
    """
    if not cameras:
        return {"translate": np.zeros(3), "radius": 1.0}
    centers = np.stack([c.camera_center for c in cameras])
    center = centers.mean(axis=0)
    diagonal = float(np.linalg.norm(centers - center, axis=1).max())
    return {"translate": -center, "radius": diagonal * 1.1}


def _check_resolution(resolution):
    if not isinstance(resolution, (int, np.integer)) or isinstance(resolution, bool) or \
            (resolution != -1 and resolution < 1):
        raise ThreeDSRError(f"resolution must be -1 (auto) or a positive integer downscale factor such as "
                            f"1, 2, 4 or 8, not {resolution!r}; fix the -r/--resolution flag")


def _image_size(path) -> tuple:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any decoder failure means the file is unusable
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise SceneFormatError(f"cannot read image {path}; replace it with a valid PNG/JPEG file") from None
        return img.shape[1], img.shape[0]


def _load_image(path, background) -> np.ndarray:
    """-> [H, W, 3] float32 RGB in [0, 1]; alpha composited over `background` (3 floats)."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)  # UNCHANGED: keeps alpha and 16-bit, no EXIF rotation
    if img is None:
        raise SceneFormatError(f"cannot read image {path}; replace it with a valid PNG/JPEG file")
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    else:
        img = np.clip(img.astype(np.float32), 0.0, 1.0)
    if img.ndim == 2:
        img = img[:, :, None]
    c = img.shape[2]
    if c == 1:
        rgb, alpha = np.repeat(img, 3, axis=2), None
    elif c == 2:  # grey + alpha
        rgb, alpha = np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1:2]
    elif c == 3:
        rgb, alpha = img[:, :, ::-1], None
    else:
        rgb, alpha = img[:, :, 2::-1], img[:, :, 3:4]
    if alpha is not None:
        bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
        rgb = rgb * alpha + bg * (1.0 - alpha)
    return np.ascontiguousarray(rgb, dtype=np.float32)


def _target_size(width, height, factor, folder, resolution) -> tuple:
    """Size to downsample a (width, height) image to, printing the one-line notes the user should see."""
    if resolution == -1:
        if width > MAX_AUTO_WIDTH:
            scale = width / MAX_AUTO_WIDTH
            new = (MAX_AUTO_WIDTH, max(1, round(height / scale)))
            print(f"note: images in {folder} are {width}x{height}, wider than {MAX_AUTO_WIDTH} px; loading them at "
                  f"{new[0]}x{new[1]} (pass -r 1 to keep the full resolution)")
            return new
        return width, height
    if factor == 1:
        return width, height
    new = (max(1, round(width / factor)), max(1, round(height / factor)))
    if width % factor or height % factor:
        print(f"warning: images in {folder} are {width}x{height}, not divisible by {factor}; downsampling to "
              f"{new[0]}x{new[1]} (intrinsics are scaled by the exact size ratio)")
    return new


def _check_same_size(paths, sizes, folder):
    first = sizes[0]
    for p, s in zip(paths, sizes):
        if s != first:
            raise SceneFormatError(
                f"images in {folder} have different sizes ({os.path.basename(paths[0])} is {first[0]}x{first[1]}, "
                f"{os.path.basename(p)} is {s[0]}x{s[1]}); resize them all to one size (one camera size per "
                f"scene is supported)")


def _load_all(paths, background, size):
    """Load images in parallel (cv2 releases the GIL), resize each to `size` with area averaging."""
    def one(p):
        return area_resize_np(_load_image(p, background), *size)
    workers = max(1, min(8, os.cpu_count() or 1, len(paths)))
    if workers == 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(one, paths))


def _find_image(folder, name, listing):
    """Path of COLMAP image `name` inside folder: exact match, else same stem with another image extension
    (LLFF's images_N hold .png files for .JPG originals)."""
    exact = os.path.join(folder, name)
    if os.path.isfile(exact):
        return exact
    stem = os.path.splitext(name)[0]
    sub = os.path.dirname(stem)
    base = os.path.basename(stem)
    for cand in listing.get(sub, ()):
        cstem, cext = os.path.splitext(cand)
        if cstem == base and cext.lower() in IMAGE_EXTS:
            return os.path.join(folder, sub, cand)
    return None


def _split(cams, eval, llffhold):
    if not eval:
        return cams, []
    if llffhold < 1:
        raise ThreeDSRError(f"llffhold must be >= 1, not {llffhold}; fix the --llffhold flag")
    train = [c for i, c in enumerate(cams) if i % llffhold != 0]
    test = [c for i, c in enumerate(cams) if i % llffhold == 0]
    return train, test


def _require_train(train, source_path, n_total, eval, llffhold):
    if not train:
        hint = (f"with --eval every {llffhold}th of the {n_total} views is held out for testing; "
                f"add views or train without --eval") if eval else "add images"
        raise SceneFormatError(f"{source_path} yields no training views; {hint}")


# ----------------------------------------------------------------------------------------------
# COLMAP


def read_colmap_scene(source_path, images="images", resolution=-1, eval=False, white_background=False,
                      llffhold=8) -> SceneInfo:
    sparse_dir = os.path.join(source_path, "sparse", "0")
    cameras, col_images, points = read_model(sparse_dir)
    if not col_images:
        raise SceneFormatError(f"{sparse_dir} registers no images; rerun COLMAP (colmap mapper) so that images "
                               f"are registered")

    # intrinsic model checks
    for im in sorted(col_images.values(), key=lambda im: im.name):
        cam = cameras[im.camera_id]
        if cam.model not in ("PINHOLE", "SIMPLE_PINHOLE"):
            raise SceneFormatError(
                f"camera {cam.id} (used by {im.name}) has model {cam.model}, but only PINHOLE and SIMPLE_PINHOLE "
                f"are supported; undistort the images first with `colmap image_undistorter --image_path "
                f"{os.path.join(source_path, images)} --input_path {sparse_dir} --output_path <new scene folder>`")

    # which folder, and whether to downsample in memory
    base_folder = os.path.join(source_path, images)
    factor = 1
    folder = base_folder
    if resolution not in (-1, 1):
        pre = os.path.join(source_path, f"{os.path.normpath(images)}_{resolution}")
        if os.path.isdir(pre):
            folder = pre
        else:
            factor = resolution
    if not os.path.isdir(folder):
        raise SceneFormatError(f"image folder {folder} does not exist; put the images registered in {sparse_dir} "
                               f"there (or pass --images <folder name>)")

    # index the folder once (also covers image names with sub-folders)
    listing = {}
    for root, _dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        listing["" if rel == "." else rel.replace(os.sep, "/")] = sorted(files)

    entries = sorted(col_images.values(), key=lambda im: (os.path.splitext(os.path.basename(im.name))[0], im.name))
    paths = []
    for im in entries:
        p = _find_image(folder, im.name, listing)
        if p is None:
            hint = (f"; or remove {folder} to downsample {base_folder} in memory" if folder != base_folder else "")
            raise SceneFormatError(f"image {im.name} is registered in {sparse_dir} but missing from {folder}; "
                                   f"copy it there (or pass --images <folder> that holds it){hint}")
        paths.append(p)

    sizes = [_image_size(p) for p in paths]
    _check_same_size(paths, sizes, folder)
    size = _target_size(sizes[0][0], sizes[0][1], factor, folder, resolution)
    background = (1.0, 1.0, 1.0) if white_background else (0.0, 0.0, 0.0)
    pixels = _load_all(paths, background, size)

    cams = []
    w, h = size
    for uid, (im, path, img) in enumerate(zip(entries, paths, pixels)):
        cam = cameras[im.camera_id]
        if cam.model == "SIMPLE_PINHOLE":
            f, cx, cy = cam.params
            fx = fy = f
        else:
            fx, fy, cx, cy = cam.params
        sx, sy = w / cam.width, h / cam.height
        w2c = np.eye(4)
        w2c[:3, :3] = qvec_to_rotmat(im.qvec)
        w2c[:3, 3] = im.tvec
        cams.append(CameraInfo(uid=uid, world_to_camera=w2c, fx=float(fx * sx), fy=float(fy * sy),
                               cx=float(cx * sx), cy=float(cy * sy), width=w, height=h,
                               image_name=os.path.splitext(os.path.basename(im.name))[0],
                               image_path=path, image=img))

    train, test = _split(cams, eval, llffhold)
    _require_train(train, source_path, len(cams), eval, llffhold)

    if len(points) == 0:
        raise SceneFormatError(
            f"{sparse_dir} has no 3D points (points3D is missing or empty); triangulate them with "
            f"`colmap point_triangulator --database_path <db> --image_path <images> --input_path {sparse_dir} "
            f"--output_path {sparse_dir}`")
    pcd = BasicPointCloud(points=points.xyz.astype(np.float32),
                          colors=(points.rgb.astype(np.float32) / 255.0),
                          normals=np.zeros((len(points), 3), np.float32))
    return SceneInfo(point_cloud=pcd, train_cameras=train, test_cameras=test,
                     nerf_normalization=get_nerfpp_norm(train), source_format="colmap")


# ----------------------------------------------------------------------------------------------
# Blender / NeRF-synthetic

_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def _read_transforms(source_path, json_name, resolution, white_background, uid_start):
    path = os.path.join(source_path, json_name)
    try:
        with open(path, "r", encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as exc:
        raise SceneFormatError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or re-export "
                               f"it") from None
    try:
        angle_x = float(meta["camera_angle_x"])
        frames = list(meta["frames"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SceneFormatError(f"{path} lacks a valid {exc} entry; a NeRF-synthetic transforms file needs "
                               f"camera_angle_x and frames[] with file_path and transform_matrix") from None

    paths, c2ws = [], []
    for i, fr in enumerate(frames):
        try:
            fp = str(fr["file_path"])
            c2w = np.array(fr["transform_matrix"], dtype=np.float64).reshape(4, 4)
        except (KeyError, TypeError, ValueError):
            raise SceneFormatError(f"{path}: frame {i} lacks file_path or a 4x4 transform_matrix; fix the "
                                   f"file") from None
        p = os.path.normpath(os.path.join(source_path, fp))
        if not os.path.isfile(p):
            for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
                if os.path.isfile(p + ext):
                    p = p + ext
                    break
            else:
                raise SceneFormatError(f"image {fp} (frame {i} of {json_name}) is missing from "
                                       f"{os.path.dirname(p)}; copy it there or fix file_path")
        paths.append(p)
        c2ws.append(c2w)
    if not paths:
        return []

    sizes = [_image_size(p) for p in paths]
    folder = os.path.dirname(paths[0])
    _check_same_size(paths, sizes, folder)
    factor = 1 if resolution == -1 else resolution
    w, h = _target_size(sizes[0][0], sizes[0][1], factor, folder, resolution)
    background = (1.0, 1.0, 1.0) if white_background else (0.0, 0.0, 0.0)
    pixels = _load_all(paths, background, (w, h))

    focal = 0.5 * w / math.tan(0.5 * angle_x)
    cams = []
    for k, (p, c2w, img) in enumerate(zip(paths, c2ws, pixels)):
        c2w_cv = c2w @ _GL_TO_CV  # flip camera y and z axes: OpenGL (y up, z back) -> OpenCV (y down, z fwd)
        w2c = np.linalg.inv(c2w_cv)
        cams.append(CameraInfo(uid=uid_start + k, world_to_camera=w2c, fx=focal, fy=focal, cx=w / 2.0,
                               cy=h / 2.0, width=w, height=h,
                               image_name=os.path.splitext(os.path.basename(p))[0], image_path=p, image=img))
    return cams


def read_blender_scene(source_path, resolution=-1, eval=False, white_background=False, seed=0) -> SceneInfo:
    train = _read_transforms(source_path, "transforms_train.json", resolution, white_background, 0)
    test = []
    if os.path.isfile(os.path.join(source_path, "transforms_test.json")):
        test = _read_transforms(source_path, "transforms_test.json", resolution, white_background, len(train))
    if not eval:
        train, test = train + test, []
    _require_train(train, source_path, len(train) + len(test), False, 0)

    # 3DGS / Mip-Splatting: 100k points uniform in [-1.3, 1.3]^3 (the synthetic scenes' bounds), near-grey
    # colours from random DC coefficients in [0, 1/255): rgb = 0.5 + C0 * sh in [0.5, 0.5011)
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-1.3, 1.3, size=(NUM_RANDOM_POINTS, 3)).astype(np.float32)
    sh_dc = rng.uniform(0.0, 1.0 / 255.0, size=(NUM_RANDOM_POINTS, 3))
    colors = SH2RGB(sh_dc).astype(np.float32)
    pcd = BasicPointCloud(points=xyz, colors=colors, normals=np.zeros_like(xyz))
    return SceneInfo(point_cloud=pcd, train_cameras=train, test_cameras=test,
                     nerf_normalization=get_nerfpp_norm(train), source_format="blender")


# ----------------------------------------------------------------------------------------------


def read_scene(source_path, images="images", resolution=-1, eval=False, white_background=False, llffhold=8,
               seed=0) -> SceneInfo:
    """Detect the layout of `source_path` and read it (see module docstring)."""
    _check_resolution(resolution)
    source_path = os.fspath(source_path)
    images = images or "images"
    if not os.path.isdir(source_path):
        raise SceneFormatError(f"source folder {source_path} does not exist; pass -s/--source_path with the scene "
                               f"folder (the one holding sparse/0 and images/, or transforms_train.json)")
    if os.path.isdir(os.path.join(source_path, "sparse", "0")):
        return read_colmap_scene(source_path, images, resolution, eval, white_background, llffhold)
    if os.path.isfile(os.path.join(source_path, "transforms_train.json")):
        return read_blender_scene(source_path, resolution, eval, white_background, seed)
    hint = ""
    if detect_model_ext(os.path.join(source_path, "sparse")):
        hint = " (sparse/ holds a model directly: move its files into sparse/0)"
    raise SceneFormatError(
        f"{source_path} is not a scene we can read{hint}; accepted layouts: COLMAP (sparse/0/ with cameras, "
        f"images, points3D as .bin or .txt, plus images/) or Blender/NeRF-synthetic (transforms_train.json "
        f"[+ transforms_test.json])")
