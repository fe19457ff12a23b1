"""3D Gaussians: parameters, Mip-Splatting 3D smoothing filter, optimizer, and the 3DGS PLY format.

Parameters are stored in their unconstrained form (log scale, logit opacity, unnormalised quaternion),
as in 3DGS (Kerbl et al. 2023). `filter_3D` is Mip-Splatting's per-Gaussian 3D smoothing filter
(Yu et al. 2024, eq. 7-8): a Gaussian low-pass whose variance is set by the highest sampling rate at
which any training camera sees the Gaussian, so no Gaussian becomes thinner than a pixel can resolve.
"""
import math
import os

import numpy as np
import torch
from plyfile import PlyData, PlyElement
from scipy.spatial import cKDTree

from utils.errors import PlyFormatError
from utils.graphics_utils import quaternion_to_rotation
from utils.sh_utils import RGB2SH
from utils.system_utils import atomic_write

# Names of the optimised tensors, in a fixed order; also the Adam param-group names.
PARAM_NAMES = ("xyz", "f_dc", "f_rest", "opacity", "scaling", "rotation")


def inverse_sigmoid(x):
    return torch.log(x / (1 - x))


def exponential_lr(lr_init, lr_final, lr_delay_steps=0, lr_delay_mult=1.0, max_steps=1_000_000):
    """Log-linear decay from lr_init to lr_final over max_steps, with an optional sine warm-up
    (the schedule of Plenoxels / 3DGS)."""
    def lr_at(step):
        if step < 0 or (lr_init == 0.0 and lr_final == 0.0):
            return 0.0
        if lr_delay_steps > 0:
            delay = lr_delay_mult + (1 - lr_delay_mult) * math.sin(0.5 * math.pi * min(max(step / lr_delay_steps, 0), 1))
        else:
            delay = 1.0
        t = min(max(step / max_steps, 0.0), 1.0)
        return delay * math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)
    return lr_at


build_rotation = quaternion_to_rotation  # 3DGS's name, used by densification


