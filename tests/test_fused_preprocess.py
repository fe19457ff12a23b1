"""The cpu backend's fused per-Gaussian preprocessing (SH colours, activations with the 3D filter) against
the PyTorch reference it replaces: values and gradients, float64 and float32, every SH degree."""
import numpy as np
import pytest
import torch

pytest.importorskip("threedsr_cpu_rasterizer", reason="C++ extension not built (bash scripts/setup.sh)")

from gaussian_renderer import cpu_backend, gaussian_colors, render  # noqa: E402
from utils.sh_utils import eval_sh  # noqa: E402

if not cpu_backend.preprocess_available():
    pytest.skip("the installed C++ extension predates the fused preprocessing; rebuild it", allow_module_level=True)


def reference_colors(xyz, f_dc, f_rest, center, deg):
    """gaussian_colors written out on raw tensors (the same operations)."""
    dirs = xyz - center.to(xyz)
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sh = torch.cat([f_dc, f_rest], dim=1)[:, : (deg + 1) ** 2]
    return torch.clamp_min(eval_sh(deg, sh, dirs) + 0.5, 0.0)


def reference_activations(log_scales, quats, opacity_logits, filter_3d):
    """GaussianModel.get_scaling_with_3D_filter / get_opacity_with_3D_filter / get_rotation on raw tensors."""
    s2 = torch.exp(log_scales).square()
    scales = torch.sqrt(s2 + filter_3d.square())
    coef = torch.sqrt(s2.prod(dim=1, keepdim=True) / (s2 + filter_3d.square()).prod(dim=1, keepdim=True))
    return scales, (torch.sigmoid(opacity_logits) * coef).squeeze(-1), torch.nn.functional.normalize(quats, dim=-1)


def sh_inputs(n, dtype, seed, k=16):
    g = torch.Generator(device="cpu").manual_seed(seed)
    xyz = torch.randn(n, 3, generator=g, dtype=dtype, device="cpu")
    f_dc = torch.randn(n, 1, 3, generator=g, dtype=dtype, device="cpu") * 2.0
    f_rest = torch.randn(n, k - 1, 3, generator=g, dtype=dtype, device="cpu") * 0.4
    center = torch.randn(3, generator=g, dtype=dtype, device="cpu")
    xyz[0] = center  # a Gaussian at the camera centre: the direction's clamp
    return [t.requires_grad_(True) for t in (xyz, f_dc, f_rest)] + [center]


def values_and_grads(fn, inputs, weights):
    for t in inputs:
        t.grad = None
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    sum((o * w).sum() for o, w in zip(outs, weights)).backward()
    return [o.detach() for o in outs], [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in inputs]


def assert_close(a, b, rtol):
    scale = max(b.abs().max().item(), 1e-30)
    assert (a - b).abs().max().item() <= rtol * scale, ((a - b).abs().max().item(), scale)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("deg", [0, 1, 2, 3])
def test_sh_colors_match_reference_values_and_gradients(deg, dtype, rtol):
    xyz, f_dc, f_rest, center = sh_inputs(400, dtype, seed=deg)
    w = torch.randn(400, 3, dtype=dtype, device="cpu")
    (ref,), ref_grads = values_and_grads(lambda a, b, c: reference_colors(a, b, c, center, deg), [xyz, f_dc, f_rest], [w])
    (got,), got_grads = values_and_grads(lambda a, b, c: cpu_backend.sh_colors(a, b, c, center, deg),
                                         [xyz, f_dc, f_rest], [w])
    assert (ref == 0).any() and (ref > 0).any()  # some colours are clamped
    assert torch.equal(got == 0, ref == 0)
    assert_close(got, ref, rtol)
    for a, b in zip(got_grads, ref_grads):
        assert_close(a, b, rtol)
    assert not got_grads[2][:, (deg + 1) ** 2 - 1:].any()  # coefficients above the degree: zero, not missing
    if deg == 0:
        assert xyz.grad is None  # the constant basis does not depend on the direction


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_activations_match_reference_values_and_gradients(dtype, rtol):
    g = torch.Generator(device="cpu").manual_seed(7)
    n = 500
    log_scales = (torch.randn(n, 3, generator=g, dtype=dtype, device="cpu") - 3.0).requires_grad_(True)
    quats = torch.randn(n, 4, generator=g, dtype=dtype, device="cpu").requires_grad_(True)
    logits = torch.randn(n, 1, generator=g, dtype=dtype, device="cpu").mul(2.0).requires_grad_(True)
    filter_3d = torch.rand(n, 1, generator=g, dtype=dtype, device="cpu") * 0.1
    filter_3d[:50] = 0.0  # no filter: plain activations
    weights = [torch.randn(n, 3, dtype=dtype, device="cpu"), torch.randn(n, dtype=dtype, device="cpu"),
               torch.randn(n, 4, dtype=dtype, device="cpu")]
    ref, ref_grads = values_and_grads(lambda a, b, c: reference_activations(a, b, c, filter_3d),
                                      [log_scales, quats, logits], weights)
    got, got_grads = values_and_grads(lambda a, b, c: cpu_backend.activations(a, b, c, filter_3d),
                                      [log_scales, quats, logits], weights)
    for a, b in zip(got + got_grads, ref + ref_grads):
        assert a.shape == b.shape
        assert_close(a, b, rtol)


