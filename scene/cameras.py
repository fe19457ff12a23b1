"""The `Camera` used by the renderer and the training routine.

Conventions (COLMAP / OpenCV): world_to_camera maps world points to a camera frame with x right,
y down, z forward; intrinsics are in pixels with the image's top-left *corner* at (0, 0), so the centre
of pixel (u, v) is (u + 0.5, v + 0.5).
"""
from dataclasses import dataclass
from typing import Optional

import math

import torch


@dataclass
class Camera:
    uid: int
    image_name: str
    world_to_camera: torch.Tensor  # [4, 4] float32
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    image: Optional[torch.Tensor] = None  # [3, H, W] in [0, 1], the target at this resolution

    @property
    def camera_center(self) -> torch.Tensor:
        """[3] camera position in world coordinates."""
        R = self.world_to_camera[:3, :3]
        t = self.world_to_camera[:3, 3]
        return -R.T @ t

    @property
    def fov_x_rad(self) -> float:
        return 2.0 * math.atan(self.width / (2.0 * self.fx))

    @property
    def fov_y_rad(self) -> float:
        return 2.0 * math.atan(self.height / (2.0 * self.fy))

    def intrinsics(self) -> torch.Tensor:
        """[3, 3] pinhole matrix K (pixel-corner origin), on the pose's device."""
        return torch.tensor([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]],
                            dtype=torch.float32, device=self.world_to_camera.device)

    def resized(self, width: int, height: int, image: Optional[torch.Tensor] = None) -> "Camera":
        """The same camera rendering a `width` x `height` image (e.g. an HR view of an LR camera).

        Intrinsics scale with the image size on each axis, which is exact for area resampling.
        """
        sx, sy = width / self.width, height / self.height
        return Camera(uid=self.uid, image_name=self.image_name, world_to_camera=self.world_to_camera,
                      fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy,
                      width=int(width), height=int(height), image=image)

    def scaled(self, factor: float, image: Optional[torch.Tensor] = None) -> "Camera":
        return self.resized(round(self.width * factor), round(self.height * factor), image)

    def to_json(self, id_: int) -> dict:
        """The 3DGS `cameras.json` entry (camera-to-world position and rotation)."""
        R = self.world_to_camera[:3, :3].double()
        return {"id": id_, "img_name": self.image_name, "width": self.width, "height": self.height,
                "position": self.camera_center.tolist(), "rotation": R.T.tolist(),
                "fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}
