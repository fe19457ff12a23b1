"""The C++/OpenMP `cpu` backend against the pure-PyTorch reference: images, depth, alpha, radii and
every gradient, on random scenes and on the edge cases the compositing rules exist for."""
import math

import numpy as np
import pytest
import torch

threedsr_cpu_rasterizer = pytest.importorskip(
    "threedsr_cpu_rasterizer",
    reason="C++ extension not built (bash scripts/setup.sh, or python -m pip install --no-build-isolation "
           "./submodules/cpu_rasterizer)")

from gaussian_renderer import _rasterizer, backend_status, cpu_backend, render, torch_backend  # noqa: E402

GRAD_NAMES = ("means", "quats", "scales", "opacities", "colors", "means2d_offset")


def camera(W, H, f=None, cx=None, cy=None, dtype=torch.float32):
    f = f if f is not None else 0.9 * W
    K = torch.tensor([[f, 0.0, W / 2 if cx is None else cx],
                      [0.0, f * 1.05, H / 2 if cy is None else cy],
                      [0.0, 0.0, 1.0]], dtype=dtype)
    return K


def random_scene(n, seed, dtype=torch.float32, scale=0.03, depth=(2.0, 5.0)):
    """Gaussians in front of an identity camera; scales log-normal around `scale` (a few pixels)."""
    g = torch.Generator().manual_seed(seed)
    z = depth[0] + (depth[1] - depth[0]) * torch.rand(n, generator=g, dtype=dtype)
    xy = (torch.rand(n, 2, generator=g, dtype=dtype) - 0.5) * 1.3 * z[:, None]
    means = torch.cat([xy, z[:, None]], dim=1)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = scale * torch.exp(0.6 * torch.randn(n, 3, generator=g, dtype=dtype))
    opac = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=dtype)
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    return [means, quats, scales, opac, colors]


def edge_scene(seed, dtype=torch.float32):
    """Every case at once: behind the camera, off-screen, huge, Jacobian clamp, sub-pixel, a stack
    of near-opaque Gaussians (early termination), and a dense overlapping cluster."""
    g = torch.Generator().manual_seed(seed)

    def group(n, centre, spread, scale, opac):
        means = torch.tensor(centre, dtype=dtype) + spread * torch.randn(n, 3, generator=g, dtype=dtype)
        quats = torch.randn(n, 4, generator=g, dtype=dtype)
        scales = scale * torch.exp(0.3 * torch.randn(n, 3, generator=g, dtype=dtype))
        op = torch.full((n,), opac, dtype=dtype) if opac is not None else \
            0.1 + 0.8 * torch.rand(n, generator=g, dtype=dtype)
        colors = torch.rand(n, 3, generator=g, dtype=dtype)
        return [means, quats, scales, op, colors]

    groups = [
        group(20, [0.0, 0.0, -1.0], 0.5, 0.1, None),          # behind the camera
        group(10, [0.0, 0.0, 0.005], 0.002, 0.01, None),      # inside the near plane
        group(20, [40.0, 0.0, 3.0], 1.0, 0.05, None),         # far off-screen (culled)
        group(8, [6.0, -4.0, 3.0], 0.5, 1.5, None),           # off-axis, big: Jacobian clamp active
        group(3, [0.0, 0.0, 6.0], 0.3, 4.0, 0.6),             # huge: cover every tile
        group(60, [0.0, 0.0, 3.0], 0.5, 5e-3, None),          # sub-pixel (the 2D filter dominates)
        group(40, [0.2, 0.1, 2.5], 0.05, 0.15, 0.999),        # near-opaque stack: T hits 1e-4
        group(300, [-0.4, 0.3, 3.0], 0.15, 0.04, None),       # many overlapping
        group(150, [0.0, 0.0, 3.5], 1.0, 0.03, None),         # ordinary
    ]
    return [torch.cat([gr[i] for gr in groups]) for i in range(5)]


def run(fn, scene, K, W, H, bg, weights, kernel_size=0.1, viewmat=None, compensate=True):
    dtype = scene[0].dtype
    viewmat = torch.eye(4, dtype=dtype) if viewmat is None else viewmat
    inputs = [t.clone().requires_grad_(True) for t in scene]
    offset = torch.zeros(scene[0].shape[0], 2, dtype=dtype, requires_grad=True)
    out = fn(*inputs, viewmat, K, W, H, bg, kernel_size=kernel_size, means2d_offset=offset, compensate=compensate)
    loss = ((out["image"] * weights[0]).sum() + (out["depth"] * weights[1]).sum()
            + (out["alpha"] * weights[2]).sum() + (out["means2d"] * weights[3]).sum())
    loss.backward()
    grads = {n: t.grad for n, t in zip(GRAD_NAMES, inputs + [offset])}
    return out, grads


