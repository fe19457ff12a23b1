"""The `gsplat` backend. Parity with the reference needs CUDA and gsplat (skipped otherwise); the
wiring that does not (lazy import, the pixel-gradient tap) is checked on CPU with a stand-in gsplat
built from the reference itself."""
import importlib.util
import sys
import types

import pytest
import torch

from gaussian_renderer import gsplat_backend, torch_backend
from gaussian_renderer.projection import project_gaussians

needs_gsplat = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("gsplat") is None,
    reason="gsplat backend needs a CUDA GPU and the gsplat package")


def scene(n=400, W=64, H=48, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    z = 2.0 + 3.0 * torch.rand(n, generator=g)
    xy = (torch.rand(n, 2, generator=g) - 0.5) * 1.2 * z[:, None]
    means = torch.cat([xy, z[:, None]], 1)
    quats = torch.randn(n, 4, generator=g)
    scales = 0.03 * torch.exp(0.5 * torch.randn(n, 3, generator=g))
    opac = 0.1 + 0.8 * torch.rand(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    K = torch.tensor([[0.9 * W, 0, W / 2 + 0.7], [0, 0.9 * W, H / 2 - 1.1], [0, 0, 1.0]])
    return [t.to(device) for t in (means, quats, scales, opac, colors)], K.to(device)


def render_with_grads(fn, tensors, K, W, H, bg, kernel_size=0.1, compensate=True):
    inputs = [t.clone().requires_grad_(True) for t in tensors]
    offset = torch.zeros(tensors[0].shape[0], 2, device=tensors[0].device, requires_grad=True)
    out = fn(*inputs, torch.eye(4, device=K.device), K, W, H, bg, kernel_size=kernel_size, means2d_offset=offset,
             compensate=compensate)
    w = torch.linspace(-1, 1, W, device=K.device)
    ((out["image"] * w).sum() + 0.1 * (out["depth"] * w).sum() + (out["alpha"] * w).sum()).backward()
    return out, [t.grad for t in inputs], offset.grad


def fake_gsplat():
    """A stand-in for `gsplat` with rasterization()'s calling convention, computed by the reference.

    Like gsplat, it hands out meta["means2d"], the very [C, N, 2] tensor its rasterizer consumes: the
    reference is called with an offset equal to that tensor minus a second projection, so the
    rasterizer's dL/d(means2d) flows through meta["means2d"] and on to the means. Like gsplat, both
    modes add eps2d to the 2D covariance and only "antialiased" compensates the opacity.
    """
    def rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, eps2d,
                      sh_degree, packed, absgrad, rasterize_mode, render_mode, backgrounds):
        assert rasterize_mode in ("antialiased", "classic") and render_mode == "RGB+D" and sh_degree is None
        assert not packed
        compensate = rasterize_mode == "antialiased"
        proj = project_gaussians(means, quats, scales, opacities, viewmats[0], Ks[0], width, height, eps2d, compensate)
        means2d = proj["means2d"][None]
        out = torch_backend.rasterize(means, quats, scales, opacities, colors, viewmats[0], Ks[0], width, height,
                                      backgrounds[0], kernel_size=eps2d,
                                      means2d_offset=means2d[0] - proj["means2d"], compensate=compensate)
        rgbd = torch.cat([out["image"], out["depth"]]).permute(1, 2, 0)[None]
        radii = torch.stack([out["radii"], out["radii"]], -1)[None]  # gsplat >= 1.5: per-axis radii
        return rgbd, out["alpha"].permute(1, 2, 0)[None], {"means2d": means2d, "radii": radii}
    return types.SimpleNamespace(rasterization=rasterization)


def test_importing_the_backend_does_not_import_gsplat():
    if "gsplat" in sys.modules:
        pytest.skip("gsplat already imported by another test")
    import gaussian_renderer.gsplat_backend  # noqa: F401
    assert "gsplat" not in sys.modules


def test_refuses_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tensors, K = scene(n=5)
    with pytest.raises(RuntimeError, match="CUDA"):
        gsplat_backend.rasterize(*tensors, torch.eye(4), K, 64, 48, torch.zeros(3))


@pytest.mark.parametrize("kernel_size,compensate", [(0.1, True), (0.3, False)])  # Mip-Splatting's, Inria's
def test_offset_gradient_is_the_pixel_gradient_of_means2d(monkeypatch, kernel_size, compensate):
    """Through the tap, means2d_offset.grad is gsplat's dL/d(means2d) in pixels, i.e. exactly what the
    reference reports; the other gradients are untouched by the tap. The 2D filter maps onto gsplat's
    modes: compensated -> "antialiased", uncompensated -> "classic" (both with eps2d = kernel_size)."""
    monkeypatch.setitem(sys.modules, "gsplat", fake_gsplat())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    tensors, K = scene()
    bg = torch.tensor([0.2, 0.1, 0.4])
    ref, g_ref, off_ref = render_with_grads(torch_backend.rasterize, tensors, K, 64, 48, bg, kernel_size, compensate)
    out, g_out, off_out = render_with_grads(gsplat_backend.rasterize, tensors, K, 64, 48, bg, kernel_size, compensate)
    for key in ("image", "depth", "alpha", "means2d"):
        assert torch.allclose(out[key], ref[key], atol=1e-5), key
    assert torch.equal(out["radii"], ref["radii"]) and out["radii"].shape == ref["radii"].shape
    assert float(off_ref.abs().max()) > 0
    assert torch.allclose(off_out, off_ref, rtol=1e-4, atol=1e-6)
    for a, b in zip(g_out, g_ref):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@needs_gsplat
@pytest.mark.parametrize("kernel_size,compensate", [(0.1, True), (0.3, False)])  # Mip-Splatting's, Inria's
def test_gsplat_matches_reference_on_cuda(kernel_size, compensate):
    """gsplat bins with opacity-aware radii and 16-pixel tiles where the reference cuts at 3-sigma
    boxes on 8-pixel tiles, so splat fringes (alpha around 1/255 .. 0.01) differ: compare closely on
    average and loosely per pixel; the screen-space gradient must agree in direction and scale."""
    W, H = 64, 48
    tensors, K = scene(n=600, W=W, H=H, device="cuda")
    bg = torch.tensor([0.2, 0.1, 0.4], device="cuda")
    out, g_out, off_out = render_with_grads(gsplat_backend.rasterize, tensors, K, W, H, bg, kernel_size, compensate)
    cpu = [t.cpu() for t in tensors]
    ref, g_ref, off_ref = render_with_grads(torch_backend.rasterize, cpu, K.cpu(), W, H, bg.cpu(), kernel_size,
                                            compensate)
    diff = (out["image"].detach().cpu() - ref["image"].detach()).abs()
    assert diff.mean() < 2e-3 and diff.max() < 0.05
    assert (out["alpha"].detach().cpu() - ref["alpha"].detach()).abs().mean() < 2e-3
    visible = (out["radii"].cpu() > 0) & (ref["radii"] > 0)
    a, b = off_out.cpu()[visible].flatten(), off_ref[visible].flatten()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0)
    assert cos > 0.98 and 0.9 < float(a.norm() / b.norm()) < 1.1
    for ga, gb in zip(g_out, g_ref):
        assert torch.nn.functional.cosine_similarity(ga.cpu().flatten(), gb.flatten(), dim=0) > 0.95


