"""`Scene`: a dataset's cameras plus the Gaussians of one model folder, saved by iteration."""
import json
import os
import re

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from scene.cameras import Camera
from scene.conventions import model_filter_2d
from scene.dataset_readers import read_scene
from utils.device import resolve_data_device
from utils.errors import ModelNotFoundError
from utils.system_utils import atomic_write


SR_ROOT = "sr"  # OUT/sr/<run>/ : one SR run, itself a 3DGS model folder (cfg_args, cameras.json, point_cloud/)


def _numeric_iterations(model_path):
    root = os.path.join(model_path, "point_cloud")
    if not os.path.isdir(root):
        return []
    return [d[len("iteration_"):] for d in os.listdir(root)
            if d.startswith("iteration_") and os.path.isfile(os.path.join(root, d, "point_cloud.ply"))]


def sr_run_ply(model_path, name):
    """The result PLY of SR run `name` (OUT/sr/<name>/point_cloud/iteration_<N>/point_cloud.ply, largest
    numeric N), or None. SR runs are model folders of their own, so 3DGS tools, which parse iteration
    folders as integers, open both the LR folder and each SR run."""
    run = os.path.join(model_path, SR_ROOT, name)
    numeric = [int(i) for i in _numeric_iterations(run) if re.fullmatch(r"\d+", i)]
    if not numeric:
        return None
    return os.path.join(run, "point_cloud", f"iteration_{max(numeric)}", "point_cloud.ply")


def list_iterations(model_path):
    """What `--iteration` accepts for a model folder: its saved iterations (e.g. ['7000', '30000']) plus
    the names of its finished SR runs (e.g. 'sr', 'sr_bicubic'; older layouts' point_cloud/iteration_sr too)."""
    names = set(_numeric_iterations(model_path))
    root = os.path.join(model_path, SR_ROOT)
    if os.path.isdir(root):
        names.update(d for d in os.listdir(root) if sr_run_ply(model_path, d))
    return sorted(names)


def iteration_ply(model_path, iteration):
    """The PLY of an iteration: point_cloud/iteration_<N>/point_cloud.ply, or an SR run's result."""
    own = os.path.join(model_path, "point_cloud", f"iteration_{iteration}", "point_cloud.ply")
    if re.fullmatch(r"\d+", str(iteration)) or os.path.isfile(own):
        return own
    return sr_run_ply(model_path, str(iteration)) or own


def resolve_iteration(model_path, iteration):
    """-1 -> the largest numeric iteration saved (never an SR run); a number or an SR run name must exist."""
    saved = list_iterations(model_path)
    if not saved:
        raise ModelNotFoundError(f"no saved iterations in {model_path}/point_cloud; train first "
                                 f"(python train.py -s SCENE -m {model_path})")
    if str(iteration) in ("-1", "None", "latest"):
        numeric = [int(s) for s in saved if re.fullmatch(r"\d+", s)]
        return str(max(numeric)) if numeric else saved[-1]
    if str(iteration) not in saved:
        raise ModelNotFoundError(f"iteration {iteration} not found in {model_path} "
                                 f"(saved: {', '.join(saved)}); pass one of those to --iteration")
    return str(iteration)


def hr_gt_resolution(trained_resolution, scale):
    """The -r factor whose images are ground truth at `scale` x a -r `trained_resolution` model's size
    (images_<r/scale>), or None when the model was trained at full or automatic resolution, or at a factor
    the scale does not divide: those HR views go beyond the captured images."""
    r = 1 if trained_resolution in (-1, 1, None) else int(trained_resolution)
    if float(scale) != int(scale) or r % int(scale) or r // int(scale) < 1:
        return None
    return r // int(scale)


def camera_from_info(info, device="cpu", pose_device=None) -> Camera:
    """A Camera with its image on `device` and its pose on `pose_device` (default: the same)."""
    pose_device = device if pose_device is None else pose_device
    return Camera(uid=info.uid, image_name=info.image_name,
                  world_to_camera=torch.tensor(info.world_to_camera, dtype=torch.float32, device=pose_device),
                  fx=float(info.fx), fy=float(info.fy), cx=float(info.cx), cy=float(info.cy),
                  width=int(info.width), height=int(info.height),
                  image=torch.from_numpy(np.ascontiguousarray(info.image[..., :3].transpose(2, 0, 1))).float().to(device))


def write_points_ply(path, points, colors):
    """A plain xyz/rgb point cloud PLY (the model folder's input.ply)."""
    arr = np.empty(len(points), dtype=[(n, "f4") for n in ("x", "y", "z", "nx", "ny", "nz")] +
                   [(n, "u1") for n in ("red", "green", "blue")])
    arr["x"], arr["y"], arr["z"] = points[:, 0], points[:, 1], points[:, 2]
    arr["nx"] = arr["ny"] = arr["nz"] = 0
    rgb = np.clip(np.round(colors * 255), 0, 255).astype(np.uint8)
    arr["red"], arr["green"], arr["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    with atomic_write(path, "wb") as f:
        PlyData([PlyElement.describe(arr, "vertex")]).write(f)


class Scene:
    """Cameras of a dataset and the Gaussians of `args.model_path`.

    load_iteration None: new model from the dataset's points (writes input.ply and cameras.json);
    otherwise load point_cloud/iteration_<N>/point_cloud.ply (-1 = latest numeric iteration).
    """

    def __init__(self, args, gaussians, load_iteration=None, resolution=None):
        self.model_path = args.model_path
        self.gaussians = gaussians
        self.loaded_iter = None
        if load_iteration is not None:
            self.loaded_iter = resolve_iteration(self.model_path, load_iteration)
        info = read_scene(args.source_path, images=args.images,
                          resolution=args.resolution if resolution is None else resolution,
                          eval=args.eval, white_background=args.white_background,
                          llffhold=getattr(args, "llffhold", 8))
        self.scene_info = info
        # the images go to --data_device ("" = the model's device; Inria's saved "cuda" falls back without a GPU)
        self.data_device = resolve_data_device(getattr(args, "data_device", ""), gaussians.device)
        self.train_cameras = [camera_from_info(c, self.data_device, gaussians.device) for c in info.train_cameras]
        self.test_cameras = [camera_from_info(c, self.data_device, gaussians.device) for c in info.test_cameras]
        self.cameras_extent = float(info.nerf_normalization["radius"])

        if self.loaded_iter is None:
            os.makedirs(self.model_path, exist_ok=True)
            write_points_ply(os.path.join(self.model_path, "input.ply"),
                             info.point_cloud.points, info.point_cloud.colors)
            cams = [c.to_json(i) for i, c in enumerate(self.train_cameras + self.test_cameras)]
            with atomic_write(os.path.join(self.model_path, "cameras.json"), "w") as f:
                json.dump(cams, f)
            gaussians.create_from_pcd(info.point_cloud, self.cameras_extent)
        else:
            ply = self.ply_path(self.loaded_iter)
            gaussians.load_ply(ply)
            # render as the model's source renders it: Mip-Splatting's 2D filter or Inria 3DGS's dilation
            gaussians.filter_2d = model_filter_2d(self.model_path, ply, getattr(args, "filter_2d", "auto"))
            gaussians.spatial_lr_scale = self.cameras_extent

    def ply_path(self, iteration):
        return iteration_ply(self.model_path, iteration)

    def save(self, iteration):
        self.gaussians.save_ply(self.ply_path(iteration))

    def getTrainCameras(self):
        return self.train_cameras

    def getTestCameras(self):
        return self.test_cameras
