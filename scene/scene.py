"""`Scene`: a dataset's cameras plus the Gaussians of one model folder, saved by iteration."""
import json
import os
import re

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from scene.cameras import Camera
from scene.dataset_readers import read_scene
from utils.errors import ModelNotFoundError
from utils.system_utils import atomic_write


def list_iterations(model_path):
    """Iteration folder names under point_cloud/ (e.g. ['7000', '30000', 'sr'])."""
    root = os.path.join(model_path, "point_cloud")
    if not os.path.isdir(root):
        return []
    return sorted(d[len("iteration_"):] for d in os.listdir(root)
                  if d.startswith("iteration_") and os.path.isfile(os.path.join(root, d, "point_cloud.ply")))


def resolve_iteration(model_path, iteration):
    """-1 -> the largest numeric iteration saved; a number or a name (e.g. 'sr') must exist."""
    saved = list_iterations(model_path)
    if not saved:
        raise ModelNotFoundError(f"no saved iterations in {model_path}/point_cloud; train first "
                                 f"(python train.py -s SCENE -m {model_path})")
    if str(iteration) in ("-1", "None", "latest"):
        numeric = [int(s) for s in saved if re.fullmatch(r"\d+", s)]
        return str(max(numeric)) if numeric else saved[-1]
    if str(iteration) not in saved:
        raise ModelNotFoundError(f"iteration {iteration} not found in {model_path}/point_cloud "
                                 f"(saved: {', '.join(saved)}); pass one of those to --iteration")
    return str(iteration)


def camera_from_info(info, device="cpu") -> Camera:
    return Camera(uid=info.uid, image_name=info.image_name,
                  world_to_camera=torch.tensor(info.world_to_camera, dtype=torch.float32, device=device),
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
        self.train_cameras = [camera_from_info(c, args.data_device) for c in info.train_cameras]
        self.test_cameras = [camera_from_info(c, args.data_device) for c in info.test_cameras]
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
            gaussians.load_ply(self.ply_path(self.loaded_iter))
            gaussians.spatial_lr_scale = self.cameras_extent

    def ply_path(self, iteration):
        return os.path.join(self.model_path, "point_cloud", f"iteration_{iteration}", "point_cloud.ply")

    def save(self, iteration):
        self.gaussians.save_ply(self.ply_path(iteration))

    def getTrainCameras(self):
        return self.train_cameras

    def getTestCameras(self):
        return self.test_cameras