# ---- backend status: gsplat counts only when its compiled extension loads -------------------------
def stub_gsplat(monkeypatch, extension):
    """`gsplat` whose gsplat.cuda._backend._C is `extension` (None: installed without kernels)."""
    import gaussian_renderer as gr
    pkg, cuda, backend = (types.ModuleType(n) for n in ("gsplat", "gsplat.cuda", "gsplat.cuda._backend"))
    backend._C = extension
    pkg.cuda, cuda._backend = cuda, backend
    for name, mod in (("gsplat", pkg), ("gsplat.cuda", cuda), ("gsplat.cuda._backend", backend)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gr, "_gsplat_status", None)
    monkeypatch.setattr(gr, "_resolved", {})
    monkeypatch.setattr(gr, "_gsplat_needs_build", lambda: False)
    return gr


def test_gsplat_without_its_extension_is_unavailable_in_one_line(monkeypatch):
    gr = stub_gsplat(monkeypatch, extension=None)
    ok, why = gr.backend_status("gsplat", "cuda")
    assert not ok and "extension did not load" in why and "\n" not in why
    from utils.errors import BackendUnavailableError
    with pytest.raises(BackendUnavailableError, match="backend 'gsplat' is unavailable") as err:
        gr.resolve_backend("gsplat", "cuda")
    assert "\n" not in str(err.value)


def test_gsplat_with_its_extension_is_chosen_by_auto_on_cuda(monkeypatch):
    gr = stub_gsplat(monkeypatch, extension=object())
    assert gr.backend_status("gsplat", "cuda") == (True, "gsplat CUDA kernels")
    assert gr.resolve_backend("auto", "cuda") == "gsplat"
    # a model on the CPU of the same machine renders with a CPU backend
    assert gr.resolve_backend("auto", "cpu") in ("cpu", "torch")
    assert not gr.backend_status("gsplat", "cpu")[0]


def test_auto_on_cuda_without_gsplat_warns_with_the_install_command(monkeypatch):
    import gaussian_renderer as gr
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gr, "_gsplat_status", None)
    monkeypatch.setattr(gr, "_resolved", {})
    monkeypatch.setattr(gr, "_module_present", lambda name: False)
    with pytest.warns(UserWarning, match="pip install gsplat"):
        assert gr.resolve_backend("auto", "cuda") == "torch"
    assert not gr.backend_status("cpu", "cuda")[0]  # the C++ extension renders CPU tensors only


def test_a_gsplat_build_is_announced_before_it_starts(monkeypatch, capsys):
    gr = stub_gsplat(monkeypatch, extension=object())
    monkeypatch.setattr(gr, "_gsplat_needs_build", lambda: True)
    seen = []
    real_import = gr.importlib.import_module
    monkeypatch.setattr(gr.importlib, "import_module",
                        lambda name: (seen.append(capsys.readouterr().out), real_import(name))[1])
    assert gr.backend_status("gsplat", "cuda")[0]
    assert "building gsplat CUDA kernels" in seen[0]