def test_gradcheck_on_tiny_inputs():
    for deg in range(4):
        xyz, f_dc, f_rest, center = sh_inputs(5, torch.float64, seed=10 + deg)
        with torch.no_grad():
            xyz[0] += 0.3  # off the centre: gradcheck's finite differences need a smooth point
            f_dc += 1.0  # away from the clamp's kink
        assert torch.autograd.gradcheck(lambda a, b, c: cpu_backend.sh_colors(a, b, c, center, deg),
                                        (xyz, f_dc, f_rest))
    g = torch.Generator(device="cpu").manual_seed(3)
    inputs = (torch.randn(6, 3, generator=g, dtype=torch.float64, device="cpu").requires_grad_(True),
              torch.randn(6, 4, generator=g, dtype=torch.float64, device="cpu").requires_grad_(True),
              torch.randn(6, 1, generator=g, dtype=torch.float64, device="cpu").requires_grad_(True))
    filter_3d = torch.rand(6, 1, generator=g, dtype=torch.float64, device="cpu")
    assert torch.autograd.gradcheck(lambda a, b, c: cpu_backend.activations(a, b, c, filter_3d), inputs)


def tiny_model_and_camera(n=300, seed=0):
    from scene.cameras import Camera
    from scene.dataset_readers import BasicPointCloud
    from scene.gaussian_model import GaussianModel
    rng = np.random.default_rng(seed)
    pcd = BasicPointCloud(points=(rng.normal(size=(n, 3)) * 0.6).astype(np.float32),
                          colors=rng.random((n, 3)).astype(np.float32), normals=np.zeros((n, 3), np.float32))
    gaussians = GaussianModel(3)
    gaussians.create_from_pcd(pcd, spatial_lr_scale=2.0)
    with torch.no_grad():
        gaussians.params["f_rest"].normal_(0.0, 0.3)  # view-dependent colour, some of it clamped
        gaussians.params["scaling"].add_(torch.randn(n, 3, device="cpu") * 0.5)  # anisotropic: rotations matter
    gaussians.active_sh_degree = 3
    gaussians.filter_3D = torch.rand(n, 1, device="cpu") * 0.02
    w2c = torch.eye(4, device="cpu")
    w2c[2, 3] = 4.0
    cam = Camera(uid=0, image_name="c", world_to_camera=w2c, fx=60.0, fy=60.0, cx=30.5, cy=21.0, width=62, height=44)
    return gaussians, cam


@pytest.mark.parametrize("with_override", [False, True])
def test_render_uses_fused_path_on_cpu_and_matches_torch_preprocessing(with_override, monkeypatch):
    """render() with the cpu backend: the fused preprocessing against the PyTorch properties, same rasterizer."""
    import gaussian_renderer
    gaussians, cam = tiny_model_and_camera()
    bg = torch.tensor([0.1, 0.2, 0.3], device="cpu")
    override = torch.rand(gaussians.num_points, 3, device="cpu") if with_override else None
    outs = []
    for fused in (False, True):
        if not fused:
            monkeypatch.setattr(gaussian_renderer, "_fused_preprocess", lambda name, g: None)
        else:
            monkeypatch.undo()
            calls = []
            real = cpu_backend.activations
            monkeypatch.setattr(cpu_backend, "activations", lambda *a: calls.append(1) or real(*a))
        for p in gaussians.params.values():
            p.grad = None
        pkg = render(cam, gaussians, None, bg, backend="cpu")
        (pkg["render"] * torch.linspace(-1, 1, 62, device="cpu")).sum().backward()
        outs.append((pkg["render"].detach(), {k: p.grad for k, p in gaussians.params.items()}))
    assert calls  # the fused path ran
    (img_t, g_t), (img_c, g_c) = outs
    assert (img_t - img_c).abs().max() <= 1e-6
    for k in g_t:
        if g_t[k] is None:  # colours overridden: the SH coefficients take no part, on either path
            assert with_override and k in ("f_dc", "f_rest") and g_c[k] is None, k
        else:
            assert_close(g_c[k], g_t[k], 1e-6)  # float32 rounding of the sums, relative to the largest
    if with_override:
        assert gaussian_colors(cam, gaussians, override) is override
