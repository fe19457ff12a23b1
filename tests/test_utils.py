"""Tests for utils/loss_utils.py, utils/sh_utils.py and utils/image_utils.py (fast, seeded, CPU)."""
import math

import cv2
import numpy as np
import pytest
import scipy.ndimage
import scipy.special
import torch
import torch.nn.functional as F

from utils.errors import SceneFormatError
from utils.image_utils import (
    area_downsample,
    area_resize_np,
    load_image,
    mse,
    psnr,
    save_image,
    to_numpy_hwc,
    to_tensor_chw,
)
from utils.loss_utils import l1_loss, photometric_loss, ssim, ssim_skimage_compatible
from utils.sh_utils import C0, RGB2SH, SH2RGB, eval_sh, sh_basis

skimage = pytest.importorskip("skimage")
from skimage.metrics import structural_similarity  # noqa: E402


def _rng(seed=0):
    return np.random.default_rng(seed)


def _astronaut_pairs():
    """(reference, distorted) HWC float64 pairs in [0,1]: noise, blur, shift, random."""
    import skimage.data

    img = skimage.data.astronaut().astype(np.float64) / 255.0
    rng = _rng(1)
    a = img[100:164, 180:260]  # 64x80 crop with a face / detail
    b = img[300:348, 20:60]
    pairs = [
        (a, np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)),
        (a, scipy.ndimage.gaussian_filter(a, sigma=(1.2, 1.2, 0))),
        (b, np.clip(np.roll(b, 1, axis=1) * 0.9 + 0.05, 0, 1)),
        (rng.random((23, 31, 3)), rng.random((23, 31, 3))),
    ]
    return pairs


def _chw(x, dtype=torch.float64):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).to(dtype)


# ----------------------------------------------------------------------------------------- losses


def _ssim_2d_reference(a, b, window_size=11, sigma=1.5, C1=0.01 ** 2, C2=0.03 ** 2):
    """Straightforward Inria-style SSIM: one 2D window, conv2d(padding=ws//2, groups=C)."""
    x = torch.arange(window_size, dtype=a.dtype) - window_size // 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    g = g / g.sum()
    c = a.shape[0]
    w = (g[:, None] @ g[None, :]).expand(c, 1, window_size, window_size)
    a, b = a[None], b[None]
    conv = lambda t: F.conv2d(t, w, padding=window_size // 2, groups=c)  # noqa: E731
    mu1, mu2 = conv(a), conv(b)
    s11 = conv(a * a) - mu1 ** 2
    s22 = conv(b * b) - mu2 ** 2
    s12 = conv(a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + C1) * (2 * s12 + C2)) / ((mu1 ** 2 + mu2 ** 2 + C1) * (s11 + s22 + C2))
    return m.mean()


def test_l1_and_photometric_loss():
    torch.manual_seed(0)
    a, b = torch.rand(3, 16, 16), torch.rand(3, 16, 16)
    assert torch.isclose(l1_loss(a, b), (a - b).abs().mean())
    assert photometric_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    expect = 0.8 * l1_loss(a, b) + 0.2 * (1 - ssim(a, b))
    assert torch.isclose(photometric_loss(a, b), expect)
    assert torch.isclose(photometric_loss(a, b, lambda_dssim=0.0), l1_loss(a, b))


def test_ssim_identity_and_range():
    torch.manual_seed(0)
    x = torch.rand(3, 20, 24)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim_skimage_compatible(x, x).item() == pytest.approx(1.0, abs=1e-6)
    y = torch.rand(3, 20, 24)
    assert -1.0 <= ssim(x, y).item() < 0.5


