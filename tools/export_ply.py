#!/usr/bin/env python
"""Export a model's Gaussians for other viewers.

    python tools/export_ply.py -m OUT [--iteration N|sr] --fused [--out PATH]

--fused writes a standard 3DGS PLY (x y z nx ny nz f_dc_* f_rest_* opacity scale_* rot_*, no
`filter_3D`) with Mip-Splatting's 3D smoothing filter folded into each Gaussian (Mip-Splatting eq. 8):
scale' = sqrt(scale^2 + filter_3D^2) per axis, opacity' = opacity * sqrt(prod scale^2 / prod scale'^2).
Viewers that ignore `filter_3D` (most splat viewers, and Inria's SIBR, which also needs exactly the
standard properties) then draw the filtered Gaussians the model was trained as. Default output:
beside the source PLY, `point_cloud/iteration_<N>/point_cloud_fused.ply` (or the SR run's iteration
folder for --iteration sr); the name keeps it out of `--iteration` (which reads point_cloud.ply).

The 2D (screen-space) filter cannot be folded into a 3D Gaussian: it depends on the view. A viewer
with Mip-Splatting's 2D filter (variance 0.1 px^2, opacity compensated; gsplat's "antialiased" mode)
draws the fused file as our renderer draws the model. A plain 3DGS viewer applies 3DGS's 0.3 px^2
dilation without compensation instead: Gaussians near or below a pixel come out larger and brighter
(the 3D filter keeps them >= 0.2 px^2 at the training views, where the smallest peak up to 1.5x
brighter; more when seen from farther away or at a lower resolution); larger ones look the same. A model in the Inria convention (scene/conventions.py) has no 3D filter, so its fused file
equals it and plain viewers draw it as trained.
"""
import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import argparse  # noqa: E402

import torch  # noqa: E402

from scene.conventions import model_filter_2d  # noqa: E402
from scene.gaussian_model import GaussianModel  # noqa: E402
from scene.scene import iteration_ply, resolve_iteration  # noqa: E402
from utils.errors import ModelNotFoundError, ThreeDSRError  # noqa: E402
from utils.system_utils import run_cli  # noqa: E402

FUSED_NAME = "point_cloud_fused.ply"


def default_fused_path(source_ply):
    return os.path.join(os.path.dirname(source_ply), FUSED_NAME)


def viewer_note(convention):
    if convention == "inria":
        return "an Inria 3DGS model (no 3D filter): plain 3DGS viewers draw it as trained"
    return ("Mip-Splatting's 2D filter: Mip-aware viewers (gsplat antialiased) draw it as 3dsr does; plain 3DGS "
            "viewers use a 0.3 px^2 dilation without compensation, so sub-pixel splats look larger and "
            "brighter (up to 1.5x at the training views)")


def export_fused(model_path, iteration="-1", out=None):
    """Write the fused PLY of `model_path`'s `iteration`; returns (path, model, convention)."""
    if not model_path:
        raise ModelNotFoundError("no model folder given; pass -m OUT (the folder train.py wrote)")
    if not os.path.isdir(model_path):
        raise ModelNotFoundError(f"model folder {model_path} does not exist; pass the folder train.py wrote")
    it = resolve_iteration(model_path, iteration)
    source = iteration_ply(model_path, it)
    out = out or default_fused_path(source)
    if os.path.abspath(out) == os.path.abspath(source):
        raise ThreeDSRError(f"--out {out} is the model's own PLY; pick another path (default: {FUSED_NAME} beside it)")
    gaussians = GaussianModel(3, device="cpu")
    gaussians.load_ply(source)
    convention = model_filter_2d(model_path, source, announce=False)
    gaussians.filter_2d = convention
    gaussians.save_fused_ply(out)
    return out, gaussians, convention


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Export a model's Gaussians for other viewers. --fused: a standard 3DGS PLY (no filter_3D) with "
                    "the 3D filter folded into scales and opacities (Mip-Splatting eq. 8), for viewers that ignore "
                    "filter_3D.")
    p.add_argument("-m", "--model_path", default="", help="model folder (train.py's -m OUT)")
    p.add_argument("--iteration", default="-1", help="a saved iteration or SR run name (default: the latest)")
    p.add_argument("--fused", action="store_true",
                   help="fold the 3D filter into scales and opacities; standard 3DGS properties only")
    p.add_argument("--out", default=None, help=f"output PLY (default: {FUSED_NAME} beside the source PLY)")
    args = p.parse_args(argv)
    if not args.fused:
        raise ThreeDSRError("nothing to export: pass --fused (a standard 3DGS PLY with the 3D filter folded in)")
    out, gaussians, convention = export_fused(args.model_path, args.iteration, args.out)
    filt = gaussians.filter_3D.reshape(-1)
    coef = gaussians.filter_3D_opacity_coef().reshape(-1) if gaussians.num_points else torch.ones(0)
    print(f"{out}: {gaussians.num_points} Gaussians, SH degree {gaussians.max_sh_degree}, 3D filter folded in "
          f"(filter_3D max {float(filt.max()) if filt.numel() else 0.0:.3g}, opacity scaled by "
          f"{float(coef.min()) if coef.numel() else 1.0:.3g}..1)")
    print(f"2D filter: {viewer_note(convention)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