def loss_weights(W, H, n, dtype, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, H, W, generator=g, dtype=dtype) - 0.3, torch.rand(1, H, W, generator=g, dtype=dtype) * 0.1,
            torch.rand(1, H, W, generator=g, dtype=dtype) - 0.5, 1e-3 * torch.randn(n, 2, generator=g, dtype=dtype)]


def assert_parity(scene, K, W, H, bg, kernel_size=0.1, image_tol=1e-5, rtol=1e-3, atol=1e-6, viewmat=None,
                  compensate=True):
    """Outputs within image_tol, radii equal, every gradient allclose(rtol, atol).

    In float32 both implementations round, and a gradient component that cancels to ~1e-3 of its
    terms (the scale along a thin axis, the depth component of a mean) can be off by more than rtol
    in either; often both are off from the exact value by much more than from each other. Entries
    outside the tolerance are therefore judged against the reference run in float64 and pass if
      the cpu value is within the tolerance of the exact value, or
      it differs from the float32 reference by no more than the reference differs from exact, or
      its error relative to that Gaussian's gradient norm is within the worst such error the
      float32 reference makes.
    """
    w = loss_weights(W, H, scene[0].shape[0], scene[0].dtype)
    ref, g_ref = run(torch_backend.rasterize, scene, K, W, H, bg, w, kernel_size, viewmat, compensate)
    out, g_out = run(cpu_backend.rasterize, scene, K, W, H, bg, w, kernel_size, viewmat, compensate)
    assert torch.equal(out["radii"], ref["radii"]) and out["radii"].dtype == torch.int32
    for key in ("image", "depth", "alpha", "means2d"):
        assert out[key].shape == ref[key].shape, key
        err = (out[key] - ref[key]).abs().max().item()
        scale = max(1.0, ref[key].abs().max().item()) if key in ("depth", "means2d") else 1.0
        assert err <= image_tol * scale, f"{key}: max abs diff {err}"
    g_ref64 = None
    for name in GRAD_NAMES:
        a, b = g_out[name], g_ref[name]
        bad = ~torch.isclose(a, b, rtol=rtol, atol=atol)
        if bad.any() and a.dtype == torch.float32:
            if g_ref64 is None:
                _, g_ref64 = run(torch_backend.rasterize, [t.double() for t in scene], K.double(), W, H, bg.double(),
                                 [t.double() for t in w], kernel_size, None if viewmat is None else viewmat.double(),
                                 compensate)
            exact, a64, b64 = g_ref64[name], a.double(), b.double()
            row = exact.abs() if exact.dim() == 1 else exact.norm(dim=1, keepdim=True).expand_as(exact)
            rows = row > 1e-4
            ref_level = ((b64 - exact).abs()[rows] / row[rows]).max() if rows.any() else 0.0
            bad &= ~torch.isclose(a64, exact, rtol=rtol, atol=atol)
            bad &= (a64 - b64).abs() > (b64 - exact).abs()
            bad &= (a64 - exact).abs() > ref_level * row
        assert not bad.any(), (f"{name}: {int(bad.sum())} of {bad.numel()} differ; worst "
                               f"{(a - b).abs().max().item():.3g}, ref max {b.abs().max().item():.3g}")
    return ref, out


@pytest.mark.parametrize("seed,W,H,n,cx,cy", [
    (0, 64, 48, 1500, None, None),
    (1, 61, 37, 800, 25.3, 21.9),   # sizes not multiples of 8, principal point off centre
    (2, 40, 72, 1200, 17.0, 40.5),
])
def test_random_scene_parity_fp32(seed, W, H, n, cx, cy):
    scene = random_scene(n, seed)
    K = camera(W, H, cx=cx, cy=cy)
    bg = torch.tensor([0.1, 0.5, 0.9])
    ref, _ = assert_parity(scene, K, W, H, bg)
    assert (ref["radii"] > 0).sum() > 0.5 * n  # most of the scene is in view


def test_edge_cases_parity_fp32():
    W, H = 53, 43
    scene = edge_scene(seed=3)
    K = camera(W, H, cx=29.0, cy=18.5)
    ref, out = assert_parity(scene, K, W, H, torch.tensor([0.3, 0.2, 0.7]))
    radii = ref["radii"]
    assert (radii[:30] == 0).all()                 # behind the camera / inside the near plane
    assert (radii[30:50] == 0).all()               # off-screen
    assert (radii[50:58] > 0).sum() >= 6           # off-axis beyond the clamp limits, yet visible
    assert (radii[58:61] > max(W, H)).all()        # huge
    assert (radii[61:121] > 0).sum() > 30          # sub-pixel ones survive (radius from the filter)
    # early termination happened: the stack stops pixels with T just above 1e-4
    alpha_max = float(out["alpha"].detach().max())
    assert 1 - 1.1e-4 < alpha_max <= 1 - 1e-4 + 1e-6


