"""Which screen-space (2D) filter a model was trained with, so that it renders as its source renders it.

Two conventions exist for the filter the rasterizer adds to every projected (2D) covariance:
  "mip":   Mip-Splatting's 2D mip filter (Yu et al. 2024, eq. 11): variance `kernel_size` (0.1 px^2)
           with opacity compensation sqrt(det(S) / det(S + k I)). 3dsr and Mip-Splatting train with it.
  "inria": Inria 3DGS (Kerbl et al. 2023): a fixed 0.3 px^2 dilation without compensation.
A model rendered under the other convention is wrong where it matters most, on small splats: an
Inria model under the mip filter loses up to half (and more) of the peak of its sub-pixel Gaussians.

A model folder records its convention in cfg_args as `filter_2d` ('mip' | 'inria'; written by our
train.py). Folders written elsewhere are recognised by what their writers leave behind:
Mip-Splatting's ModelParams has `kernel_size` (so its cfg_args has it, as ours always did) and its
PLY has `filter_3D`; Inria 3DGS has neither. `--filter_2d mip|inria` overrides; `auto` detects.
"""
import os

from arguments import read_cfg_args
from utils.errors import PlyFormatError, ThreeDSRError

FILTER_2D_CHOICES = ("auto", "mip", "inria")
CONVENTIONS = ("mip", "inria")


def check_filter_2d_flag(value) -> str:
    """The --filter_2d value, or a one-line error naming the choices (None = not given = auto)."""
    value = "auto" if value in (None, "") else str(value)
    if value not in FILTER_2D_CHOICES:
        raise ThreeDSRError(f"--filter_2d {value} is not a 2D filter convention; choose one of "
                            f"{', '.join(FILTER_2D_CHOICES)}")
    return value


def training_filter_2d(flag="auto") -> str:
    """The convention a new model trains with: ours ("mip") unless --filter_2d inria asks for 3DGS's."""
    value = check_filter_2d_flag(flag)
    return "mip" if value == "auto" else value


def ply_properties(path):
    """Names of the `vertex` properties in a PLY header (the header only; the data is not read)."""
    names, in_vertex = [], False
    try:
        with open(path, "rb") as f:
            if f.readline().strip() != b"ply":
                raise PlyFormatError(f"{path} is not a PLY file; pass a point_cloud.ply written by 3DGS, "
                                     "Mip-Splatting or 3dsr")
            for _ in range(100_000):  # a header is a few hundred lines; stop on garbage without end_header
                line = f.readline()
                if not line or line.strip() == b"end_header":
                    break
                words = line.decode("ascii", "replace").split()
                if words[:1] == ["element"]:
                    in_vertex = words[1:2] == ["vertex"]
                elif words[:1] == ["property"] and in_vertex:
                    names.append(words[-1])
    except OSError as exc:
        raise PlyFormatError(f"cannot read {path} ({exc.strerror or exc}); pass an existing point_cloud.ply") from None
    return names


def _owner_folder(ply_path):
    """The model folder holding `<folder>/point_cloud/iteration_<N>/point_cloud.ply`, or None."""
    iteration_dir = os.path.dirname(os.path.abspath(ply_path))
    point_cloud_dir = os.path.dirname(iteration_dir)
    if os.path.basename(point_cloud_dir) != "point_cloud":
        return None
    return os.path.dirname(point_cloud_dir)


def detect_filter_2d(model_path, ply_path=None):
    """(convention, reason): the 2D filter the model in `model_path` (PLY `ply_path`) was trained with.

    The cfg_args read is that of the folder holding the PLY (an SR run under OUT/sr/<name>/ is a model
    folder of its own), else `model_path`'s. In order:
      cfg_args filter_2d = 'mip' | 'inria'   -> that (recorded by our train.py / sr_refine.py);
      cfg_args kernel_size set               -> "mip" (Mip-Splatting's ModelParams, and ours);
      PLY has a filter_3D property           -> "mip" (only Mip-Splatting-style models have a 3D filter);
      otherwise                              -> "inria" (an Inria 3DGS model: neither of the above).
    """
    cfg, cfg_folder = None, None
    for folder in (_owner_folder(ply_path) if ply_path else None, model_path):
        if folder and os.path.isfile(os.path.join(folder, "cfg_args")):
            cfg, cfg_folder = read_cfg_args(folder), folder
            break
    if cfg is not None:
        recorded = getattr(cfg, "filter_2d", None)
        if recorded in CONVENTIONS:
            return recorded, f"recorded in {os.path.join(cfg_folder, 'cfg_args')}"
        if getattr(cfg, "kernel_size", None) is not None:
            return "mip", "cfg_args has kernel_size (a Mip-Splatting or 3dsr model)"
    if ply_path and "filter_3D" in ply_properties(ply_path):
        return "mip", "the PLY has filter_3D (a Mip-Splatting or 3dsr model)"
    where = "cfg_args has no kernel_size" if cfg is not None else "no cfg_args"
    return "inria", f"{where} and the PLY no filter_3D (an Inria 3DGS model)"


def model_filter_2d(model_path, ply_path=None, flag="auto", announce=True) -> str:
    """The convention to render a loaded model with: --filter_2d if it names one, else detected.

    A detected Inria convention is announced (one line), since it changes how small splats look.
    """
    value = check_filter_2d_flag(flag)
    if value != "auto":
        return value
    convention, reason = detect_filter_2d(model_path, ply_path)
    if convention == "inria" and announce:
        print(f"[scene] 2D filter: Inria 3DGS's 0.3 px^2 dilation without opacity compensation ({reason}); "
              f"pass --filter_2d mip to render with Mip-Splatting's instead")
    return convention
