"""The pure-PyTorch reference rasterizer: gradients against finite differences (float64), and
properties of the compositing that the 3DGS equations fix."""
import math

import pytest
import torch

from gaussian_renderer.projection import project_gaussians
from gaussian_renderer.torch_backend import rasterize


def small_scene(n=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * torch.tensor([1.0, 0.8, 0.6], dtype=dtype)
    means[:, 2] += 3.0
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = 0.15 + 0.2 * torch.rand(n, 3, generator=g, dtype=dtype)
    opac = 0.3 + 0.5 * torch.rand(n, generator=g, dtype=dtype)
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    viewmat = torch.eye(4, dtype=dtype)
    K = torch.tensor([[20.0, 0, 8.3], [0, 21.0, 7.6], [0, 0, 1]], dtype=dtype)
    return means, quats, scales, opac, colors, viewmat, K


@pytest.mark.parametrize("kernel_size,compensate", [(0.1, True), (0.3, False)])  # Mip-Splatting's, Inria's
def test_gradients_match_finite_differences(kernel_size, compensate):
    means, quats, scales, opac, colors, viewmat, K = small_scene()
    bg = torch.tensor([0.2, 0.3, 0.1], dtype=torch.float64)
    weights = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def f(m, q, s, o, c):
        out = rasterize(m, q, s, o, c, viewmat, K, 16, 16, bg, kernel_size=kernel_size, compensate=compensate)
        return (out["image"] * weights).sum() + 0.1 * (out["depth"] * weights[:1]).sum()

    inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors)]
    # Culling, tile binning and the 1/255 cut are piecewise constant; with these sizes no Gaussian
    # sits on such a boundary, so the function is smooth around the point.
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_means2d_offset_gradient_is_pixel_gradient():
    means, quats, scales, opac, colors, viewmat, K = small_scene(seed=3)
    bg = torch.zeros(3, dtype=torch.float64)
    off = torch.zeros(means.shape[0], 2, dtype=torch.float64, requires_grad=True)
    out = rasterize(means, quats, scales, opac, colors, viewmat, K, 16, 16, bg, means2d_offset=off)
    out["image"].sum().backward()
    # Moving a projected mean by +h pixels must change the loss by grad * h.
    h = 1e-6
    for i in range(means.shape[0]):
        d = torch.zeros_like(off)
        d[i, 0] = h
        up = rasterize(means, quats, scales, opac, colors, viewmat, K, 16, 16, bg, means2d_offset=d)["image"].sum()
        dn = rasterize(means, quats, scales, opac, colors, viewmat, K, 16, 16, bg, means2d_offset=-d)["image"].sum()
        assert float((up - dn) / (2 * h)) == pytest.approx(float(off.grad[i, 0]), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("k,compensate", [(0.1, True), (0.3, False), (0.0, True)])
def test_single_gaussian_matches_closed_form(k, compensate):
    """One isotropic Gaussian facing the camera: pixel value = bg + a(c - bg) with the EWA alpha;
    the 2D filter adds k to the variance and, with compensation, scales the opacity by
    sqrt(det / det') (Mip-Splatting); without it (Inria 3DGS, k = 0.3) the opacity is kept."""
    dtype = torch.float64
    means = torch.tensor([[0.0, 0.0, 2.0]], dtype=dtype)
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=dtype)
    s = 0.05
    scales = torch.full((1, 3), s, dtype=dtype)
    opac = torch.tensor([0.7], dtype=dtype)
    colors = torch.tensor([[1.0, 0.5, 0.0]], dtype=dtype)
    f, W = 40.0, 16
    K = torch.tensor([[f, 0, W / 2], [0, f, W / 2], [0, 0, 1]], dtype=dtype)
    bg = torch.tensor([0.0, 0.0, 1.0], dtype=dtype)
    out = rasterize(means, quats, scales, opac, colors, torch.eye(4, dtype=dtype), K, W, W, bg, kernel_size=k,
                    compensate=compensate)
    var = (f * s / 2.0) ** 2  # image-plane variance of a fronto-parallel Gaussian on the axis
    comp = math.sqrt(var * var / ((var + k) ** 2)) if compensate else 1.0
    for (u, v) in [(8, 8), (9, 7), (6, 10)]:
        dx, dy = u + 0.5 - W / 2, v + 0.5 - W / 2
        a = 0.7 * comp * math.exp(-0.5 * (dx * dx + dy * dy) / (var + k))
        a = a if a >= 1 / 255 else 0.0
        expected = bg + a * (colors[0] - bg)
        assert torch.allclose(out["image"][:, v, u], expected, atol=1e-10)
        assert float(out["alpha"][0, v, u]) == pytest.approx(a, abs=1e-10)
        assert float(out["depth"][0, v, u]) == pytest.approx(2.0 * a, abs=1e-10)