def test_edge_cases_and_rotation_parity_fp64():
    """In double precision the two implementations agree to rounding (no float noise to allow for)."""
    W, H = 45, 35
    scene = edge_scene(seed=4, dtype=torch.float64)
    K = camera(W, H, cx=20.2, cy=19.1, dtype=torch.float64)
    # a general camera pose
    a = 0.3
    R = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = torch.tensor([0.4, -0.1, 0.3], dtype=torch.float64)
    assert_parity(scene, K, W, H, torch.tensor([0.3, 0.2, 0.7], dtype=torch.float64), image_tol=1e-12,
                  rtol=1e-9, atol=1e-11, viewmat=viewmat)


def test_no_mip_filter_and_dense_overlap_parity():
    W, H = 32, 24
    scene = random_scene(2000, seed=11, scale=0.08)  # ~20 layers per pixel: termination everywhere
    scene[3] = 0.5 + 0.5 * scene[3]
    assert_parity(scene, camera(W, H), W, H, torch.zeros(3), kernel_size=0.0)


# ---- Inria 3DGS's 2D filter: a 0.3 px^2 dilation without opacity compensation ------------------
@pytest.mark.parametrize("seed,W,H,n,cx,cy", [
    (0, 64, 48, 1500, None, None),
    (1, 61, 37, 800, 25.3, 21.9),
])
def test_inria_filter_random_scene_parity_fp32(seed, W, H, n, cx, cy):
    scene = random_scene(n, seed)
    K = camera(W, H, cx=cx, cy=cy)
    ref, _ = assert_parity(scene, K, W, H, torch.tensor([0.1, 0.5, 0.9]), kernel_size=0.3, compensate=False)
    assert (ref["radii"] > 0).sum() > 0.5 * n


def test_inria_filter_edge_cases_parity_fp32_and_fp64():
    """Sub-pixel splats are where the two filters differ most; the compensation's gradient path to
    the covariance must be off in the C++ backward exactly as autograd has it off in the reference."""
    W, H = 53, 43
    K = camera(W, H, cx=29.0, cy=18.5)
    bg = torch.tensor([0.3, 0.2, 0.7])
    ref, out = assert_parity(edge_scene(seed=3), K, W, H, bg, kernel_size=0.3, compensate=False)
    mip, _ = assert_parity(edge_scene(seed=3), K, W, H, bg, kernel_size=0.1, compensate=True)
    assert float((ref["image"] - mip["image"]).abs().max()) > 0.05  # the conventions really differ
    a = 0.3
    R = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = torch.tensor([0.4, -0.1, 0.3], dtype=torch.float64)
    assert_parity(edge_scene(seed=4, dtype=torch.float64), camera(45, 35, cx=20.2, cy=19.1, dtype=torch.float64),
                  45, 35, bg.double(), kernel_size=0.3, compensate=False, image_tol=1e-12, rtol=1e-9, atol=1e-11,
                  viewmat=viewmat)


def test_inria_filter_keeps_opacity_and_its_gradient_unscaled():
    """Without compensation dL/d(opacity) is the gradient w.r.t. the composited opacity itself: a
    single splat's peak alpha is its opacity times the Gaussian at the pixel, in both backends."""
    W = H = 16
    means = torch.tensor([[0.0, 0.0, 2.0]])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    scales = torch.full((1, 3), 0.004)  # 0.08 px: far below a pixel
    K = torch.tensor([[40.0, 0, 8.0], [0, 40.0, 8.0], [0, 0, 1]])
    for fn in (torch_backend.rasterize, cpu_backend.rasterize):
        opac = torch.tensor([0.6], requires_grad=True)
        out = fn(means, quats, scales, opac, torch.ones(1, 3), torch.eye(4), K, W, H, torch.zeros(3),
                 kernel_size=0.3, compensate=False)
        var = (40.0 * 0.004 / 2.0) ** 2 + 0.3
        peak = 0.6 * math.exp(-0.5 * 2 * 0.5 ** 2 / var)  # pixel (7, 7): centre 0.5 px off on both axes
        assert float(out["alpha"][0, 7, 7]) == pytest.approx(peak, rel=1e-5)
        out["alpha"][0, 7, 7].backward()
        assert float(opac.grad) == pytest.approx(peak / 0.6, rel=1e-5)