def test_ssim_matches_2d_window_reference_and_batches():
    torch.manual_seed(1)
    a = torch.rand(3, 17, 29, dtype=torch.float64)
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    assert ssim(a, b).item() == pytest.approx(_ssim_2d_reference(a, b).item(), abs=1e-12)
    # tiny image, smaller than the window
    s = torch.rand(3, 5, 6, dtype=torch.float64)
    t = torch.rand(3, 5, 6, dtype=torch.float64)
    assert ssim(s, t).item() == pytest.approx(_ssim_2d_reference(s, t).item(), abs=1e-12)
    # batch = mean over images (same size)
    c = torch.rand(3, 17, 29, dtype=torch.float64)
    batch = ssim(torch.stack([a, c]), torch.stack([b, b]))
    assert batch.item() == pytest.approx(0.5 * (ssim(a, b) + ssim(c, b)).item(), abs=1e-12)
    # float32 path agrees with float64
    assert ssim(a.float(), b.float()).item() == pytest.approx(ssim(a, b).item(), abs=1e-5)


def test_ssim_gradcheck():
    torch.manual_seed(2)
    a = torch.rand(1, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    b = torch.rand(1, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: ssim(x, y), (a, b), eps=1e-6, atol=1e-6)
    c = torch.rand(2, 13, 12, dtype=torch.float64, requires_grad=True)
    d = torch.rand(2, 13, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: ssim_skimage_compatible(x, y), (c, d), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda x, y: photometric_loss(x, y), (a, b), eps=1e-6, atol=1e-6)


def test_ssim_skimage_parity():
    pairs = _astronaut_pairs()
    assert len(pairs) >= 3
    for ref, dist in pairs:
        expect = structural_similarity(
            ref, dist, channel_axis=-1, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0,
        )
        for dtype in (torch.float64, torch.float32):
            got = ssim_skimage_compatible(_chw(ref, dtype), _chw(dist, dtype)).item()
            assert abs(got - expect) <= 1e-4, (got, expect, dtype)
        assert abs(ssim_skimage_compatible(_chw(ref), _chw(dist)).item() - expect) <= 1e-10
    # batched: one value per image
    ref, dist = pairs[0]
    two = ssim_skimage_compatible(torch.stack([_chw(ref)] * 2), torch.stack([_chw(dist), _chw(ref)]))
    assert two.shape == (2,)
    assert two[1].item() == pytest.approx(1.0, abs=1e-9)


def test_ssim_errors():
    with pytest.raises(ValueError):
        ssim(torch.rand(3, 8, 8), torch.rand(3, 8, 9))
    with pytest.raises(ValueError):
        ssim_skimage_compatible(torch.rand(3, 10, 20), torch.rand(3, 10, 20))  # smaller than 11x11


# --------------------------------------------------------------------------------------------- SH


def _sphere_quadrature(n_theta=12, n_phi=24):
    """Gauss-Legendre in cos(theta) x uniform in phi: exact for polynomials of degree <= 2*n_theta-1."""
    u, wu = np.polynomial.legendre.leggauss(n_theta)
    phi = (np.arange(n_phi) + 0.5) * (2 * np.pi / n_phi)
    U, P = np.meshgrid(u, phi, indexing="ij")
    W = np.repeat(wu[:, None], n_phi, axis=1) * (2 * np.pi / n_phi)
    s = np.sqrt(1 - U * U)
    dirs = np.stack([s * np.cos(P), s * np.sin(P), U], axis=-1).reshape(-1, 3)
    theta = np.arccos(U).reshape(-1)
    return dirs, theta, P.reshape(-1), W.reshape(-1)


def _real_sh_scipy(l, m, theta, phi, condon_shortley=True):
    """Real SH from scipy's complex ones (scipy includes the Condon-Shortley phase (-1)^m)."""
    y = scipy.special.sph_harm_y(l, abs(m), theta, phi)
    sign = 1.0 if condon_shortley else (-1.0) ** m
    if m < 0:
        return sign * math.sqrt(2) * y.imag
    if m == 0:
        return y.real
    return sign * math.sqrt(2) * y.real


def test_sh_basis_matches_scipy_real_sh():
    dirs, theta, phi, _ = _sphere_quadrature()
    basis = sh_basis(3, torch.from_numpy(dirs)).numpy()
    assert basis.shape == (dirs.shape[0], 16)
    for l in range(4):
        for m in range(-l, l + 1):
            k = l * l + l + m
            # 3DGS basis == real SH keeping the Condon-Shortley phase ...
            np.testing.assert_allclose(basis[:, k], _real_sh_scipy(l, m, theta, phi), atol=1e-12)
            # ... i.e. (-1)^m times the textbook real SH without it.
            np.testing.assert_allclose(
                basis[:, k], (-1.0) ** m * _real_sh_scipy(l, m, theta, phi, condon_shortley=False), atol=1e-12
            )


def test_sh_orthonormal_on_sphere():
    dirs, _, _, w = _sphere_quadrature()
    B = sh_basis(3, torch.from_numpy(dirs)).numpy()
    gram = (B * w[:, None]).T @ B
    np.testing.assert_allclose(gram, np.eye(16), atol=1e-12)
    assert w.sum() == pytest.approx(4 * np.pi)


def test_eval_sh_degree0_constant_and_layout():
    torch.manual_seed(3)
    n = 50
    dirs = F.normalize(torch.randn(n, 3, dtype=torch.float64), dim=-1)
    sh = torch.randn(n, 16, 3, dtype=torch.float64)
    out0 = eval_sh(0, sh, dirs)
    assert out0.shape == (n, 3)
    torch.testing.assert_close(out0, C0 * sh[:, 0, :])
    other = F.normalize(torch.randn(n, 3, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(eval_sh(0, sh, other), out0)
    # eval_sh = basis . coefficients, per colour channel, for every degree
    for deg in range(4):
        k = (deg + 1) ** 2
        expect = torch.einsum("nk,nkc->nc", sh_basis(deg, dirs), sh[:, :k])
        torch.testing.assert_close(eval_sh(deg, sh, dirs), expect)
        torch.testing.assert_close(eval_sh(deg, sh[:, :k].contiguous(), dirs), expect)
    with pytest.raises(ValueError):
        eval_sh(3, sh[:, :9], dirs)
    # broadcasting over leading dims
    dirs_b = F.normalize(torch.randn(4, n, 3, dtype=torch.float64), dim=-1)
    assert eval_sh(3, sh.expand(4, n, 16, 3), dirs_b).shape == (4, n, 3)
    # degree 1 explicitly: (-C1 y, C1 z, -C1 x)
    d = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    c = torch.zeros(1, 4, 3, dtype=torch.float64)
    c[0, 2, :] = 1.0
    torch.testing.assert_close(eval_sh(1, c, d), torch.full((1, 3), 0.4886025119029199, dtype=torch.float64))


def test_eval_sh_gradcheck_and_rgb_roundtrip():
    torch.manual_seed(4)
    sh = torch.randn(5, 16, 3, dtype=torch.float64, requires_grad=True)
    dirs = F.normalize(torch.randn(5, 3, dtype=torch.float64), dim=-1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, d: eval_sh(3, s, d), (sh, dirs))
    rgb = torch.rand(10, 3)
    torch.testing.assert_close(SH2RGB(RGB2SH(rgb)), rgb)
    sh0 = RGB2SH(rgb)[:, None, :]
    torch.testing.assert_close(eval_sh(0, sh0, torch.randn(10, 3)) + 0.5, rgb)


# ------------------------------------------------------------------------------------------ image


def test_psnr_and_mse():
    a = torch.full((3, 8, 8), 0.5)
    b = a + 0.1
    assert mse(a, b).item() == pytest.approx(0.01, rel=1e-5)
    assert psnr(a, b).item() == pytest.approx(20.0, abs=1e-4)
    assert psnr(a * 255, b * 255, data_range=255.0).item() == pytest.approx(20.0, abs=1e-4)
    batch = psnr(torch.stack([a, a]), torch.stack([b, a + 0.01]))
    assert batch.shape == (2,)
    assert batch[0].item() == pytest.approx(20.0, abs=1e-4)
    assert batch[1].item() == pytest.approx(40.0, abs=1e-3)
    assert math.isinf(psnr(a, a).item())


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 8])
def test_area_downsample_matches_reshape_mean_and_cv2(factor):
    torch.manual_seed(5)
    h, w = 24, 48
    img = torch.rand(3, h, w)
    down = area_downsample(img, factor)
    ref = img.reshape(3, h // factor, factor, w // factor, factor).mean(dim=(2, 4))
    torch.testing.assert_close(down, ref, atol=1e-6, rtol=0)
    hwc = to_numpy_hwc(img)
    cv = cv2.resize(hwc, (w // factor, h // factor), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(to_numpy_hwc(down), cv, atol=1e-6)
    np.testing.assert_allclose(area_resize_np(hwc, w // factor, h // factor), cv, atol=0)
    # batched
    b = area_downsample(torch.stack([img, img * 0.5]), factor)
    torch.testing.assert_close(b[1], down * 0.5)


def test_area_downsample_errors_and_grad():
    with pytest.raises(ValueError):
        area_downsample(torch.rand(3, 10, 12), 4)
    with pytest.raises(ValueError):
        area_downsample(torch.rand(3, 8, 8), 0)
    x = torch.rand(3, 8, 8, requires_grad=True)
    area_downsample(x, 4).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 1 / 16))


def test_area_resize_np_arbitrary_and_single_channel():
    rng = _rng(6)
    img = rng.random((30, 41, 3)).astype(np.float32)
    out = area_resize_np(img, 17, 11)
    assert out.shape == (11, 17, 3) and out.dtype == np.float32
    assert abs(out.mean() - img.mean()) < 0.02
    gray = area_resize_np(rng.random((30, 40, 1)), 10, 15)
    assert gray.shape == (15, 10, 1)


def test_png_roundtrip_exact(tmp_path):
    rng = _rng(7)
    u8 = rng.integers(0, 256, size=(13, 17, 3), dtype=np.uint8)
    f = u8.astype(np.float32) / 255.0
    p = tmp_path / "a.png"
    save_image(p, f)
    back = load_image(p)
    assert back.dtype == np.float32 and back.shape == (13, 17, 3)
    np.testing.assert_array_equal(np.round(back * 255).astype(np.uint8), u8)
    np.testing.assert_array_equal(back, f)
    # torch [3,H,W] input, rounding to nearest and clipping
    t = to_tensor_chw(f)
    assert t.shape == (3, 13, 17) and t.dtype == torch.float32
    q = tmp_path / "sub" / "b.png"
    save_image(q, t)
    np.testing.assert_array_equal(load_image(q), f)
    odd = torch.tensor([[[0.4 / 255, 0.6 / 255, 1.7, -0.2]]]).expand(3, 1, 4)
    save_image(q, odd)
    np.testing.assert_array_equal(np.round(load_image(q)[0, :, 0] * 255), [0, 1, 255, 0])
    # RGBA stays 4 channels
    rgba = rng.integers(0, 256, size=(5, 6, 4), dtype=np.uint8).astype(np.float32) / 255
    save_image(tmp_path / "c.png", rgba)
    np.testing.assert_array_equal(load_image(tmp_path / "c.png"), rgba)
    # no temp files left behind
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.png", "c.png", "sub"]


def test_load_image_errors(tmp_path):
    with pytest.raises(SceneFormatError):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(SceneFormatError):
        load_image(bad)


def test_layout_conversions():
    rng = _rng(8)
    hwc = rng.random((4, 5, 3)).astype(np.float32)
    t = to_tensor_chw(hwc)
    assert t.shape == (3, 4, 5)
    np.testing.assert_array_equal(to_numpy_hwc(t), hwc)
    assert to_numpy_hwc(t.requires_grad_(True) * 1).dtype == np.float32
    u8 = (hwc * 255).astype(np.uint8)
    torch.testing.assert_close(to_tensor_chw(u8), torch.from_numpy(u8.transpose(2, 0, 1).astype(np.float32) / 255))