def test_front_to_back_order_and_early_termination():
    """An opaque front Gaussian hides one behind it; T stops at the 1e-4 threshold (3DGS)."""
    dtype = torch.float64
    means = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 2.0]], dtype=dtype)  # red behind, green in front
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=dtype)
    scales = torch.full((2, 3), 2.0, dtype=dtype)
    opac = torch.tensor([1.0, 1.0], dtype=dtype)
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=dtype)
    K = torch.tensor([[10.0, 0, 4], [0, 10.0, 4], [0, 0, 1]], dtype=dtype)
    out = rasterize(means, quats, scales, opac, colors, torch.eye(4, dtype=dtype), K, 8, 8,
                    torch.zeros(3, dtype=dtype), kernel_size=0.0)
    # alpha is clamped to 0.99; after the green one T = 0.01, after red T = 1e-4 exactly is kept
    # only if >= 1e-4: 0.01 * 0.01 = 1e-4 -> kept; colour = 0.99 green + 0.0099 red.
    px = out["image"][:, 4, 4]
    assert float(px[1]) == pytest.approx(0.99, abs=1e-6)
    assert float(px[0]) == pytest.approx(0.0099, abs=1e-6)
    # A third opaque Gaussian further back must not contribute (T would drop below 1e-4).
    means3 = torch.cat([means, torch.tensor([[0.0, 0.0, 4.0]], dtype=dtype)])
    colors3 = torch.cat([colors, torch.tensor([[0, 0, 1.0]], dtype=dtype)])
    out3 = rasterize(means3, torch.cat([quats, quats[:1]]), torch.full((3, 3), 2.0, dtype=dtype),
                     torch.ones(3, dtype=dtype), colors3, torch.eye(4, dtype=dtype), K, 8, 8,
                     torch.zeros(3, dtype=dtype), kernel_size=0.0)
    assert float(out3["image"][2, 4, 4]) == 0.0


def test_culling_behind_camera_and_offscreen():
    means = torch.tensor([[0.0, 0.0, -1.0], [50.0, 0.0, 2.0], [0.0, 0.0, 2.0]])
    quats = torch.tensor([[1.0, 0, 0, 0]] * 3)
    scales = torch.full((3, 3), 0.05)
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]])
    proj = project_gaussians(means, quats, scales, torch.ones(3), torch.eye(4), K, 16, 16)
    assert proj["radii"].tolist()[:2] == [0, 0] and proj["radii"][2] > 0


def test_tiles_do_not_change_the_image():
    """The tiled image equals a direct per-pixel evaluation over all Gaussians sorted by depth."""
    means, quats, scales, opac, colors, viewmat, K = small_scene(n=12, seed=5)
    scales = scales * 0.4
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    W, H = 21, 13  # not multiples of the tile size
    K = torch.tensor([[25.0, 0, 10.0], [0, 25.0, 6.5], [0, 0, 1]], dtype=torch.float64)
    out = rasterize(means, quats, scales, opac, colors, viewmat, K, W, H, bg)
    proj = project_gaussians(means, quats, scales, opac, viewmat, K, W, H)
    order = torch.argsort(proj["depths"])
    img = torch.zeros(3, H, W, dtype=torch.float64)
    for v in range(H):
        for u in range(W):
            T, c = 1.0, torch.zeros(3, dtype=torch.float64)
            for i in order.tolist():
                r = int(proj["radii"][i])
                if r == 0:
                    continue
                m = proj["means2d"][i]
                # same 3-sigma box as the tiles use, but evaluated per pixel's tile
                tx0 = math.floor((float(m[0]) - r - 0.5) / 8)
                tx1 = math.floor((float(m[0]) + r - 0.5) / 8)
                ty0 = math.floor((float(m[1]) - r - 0.5) / 8)
                ty1 = math.floor((float(m[1]) + r - 0.5) / 8)
                if not (tx0 <= u // 8 <= tx1 and ty0 <= v // 8 <= ty1):
                    continue
                dx, dy = float(m[0]) - (u + 0.5), float(m[1]) - (v + 0.5)
                a_, b_, c_ = proj["conics"][i].tolist()
                power = -0.5 * (a_ * dx * dx + c_ * dy * dy) - b_ * dx * dy
                if power > 0:
                    continue
                alpha = min(0.99, float(proj["opacities"][i]) * math.exp(power))
                if alpha < 1 / 255:
                    continue
                if T * (1 - alpha) < 1e-4:
                    break
                c += alpha * T * colors[i]
                T *= 1 - alpha
            img[:, v, u] = c + T * bg
    assert torch.allclose(out["image"], img, atol=1e-12)