def test_an_extension_without_the_flag_is_refused_in_one_line(monkeypatch):
    """A stale build (API 1: no `compensate`) still renders the Mip filter and refuses Inria's."""
    from utils.errors import BackendUnavailableError
    monkeypatch.setattr(cpu_backend, "_C", type("OldBuild", (), {})())
    assert cpu_backend._filter_args(True) == {}
    with pytest.raises(BackendUnavailableError, match="rebuild it"):
        cpu_backend._filter_args(False)


def test_background_gradient_and_no_grad_forward():
    W, H = 24, 16
    scene = random_scene(200, seed=5)
    K = camera(W, H)
    grads = []
    for fn in (torch_backend.rasterize, cpu_backend.rasterize):
        bg = torch.tensor([0.2, 0.4, 0.6], requires_grad=True)
        out = fn(*scene, torch.eye(4), K, W, H, bg)
        (out["image"] * torch.linspace(0, 1, W)).sum().backward()
        grads.append(bg.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        a = cpu_backend.rasterize(*scene, torch.eye(4), K, W, H, torch.zeros(3))["image"]
    b = torch_backend.rasterize(*scene, torch.eye(4), K, W, H, torch.zeros(3))["image"]
    assert (a - b).abs().max() <= 1e-5


def test_empty_and_fully_culled_scenes_render_background():
    bg = torch.tensor([0.25, 0.5, 0.75])
    K = camera(20, 12)
    empty = [torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3)]
    out = cpu_backend.rasterize(*empty, torch.eye(4), K, 20, 12, bg)
    assert torch.equal(out["image"], bg[:, None, None].expand(3, 12, 20))
    scene = random_scene(10, seed=2)
    scene[0][:, 2] = -scene[0][:, 2]  # all behind the camera
    inputs = [t.clone().requires_grad_(True) for t in scene]
    out = cpu_backend.rasterize(*inputs, torch.eye(4), K, 20, 12, bg)
    assert torch.equal(out["image"], bg[:, None, None].expand(3, 12, 20))
    assert (out["radii"] == 0).all() and float(out["alpha"].detach().abs().max()) == 0.0
    out["image"].sum().backward()
    assert all(float(t.grad.abs().max()) == 0.0 for t in inputs)


def test_results_do_not_depend_on_thread_count():
    """Gradients are reduced per Gaussian from a per-pair buffer, not by racing threads: bitwise equal."""
    W, H = 48, 40
    scene = random_scene(1500, seed=9)
    K = camera(W, H)
    w = loss_weights(W, H, 1500, torch.float32)
    before = torch.get_num_threads()
    try:
        results = []
        for nt in (1, max(2, before)):
            torch.set_num_threads(nt)
            results.append(run(cpu_backend.rasterize, scene, K, W, H, torch.zeros(3), w))
    finally:
        torch.set_num_threads(before)
    (o1, g1), (o2, g2) = results
    assert torch.equal(o1["image"], o2["image"])
    assert all(torch.equal(g1[n], g2[n]) for n in GRAD_NAMES)


def test_render_through_registry_matches_torch_backend():
    from scene.cameras import Camera
    from scene.dataset_readers import BasicPointCloud
    from scene.gaussian_model import GaussianModel

    assert backend_status("cpu", "cpu")[0]
    assert _rasterizer("cpu") is cpu_backend.rasterize
    rng = np.random.default_rng(0)
    n = 300
    pcd = BasicPointCloud(points=(rng.normal(size=(n, 3)) * 0.6).astype(np.float32),
                          colors=rng.random((n, 3)).astype(np.float32), normals=np.zeros((n, 3), np.float32))
    gaussians = GaussianModel(3)
    gaussians.create_from_pcd(pcd, spatial_lr_scale=2.0)
    gaussians.filter_3D = torch.full((n, 1), 1e-3)
    w2c = torch.eye(4)
    w2c[2, 3] = 4.0
    cam = Camera(uid=0, image_name="c", world_to_camera=w2c, fx=60.0, fy=60.0, cx=30.5, cy=21.0, width=62, height=44)
    outs = []
    for backend in ("torch", "cpu"):
        for p in gaussians.params.values():
            p.grad = None
        pkg = render(cam, gaussians, None, torch.tensor([0.0, 0.0, 0.0]), backend=backend)
        (pkg["render"] * torch.linspace(-1, 1, 62)).sum().backward()
        outs.append((pkg["render"].detach(), pkg["viewspace_points"].grad[:, :2].clone(),
                     {k: p.grad.clone() for k, p in gaussians.params.items()}))
    (img_t, vs_t, g_t), (img_c, vs_c, g_c) = outs
    assert (img_t - img_c).abs().max() <= 1e-5
    assert torch.allclose(vs_c, vs_t, rtol=1e-3, atol=1e-6)  # densification sees the same signal
    for k in g_t:
        assert torch.allclose(g_c[k], g_t[k], rtol=1e-3, atol=1e-6), k