def _adam_kernel(device) -> dict:
    """Adam's implementation choice for parameters on `device`: the fused kernel where torch has one
    for that device (CPU, CUDA, ...; torch >= 2.4 on CPU), else the multi-tensor (foreach) one."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
        fused_ok = torch.device(device).type in _get_fused_kernels_supported_devices()
    except ImportError:  # a torch without the helper
        fused_ok = torch.device(device).type == "cuda"
    return {"fused": True} if fused_ok else {"foreach": True}


class GaussianModel:
    def __init__(self, sh_degree: int = 3, device="cpu"):
        """`device`: where every tensor of the model (and its optimizer state) lives."""
        self.max_sh_degree = sh_degree
        self.active_sh_degree = 0
        self.device = torch.device(device)
        self.params = {n: torch.empty(0, device=self.device) for n in PARAM_NAMES}
        self.filter_3D = torch.empty(0, device=self.device)
        # the screen-space filter the model renders with (scene/conventions.py): "mip" = Mip-Splatting's
        # 2D mip filter (ours), "inria" = 3DGS's 0.3 px^2 dilation; set where a model folder is loaded
        self.filter_2d = "mip"
        self.optimizer = None
        self.spatial_lr_scale = 1.0
        self.xyz_scheduler = None

    # ---- activated views -------------------------------------------------------------------
    @property
    def num_points(self) -> int:
        return self.params["xyz"].shape[0]

    @property
    def get_xyz(self):
        return self.params["xyz"]

    @property
    def get_features(self):
        """[N, (max_deg+1)^2, 3] SH coefficients."""
        return torch.cat([self.params["f_dc"], self.params["f_rest"]], dim=1)

    @property
    def get_scaling(self):
        return torch.exp(self.params["scaling"])

    @property
    def get_rotation(self):
        return torch.nn.functional.normalize(self.params["rotation"], dim=-1)

    @property
    def get_opacity(self):
        return torch.sigmoid(self.params["opacity"])

    @property
    def get_scaling_with_3D_filter(self):
        s2 = self.get_scaling.square() + self.filter_3D.square()
        return torch.sqrt(s2)

    def filter_3D_opacity_coef(self):
        """[N, 1] factor the 3D filter applies to opacity: convolving with the filter keeps the
        Gaussian's integral, so the peak drops by sqrt(det(Sigma) / det(Sigma + filter^2 I))
        (Mip-Splatting eq. 8)."""
        s2 = self.get_scaling.square()
        return torch.sqrt(s2.prod(dim=1, keepdim=True) / (s2 + self.filter_3D.square()).prod(dim=1, keepdim=True))

    @property
    def get_opacity_with_3D_filter(self):
        return self.get_opacity * self.filter_3D_opacity_coef()

    def oneup_sh_degree(self):
        if self.active_sh_degree < self.max_sh_degree:
            self.active_sh_degree += 1

    # ---- creation --------------------------------------------------------------------------
    def create_from_pcd(self, pcd, spatial_lr_scale: float, init_opacity: float = 0.1):
        """Initialise one Gaussian per point: isotropic scale = RMS distance to its 3 nearest neighbours."""
        self.spatial_lr_scale = float(spatial_lr_scale)
        pts = np.asarray(pcd.points, dtype=np.float64)
        if len(pts) == 0:
            raise PlyFormatError("the initial point cloud is empty; triangulate points with COLMAP "
                                 "(or use a Blender scene, which starts from random points)")
        k = min(4, len(pts))
        if k > 1:
            dist, _ = cKDTree(pts).query(pts, k=k)
            mean_sq = np.mean(np.square(dist[:, 1:]), axis=1)
        else:
            mean_sq = np.ones(len(pts))
        scales = np.log(np.sqrt(np.maximum(mean_sq, 1e-7)))
        n = len(pts)
        k_rest = (self.max_sh_degree + 1) ** 2 - 1
        dev = self.device
        f_dc = RGB2SH(torch.tensor(np.asarray(pcd.colors), dtype=torch.float32, device=dev)).reshape(n, 1, 3)
        self.params = {
            "xyz": torch.tensor(pts, dtype=torch.float32, device=dev),
            "f_dc": f_dc,
            "f_rest": torch.zeros(n, k_rest, 3, device=dev),
            "opacity": inverse_sigmoid(torch.full((n, 1), init_opacity, device=dev)),
            "scaling": torch.tensor(scales, dtype=torch.float32, device=dev)[:, None].repeat(1, 3),
            "rotation": torch.cat([torch.ones(n, 1, device=dev), torch.zeros(n, 3, device=dev)], dim=1),
        }
        self.filter_3D = torch.zeros(n, 1, device=dev)
        for p in self.params.values():
            p.requires_grad_(True)

    # ---- Mip-Splatting 3D filter -----------------------------------------------------------
    @torch.no_grad()
    def compute_3D_filter(self, cameras, near: float = 0.2, margin: float = 0.15):
        """filter_3D_k = sqrt(0.2) / max_c (f_c / z_kc) over cameras c that see Gaussian k.

        A camera "sees" a centre in front of its near plane whose projection lies inside the image
        enlarged by `margin` on each side (Mip-Splatting's convention). Mip-Splatting divides the
        nearest depth by the largest focal of *any* camera; we take the largest sampling rate f/z
        per Gaussian, which is the same when all cameras share a focal length and right otherwise.
        Gaussians no camera sees get the coarsest filter among the seen ones.
        """
        xyz = self.get_xyz.detach()
        rate = torch.zeros(xyz.shape[0], device=xyz.device)
        for cam in cameras:
            w2c = cam.world_to_camera.to(xyz)
            p = xyz @ w2c[:3, :3].T + w2c[:3, 3]
            z = p[:, 2]
            zs = z.clamp_min(1e-6)
            u = p[:, 0] / zs * cam.fx + cam.cx
            v = p[:, 1] / zs * cam.fy + cam.cy
            visible = (z > near) & (u >= -margin * cam.width) & (u <= (1 + margin) * cam.width) \
                & (v >= -margin * cam.height) & (v <= (1 + margin) * cam.height)
            cam_rate = torch.where(visible, max(cam.fx, cam.fy) / zs, torch.zeros_like(zs))
            rate = torch.maximum(rate, cam_rate)
        seen = rate > 0
        if seen.any():
            rate[~seen] = rate[seen].min()
        else:
            rate[:] = 1.0
        self.filter_3D = (math.sqrt(0.2) / rate)[:, None]

    # ---- optimisation ----------------------------------------------------------------------
    def training_setup(self, opt):
        lrs = {
            "xyz": opt.position_lr_init * self.spatial_lr_scale,
            "f_dc": opt.feature_lr,
            "f_rest": opt.feature_lr / 20.0,
            "opacity": opt.opacity_lr,
            "scaling": opt.scaling_lr,
            "rotation": opt.rotation_lr,
        }
        groups = [{"params": [self.params[n]], "lr": lrs[n], "name": n} for n in PARAM_NAMES]
        # The fused kernel updates all six tensors in one pass per tensor (on CPU 7x faster than the
        # per-op single-tensor Adam at 35k Gaussians); same update rule, results within float rounding.
        self.optimizer = torch.optim.Adam(groups, lr=0.0, eps=1e-15, **_adam_kernel(self.device))
        self.xyz_scheduler = exponential_lr(opt.position_lr_init * self.spatial_lr_scale,
                                            opt.position_lr_final * self.spatial_lr_scale,
                                            lr_delay_mult=opt.position_lr_delay_mult,
                                            max_steps=opt.position_lr_max_steps)

    def update_learning_rate(self, iteration: int) -> float:
        lr = self.xyz_scheduler(iteration)
        for group in self.optimizer.param_groups:
            if group["name"] == "xyz":
                group["lr"] = lr
        return lr

    def replace_params(self, new_params: dict, keep_state=None):
        """Swap the optimised tensors for `new_params` (same names), keeping Adam moments.

        keep_state maps the new rows to the old ones: a bool mask (prune), or None when rows are
        only appended (moments of new rows start at zero), or "reset" to zero all moments of the
        given names.
        """
        groups = {g["name"]: g for g in self.optimizer.param_groups} if self.optimizer else {}
        for name, tensor in new_params.items():
            new = tensor.detach().requires_grad_(True)
            group = groups.get(name)
            if group is not None:
                state = self.optimizer.state.pop(group["params"][0], None)
                if state is not None:
                    for key in ("exp_avg", "exp_avg_sq"):
                        buf = state[key]
                        if isinstance(keep_state, torch.Tensor):
                            buf = buf[keep_state]
                        elif keep_state == "reset":
                            buf = torch.zeros_like(new)
                        else:  # appended rows
                            extra = new.shape[0] - buf.shape[0]
                            buf = torch.cat([buf, torch.zeros((extra,) + buf.shape[1:], dtype=buf.dtype,
                                                                 device=buf.device)], dim=0)
                        state[key] = buf
                    self.optimizer.state[new] = state
                group["params"][0] = new
            self.params[name] = new

    # ---- checkpoints -----------------------------------------------------------------------
    def capture(self) -> dict:
        return {
            "active_sh_degree": self.active_sh_degree,
            "max_sh_degree": self.max_sh_degree,
            "params": {n: p.detach().clone() for n, p in self.params.items()},
            "filter_3D": self.filter_3D.clone(),
            "spatial_lr_scale": self.spatial_lr_scale,
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
        }

    def restore(self, state: dict, opt=None):
        self.active_sh_degree = state["active_sh_degree"]
        self.max_sh_degree = state["max_sh_degree"]
        # .to(self.device): a checkpoint written on another device (or loaded to CPU) lands on the model's
        self.params = {n: p.detach().to(self.device, copy=True).requires_grad_(True) for n, p in state["params"].items()}
        self.filter_3D = state["filter_3D"].to(self.device, copy=True)
        self.spatial_lr_scale = state["spatial_lr_scale"]
        if opt is not None:
            self.training_setup(opt)
            if state.get("optimizer") is not None:
                self.optimizer.load_state_dict(state["optimizer"])

    # ---- PLY (3DGS layout + Mip-Splatting's filter_3D) ------------------------------------
    def ply_attribute_names(self):
        names = ["x", "y", "z", "nx", "ny", "nz"]
        names += [f"f_dc_{i}" for i in range(3)]
        names += [f"f_rest_{i}" for i in range(self.params["f_rest"].shape[1] * 3)]
        names += ["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
        return names + ["filter_3D"]

    @torch.no_grad()
    def save_ply(self, path):
        """Write the standard 3DGS PLY. f_rest is stored channel-major (all R coefficients, then G,
        then B), as 3DGS viewers expect."""
        p = {n: t.detach().cpu().float() for n, t in self.params.items()}
        n = p["xyz"].shape[0]
        f_rest = p["f_rest"].transpose(1, 2).reshape(n, -1)
        columns = [p["xyz"], torch.zeros(n, 3, device="cpu"), p["f_dc"].reshape(n, 3), f_rest, p["opacity"],
                   p["scaling"], p["rotation"], self.filter_3D.detach().cpu().float().reshape(n, 1)]
        data = torch.cat(columns, dim=1).numpy()
        names = self.ply_attribute_names()
        arr = np.empty(n, dtype=[(a, "f4") for a in names])
        for i, a in enumerate(names):
            arr[a] = data[:, i]
        with atomic_write(path, "wb") as f:
            PlyData([PlyElement.describe(arr, "vertex")]).write(f)

    def load_ply(self, path):
        """Read a 3DGS / Mip-Splatting PLY; the SH degree follows the number of f_rest columns."""
        if not os.path.isfile(path):
            raise PlyFormatError(f"no PLY at {path}; train the model first or pass an existing --iteration")
        try:
            vertex = PlyData.read(path)["vertex"]
            names = [p.name for p in vertex.properties]
            n = vertex.count
            def col(a):
                return np.asarray(vertex[a], dtype=np.float32)
            required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + \
                [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
            missing = [a for a in required if a not in names]
            if missing:
                raise PlyFormatError(f"{path} is not a 3DGS Gaussian PLY (missing {', '.join(missing)}); "
                                     "pass a point_cloud.ply written by 3DGS, Mip-Splatting or 3dsr")
            rest_names = sorted([a for a in names if a.startswith("f_rest_")], key=lambda a: int(a[7:]))
            k_rest = len(rest_names) // 3
            degree = int(round(math.sqrt(k_rest + 1))) - 1
            if (degree + 1) ** 2 - 1 != k_rest or len(rest_names) % 3:
                raise PlyFormatError(f"{path} has {len(rest_names)} f_rest columns, which is no SH degree; "
                                     "the file is corrupt")
            xyz = np.stack([col("x"), col("y"), col("z")], 1)
            f_dc = np.stack([col(f"f_dc_{i}") for i in range(3)], 1).reshape(n, 1, 3)
            f_rest = (np.stack([col(a) for a in rest_names], 1) if rest_names else np.zeros((n, 0), np.float32))
            f_rest = f_rest.reshape(n, 3, k_rest).transpose(0, 2, 1)
            data = {
                "xyz": xyz, "f_dc": f_dc, "f_rest": f_rest, "opacity": col("opacity")[:, None],
                "scaling": np.stack([col(f"scale_{i}") for i in range(3)], 1),
                "rotation": np.stack([col(f"rot_{i}") for i in range(4)], 1),
            }
            filt = col("filter_3D")[:, None] if "filter_3D" in names else np.zeros((n, 1), np.float32)
        except PlyFormatError:
            raise
        except Exception as exc:  # plyfile raises several types on truncated or garbage files
            raise PlyFormatError(f"cannot read {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'corrupt'}); "
                                 "the file is truncated or not a PLY, re-save the model") from None
        if not all(np.isfinite(v).all() for v in data.values()):
            raise PlyFormatError(f"{path} contains NaN/inf values; the model diverged or the file is corrupt")
        self.params = {k: torch.tensor(np.ascontiguousarray(v), dtype=torch.float32, device=self.device)
                       .requires_grad_(True) for k, v in data.items()}
        self.filter_3D = torch.tensor(filt, device=self.device)
        self.max_sh_degree = degree
        self.active_sh_degree = degree

    # ---- the 3D filter folded in, for viewers that ignore filter_3D ------------------------------
    @torch.no_grad()
    def fused_copy(self):
        """A copy of this model whose plain Gaussians are its filtered ones, with filter_3D = 0.

        Convolving a Gaussian with the isotropic 3D filter is exact to store in the Gaussian itself
        (Mip-Splatting eq. 8; get_scaling_with_3D_filter and get_opacity_with_3D_filter):
        scale' = sqrt(s^2 + f^2) per axis, opacity' = opacity * sqrt(prod s^2 / prod(s^2 + f^2)), kept
        as log-scale and logit (computed in float64). A renderer that ignores filter_3D then draws
        what this model draws with it, under the same 2D filter (`filter_2d` is copied).
        """
        fused = GaussianModel(self.max_sh_degree, device=self.device)
        fused.active_sh_degree = self.active_sh_degree
        fused.spatial_lr_scale = self.spatial_lr_scale
        fused.filter_2d = self.filter_2d
        params = {n: t.detach().clone() for n, t in self.params.items()}
        if self.num_points:
            s2 = torch.exp(2.0 * params["scaling"].double())
            f2 = self.filter_3D.detach().double().square().reshape(-1, 1)
            coef = torch.sqrt(s2.prod(dim=1, keepdim=True) / (s2 + f2).prod(dim=1, keepdim=True))
            opacity = (torch.sigmoid(params["opacity"].double()) * coef).clamp(1e-12, 1.0 - 1e-12)
            params["scaling"] = (0.5 * torch.log(s2 + f2)).to(params["scaling"].dtype)
            params["opacity"] = torch.log(opacity / (1.0 - opacity)).to(params["opacity"].dtype)
        fused.params = {n: t.requires_grad_(True) for n, t in params.items()}
        fused.filter_3D = torch.zeros(self.num_points, 1, device=self.device)
        return fused

    def ply_vertex_array(self, with_filter_3D=True):
        """The model as a structured numpy array of PLY vertex rows (3DGS property order; f_rest
        channel-major), with or without the trailing filter_3D column."""
        p = {n: t.detach().cpu().float() for n, t in self.params.items()}
        n = p["xyz"].shape[0]
        f_rest = p["f_rest"].transpose(1, 2).reshape(n, -1)
        columns = [p["xyz"], torch.zeros(n, 3, device="cpu"), p["f_dc"].reshape(n, 3), f_rest, p["opacity"],
                   p["scaling"], p["rotation"]]
        names = self.ply_attribute_names()
        if with_filter_3D:
            columns.append(self.filter_3D.detach().cpu().float().reshape(n, 1))
        else:
            names = [a for a in names if a != "filter_3D"]
        data = torch.cat(columns, dim=1).numpy()
        arr = np.empty(n, dtype=[(a, "f4") for a in names])
        for i, a in enumerate(names):
            arr[a] = data[:, i]
        return arr

    @torch.no_grad()
    def save_fused_ply(self, path):
        """Write the standard 3DGS PLY of `fused_copy()`: no filter_3D property, the 3D filter folded
        into scales and opacities, so viewers that ignore filter_3D draw the filtered model. The
        header is plyfile's plain one (no comments: Inria's SIBR viewer reads the vertex count from
        its third line). Written atomically."""
        arr = self.fused_copy().ply_vertex_array(with_filter_3D=False)
        with atomic_write(path, "wb") as f:
            PlyData([PlyElement.describe(arr, "vertex")]).write(f)
