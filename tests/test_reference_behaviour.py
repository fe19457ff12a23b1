"""Where we claim Inria 3DGS / Mip-Splatting behaviour, we have it (issue 15, item 3).

- the per-iteration order of their train.py: test evaluation and save *before* that iteration's
  densification and opacity reset, the 3D filter recomputed right after densify/prune (before the
  reset), the periodic filter update before the step, no optimizer step on the run's last iteration,
  the checkpoint after the step;
- screen-size pruning off by default (their max_radii2D is zeroed by densification before the size
  test runs), world-size pruning live after the first reset;
- Blender scenes start from 100k near-grey random points in [-1.3, 1.3]^3.
"""
import json
import os
from argparse import ArgumentParser, Namespace

import numpy as np
import torch

from arguments import OptimizationParams
from scene.cameras import Camera
from scene.dataset_readers import BasicPointCloud, read_scene
from scene.gaussian_model import GaussianModel
from training import densify_ops
from training.fit import fit_gaussians, load_checkpoint, seed_everything
from training.strategy import DensifyStrategy
from utils.sh_utils import C0

W, H = 32, 24
PIPE = Namespace(backend="torch", debug=False)
BG = torch.zeros(3)


def options(iterations, **overrides):
    parser = ArgumentParser()
    opt = OptimizationParams(parser).extract(parser.parse_args([]))
    opt.iterations = opt.position_lr_max_steps = iterations
    for k, v in overrides.items():
        setattr(opt, k, v)
    return opt


def cameras(n=4):
    """n cameras 3 units in front of the origin, side by side, each with a smooth random target."""
    gen = torch.Generator().manual_seed(1)
    cams = []
    for i in range(n):
        w2c = torch.eye(4)
        w2c[0, 3], w2c[2, 3] = 0.2 * (i - n / 2), 3.0
        img = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=gen), size=(H, W), mode="bilinear",
                                              align_corners=False)[0]
        cams.append(Camera(uid=i, image_name=f"v{i}", world_to_camera=w2c, fx=30.0, fy=30.0, cx=W / 2, cy=H / 2,
                           width=W, height=H, image=img))
    return cams


def model(n=60, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.uniform([-0.6, -0.45, -0.2], [0.6, 0.45, 0.2], size=(n, 3)).astype(np.float32)
    pcd = BasicPointCloud(points=pts, colors=rng.random((n, 3)).astype(np.float32), normals=np.zeros_like(pts))
    g = GaussianModel(1)
    g.create_from_pcd(pcd, spatial_lr_scale=1.0)
    return g


def fit(g, cams, opt, first, last, **kw):
    kw.setdefault("scene_extent", 1.0)
    return fit_gaussians(g, cams, opt, PIPE, BG, kernel_size=0.1, first_iter=first, last_iter=last,
                         progress=False, **kw)


def params(g):
    return {n: p.detach().clone() for n, p in g.params.items()}


# ---- 1. the order of one iteration ------------------------------------------------------------
def test_save_and_evaluation_come_before_densification_and_opacity_reset():
    """Iteration 10 densifies (every 5) and resets opacities (every 10), and is a save and test
    iteration: 3DGS saves and evaluates the model as it was *before* that densification and reset."""
    seed_everything(0)
    g, cams = model(), cameras()
    opt = options(10, densify_from_iter=2, densification_interval=5, opacity_reset_interval=10,
                  densify_until_iter=100, densify_grad_threshold=0.0)  # threshold 0: every Gaussian densifies
    strategy = DensifyStrategy.from_opt(opt)
    before = []  # Gaussian count entering each densify_and_prune
    real = strategy.densify_and_prune

    def counting(gaussians, *a, **k):
        before.append(gaussians.num_points)
        return real(gaussians, *a, **k)
    strategy.densify_and_prune = counting

    saved = {}

    def on_save(it):
        saved[it] = (g.num_points, g.get_opacity_with_3D_filter.detach().clone())
    result = fit(g, cams, opt, 1, 10, strategy=strategy, on_save=on_save, save_iterations={10},
                 test_cameras=cams[:1], test_iterations={10}, final_iteration=10)

    assert len(before) == 2 and g.num_points > before[-1]  # iteration 10 did densify
    count, opacity = saved[10]
    assert count == before[-1], (count, before)
    assert opacity.max() > 0.05, float(opacity.max())  # not the reset model (every filtered opacity <= 0.01)
    assert [e["num_gaussians"] for e in result.test_log if e["split"] == "test"] == [before[-1]]
    assert float(g.get_opacity_with_3D_filter.max()) <= 0.01 + 1e-6  # the reset did happen, after the save


def test_last_iteration_of_the_run_takes_no_optimizer_step():
    opt = options(6)
    seed_everything(0)
    a = model()
    fit(a, cameras(), opt, 1, 5)
    seed_everything(0)
    b = model()
    steps = []
    b.training_setup(opt)
    real_step = b.optimizer.step
    b.optimizer.step = lambda *x, **k: (steps.append(1), real_step(*x, **k))[1]
    fit(b, cameras(), opt, 1, 6, final_iteration=6)
    assert len(steps) == 5
    pa, pb = params(a), params(b)
    for n in pa:  # after iteration 6 the parameters are those after iteration 5's step
        assert torch.equal(pa[n], pb[n]), n


def test_chunked_fits_step_on_every_iteration_by_default():
    """sr_loop fits chunks of one schedule: without final_iteration the chunk's end still steps."""
    opt = options(6)
    seed_everything(0)
    g = model()
    g.training_setup(opt)
    steps = []
    real_step = g.optimizer.step
    g.optimizer.step = lambda *x, **k: (steps.append(1), real_step(*x, **k))[1]
    fit(g, cameras(), opt, 1, 3)
    fit(g, cameras(), opt, 4, 6)
    assert len(steps) == 6


def test_train_py_marks_its_last_iteration_final(tmp_path, monkeypatch):
    import train
    from training.fit import FitResult
    scene = make_blender_scene(tmp_path / "scene")
    seen = {}

    def fake_fit(*args, **kwargs):
        seen.update(kwargs)
        return FitResult(last_iteration=kwargs["last_iter"], seconds=0.0)
    monkeypatch.setattr(train, "fit_gaussians", fake_fit)
    assert train.main(["-s", scene, "-m", str(tmp_path / "m"), "--iterations", "7", "--device", "cpu",
                       "--backend", "torch", "--quiet"]) == 0
    assert seen["last_iter"] == 7 and seen["final_iteration"] == 7


def test_3d_filter_recomputed_after_densify_before_reset_and_periodic_updates_as_mip_splatting(monkeypatch):
    """Mip-Splatting: compute_3D_filter right after densify_and_prune (then reset_opacity), and every
    100 iterations (here 5) when iteration > densify_until_iter and iteration < iterations - 100."""
    events = []
    real_reset = densify_ops.reset_opacity
    monkeypatch.setattr(densify_ops, "reset_opacity",
                        lambda g, *a, **k: (events.append("reset"), real_reset(g, *a, **k))[1])
    seed_everything(0)
    g, cams = model(), cameras()
    opt = options(30, densify_from_iter=2, densification_interval=5, opacity_reset_interval=5,
                  densify_until_iter=10, filter_update_interval=5)
    g.training_setup(opt)
    steps = []
    real_step = g.optimizer.step
    g.optimizer.step = lambda *x, **k: (steps.append(1), real_step(*x, **k))[1]
    real_filter = g.compute_3D_filter
    monkeypatch.setattr(g, "compute_3D_filter",
                        lambda c: (events.append(("filter", len(steps) + 1)), real_filter(c))[1])
    fit(g, cams, opt, 1, 30, strategy=DensifyStrategy.from_opt(opt), final_iteration=30)
    # initial filter; iteration 5: densify -> filter -> reset; 10 = densify_until_iter: nothing;
    # periodic at 15, 20 (not 10: not past densification; not 25: within the last interval)
    assert events == [("filter", 1), ("filter", 5), "reset", ("filter", 15), ("filter", 20)], events


def test_checkpoint_after_the_step_resumes_bit_identically(tmp_path):
    """A checkpoint at a densify + reset + save iteration, continued to the run's last iteration."""
    opt = options(14, densify_from_iter=2, densification_interval=4, opacity_reset_interval=8,
                  densify_until_iter=10, densify_grad_threshold=0.0, filter_update_interval=2)
    cams = cameras()
    seed_everything(0)
    a = model()
    sa = DensifyStrategy.from_opt(opt, seed=3)
    fit(a, cams, opt, 1, 14, strategy=sa, checkpoint_dir=str(tmp_path), checkpoint_iterations={8},
        final_iteration=14)

    seed_everything(123)  # the checkpoint brings its own RNG states
    b = GaussianModel(1)
    sb = DensifyStrategy.from_opt(opt, seed=3)
    last, extra = load_checkpoint(str(tmp_path / "chkpnt8.pth"), b, opt, sb)
    assert last == 8
    fit(b, cams, opt, 9, 14, strategy=sb, resume_state=extra, final_iteration=14)
    assert a.num_points == b.num_points
    pa, pb = params(a), params(b)
    for n in pa:
        assert torch.equal(pa[n], pb[n]), n
    assert torch.equal(a.filter_3D, b.filter_3D)


# ---- 2. size pruning ------------------------------------------------------------------------------
def size_case(**strategy_kw):
    """Three Gaussians: 0 huge on screen (max radius 500 px), 1 huge in the world, 2 ordinary."""
    g = model(n=3)
    with torch.no_grad():
        g.params["scaling"].fill_(np.log(0.01))
        g.params["scaling"][1] = np.log(0.5)  # > 0.1 x extent 1.0
    g.filter_3D = torch.zeros(3, 1)
    g.training_setup(options(100))
    s = DensifyStrategy(**strategy_kw)
    s.reset_state(3)
    s._state["max_radii"] = torch.tensor([500.0, 1.0, 1.0])
    return g, s


def surviving(g):
    return sorted(round(float(x), 4) for x in g.get_xyz[:, 0].detach())


def test_screen_size_pruning_is_off_by_default_world_size_pruning_is_on():
    g, s = size_case()
    xs = g.get_xyz[:, 0].detach().clone()
    s.densify_and_prune(g, 1.0, size_limit=20)  # after the first reset
    assert surviving(g) == sorted(round(float(x), 4) for x in xs[[0, 2]])  # 1 pruned (world), 0 kept
    g, s = size_case()
    s.densify_and_prune(g, 1.0, size_limit=None)  # before the first reset: no size pruning at all
    assert g.num_points == 3


def test_screen_size_pruning_flag_restores_the_live_test():
    g, s = size_case(screen_size_pruning=True)
    xs = g.get_xyz[:, 0].detach().clone()
    s.densify_and_prune(g, 1.0, size_limit=20)
    assert surviving(g) == [round(float(xs[2]), 4)]


def test_screen_size_pruning_option():
    parser = ArgumentParser()
    op = OptimizationParams(parser)
    assert op.extract(parser.parse_args([])).screen_size_pruning is False
    opt = op.extract(parser.parse_args(["--screen_size_pruning"]))
    assert DensifyStrategy.from_opt(opt).screen_size_pruning is True
    assert DensifyStrategy.from_opt(options(10)).screen_size_pruning is False


# ---- 3. Blender initial point cloud ---------------------------------------------------------------
def make_blender_scene(root):
    from PIL import Image
    os.makedirs(root / "train", exist_ok=True)
    Image.fromarray(np.full((8, 8, 4), 200, np.uint8)).save(root / "train" / "r_0.png")
    c2w = np.eye(4)
    c2w[2, 3] = 4.0
    with open(root / "transforms_train.json", "w") as f:
        json.dump({"camera_angle_x": 0.7, "frames": [{"file_path": "./train/r_0",
                                                       "transform_matrix": c2w.tolist()}]}, f)
    return str(root)


def test_blender_initial_points_are_near_grey_as_in_3dgs(tmp_path):
    pc = read_scene(make_blender_scene(tmp_path / "scene"), seed=5).point_cloud
    assert pc.points.shape == (100_000, 3)
    assert pc.points.min() >= -1.3 and pc.points.max() <= 1.3 and np.ptp(pc.points, axis=0).min() > 2.5
    # 3DGS: rgb = SH2RGB(U[0, 1/255)) = 0.5 + C0 * U[0, 1/255)
    assert pc.colors.min() >= 0.5 and pc.colors.max() <= 0.5 + C0 / 255 + 1e-7
    assert abs(float(pc.colors.mean()) - (0.5 + C0 / 510)) < 1e-5
