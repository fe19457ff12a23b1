"""The fused C++ SSIM (submodules/cpu_rasterizer/csrc/ssim.cpp) against the PyTorch reference
utils.loss_utils._ssim_map: values, gradients, finite differences, and when `ssim` dispatches to it."""
import pytest
import torch

pytest.importorskip("threedsr_cpu_rasterizer", reason="C++ extension not built (bash scripts/setup.sh)")

from utils import loss_utils  # noqa: E402
from utils.loss_utils import gaussian_kernel_1d, photometric_loss, ssim  # noqa: E402

EXT = loss_utils._fused_ssim_ext()
if EXT is None:
    pytest.skip("the installed C++ extension has no fused SSIM; rebuild it (bash scripts/setup.sh)",
                allow_module_level=True)

C1, C2 = 0.01 ** 2, 0.03 ** 2
# [C,H,W] and [B,C,H,W]; odd sizes, sizes below the 11-pixel window, a single pixel, one channel
SHAPES = [(3, 47, 63), (3, 36, 48), (3, 5, 7), (3, 11, 11), (3, 1, 1), (3, 13, 4), (1, 20, 9), (2, 3, 17, 30)]


def images(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g, dtype=dtype)
    # the target is a noisy copy (correlated, like a render against its ground truth) with a flat patch
    b = (a + 0.2 * torch.randn(shape, generator=g, dtype=dtype)).clamp(0, 1)
    b[..., : shape[-2] // 2, : shape[-1] // 3] = 0.25
    return a, b


def reference(a, b, valid=False):
    x, y, _ = loss_utils._as_batch(a, b)
    return loss_utils._ssim_map(x, y, 11, 1.5, C1, C2, valid=valid).mean()


def is_fused(out):
    return type(out.grad_fn).__name__ == "_FusedSSIMBackward"


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(shape):
    a, b = images(shape, seed=sum(shape))
    with torch.no_grad():
        fused, ref = ssim(a, b), reference(a, b)
    assert fused.shape == ref.shape == () and fused.dtype == torch.float32
    assert abs(float(fused) - float(ref)) <= 1e-5


@pytest.mark.parametrize("shape", SHAPES)
def test_gradient_matches_reference_autograd(shape):
    a, b = images(shape, seed=7 + sum(shape))
    a.requires_grad_(True)
    out = ssim(a, b)
    assert is_fused(out)
    (g_fused,) = torch.autograd.grad(3.0 * out, a)  # an upstream gradient other than 1
    (g_ref,) = torch.autograd.grad(3.0 * reference(a, b), a)
    torch.testing.assert_close(g_fused, g_ref, rtol=1e-4, atol=1e-5 * float(g_ref.abs().max()))


@pytest.mark.parametrize("shape", [(3, 36, 48), (2, 3, 9, 14)])
def test_photometric_loss_matches_reference(shape):
    """photometric_loss takes its L1 term from the same C++ pass; ties x == y have gradient 0 as in torch."""
    a, b = images(shape, seed=3)
    b[..., ::5, :] = a[..., ::5, :]
    a.requires_grad_(True)
    loss = photometric_loss(a, b, 0.2)
    ref = 0.8 * (a - b).abs().mean() + 0.2 * (1.0 - reference(a, b))
    assert abs(float(loss) - float(ref)) <= 1e-5
    (g_fused,) = torch.autograd.grad(loss, a)
    (g_ref,) = torch.autograd.grad(ref, a)
    torch.testing.assert_close(g_fused, g_ref, rtol=1e-4, atol=1e-5 * float(g_ref.abs().max()))


def test_l1_output_alone():
    a, b = images((3, 10, 12), seed=8)
    a.requires_grad_(True)
    _, l1 = loss_utils._fused_ssim_l1(a, b, 11, 1.5, C1, C2)
    assert abs(float(l1) - float((a - b).abs().mean())) <= 1e-6
    (g,) = torch.autograd.grad(2.0 * l1, a)
    torch.testing.assert_close(g, 2.0 * torch.sign(a - b) / a.numel())


@pytest.mark.parametrize("shape", [(3, 12, 16), (1, 7, 5)])
def test_directional_finite_difference_float32(shape):
    a, b = images(shape, seed=11)
    a = a.clamp(0.05, 0.95).requires_grad_(True)  # keep a +-eps step inside [0, 1]
    (grad,) = torch.autograd.grad(ssim(a, b), a)
    d = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    eps = 1e-2
    with torch.no_grad():
        fd = (float(ssim(a + eps * d, b)) - float(ssim(a - eps * d, b))) / (2 * eps)
    assert fd == pytest.approx(float((grad * d).sum()), rel=2e-2, abs=1e-5)


@pytest.mark.parametrize("valid", [False, True])
def test_extension_float64_finite_difference_and_valid_map(valid):
    """The raw op in float64 (the Python dispatch uses float32 only): its gradient against central
    differences, and its 'valid' mode (ssim_skimage_compatible's border) against the reference."""
    a, b = images((2, 2, 14, 13), seed=2, dtype=torch.float64)
    kernel = gaussian_kernel_1d(11, 1.5, torch.float64)
    mean, coef, _ = EXT.ssim_forward(a, b, kernel, C1, C2, valid, 1)
    assert float(mean) == pytest.approx(float(reference(a, b, valid=valid)), abs=1e-12)
    grad = EXT.ssim_backward(a, b, kernel, coef, valid, 1.0 / coef[0].numel(), 0.0, 2)
    a_ref = a.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(reference(a_ref, b, valid=valid), a_ref)
    torch.testing.assert_close(grad, g_ref, rtol=1e-9, atol=1e-12)
    # mean SSIM + 0.5 * mean |a - b| against central differences
    grad = EXT.ssim_backward(a, b, kernel, coef, valid, 1.0 / coef[0].numel(), 0.5 / a.numel(), 2)
    d = torch.randn(a.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps = 1e-6

    def f(x):
        mean, _, l1 = EXT.ssim_forward(x, b, kernel, C1, C2, valid, 1)
        return float(mean) + 0.5 * float(l1)

    assert (f(a + eps * d) - f(a - eps * d)) / (2 * eps) == pytest.approx(float((grad * d).sum()), rel=1e-6)


def test_thread_counts_agree():
    a, b = images((1, 3, 40, 33), seed=4)
    kernel = gaussian_kernel_1d(11, 1.5)
    outs = [EXT.ssim_forward(a, b, kernel, C1, C2, False, nt) for nt in (1, 2, 3)]
    grads = [EXT.ssim_backward(a, b, kernel, out[1], False, 1e-3, 1e-4, nt) for nt, out in zip((1, 2, 3), outs)]
    for (mean, coef, l1), g in zip(outs[1:], grads[1:]):
        assert float(mean) == pytest.approx(float(outs[0][0]), abs=1e-6)
        assert float(l1) == pytest.approx(float(outs[0][2]), abs=1e-6)
        assert torch.equal(coef, outs[0][1]) and torch.equal(g, grads[0])


def test_non_contiguous_inputs():
    a, b = images((3, 21, 19), seed=9)
    a_t = a.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)  # same values, other strides
    out = ssim(a_t, b)
    assert is_fused(out) and abs(float(out) - float(reference(a, b))) <= 1e-5
    out.backward()
    assert a_t.grad.shape == a.shape


# ---- dispatch: everything the C++ op does not cover takes the reference path ----

def test_dispatch_float64_and_both_requiring_grad_use_reference():
    a, b = images((3, 16, 16), seed=1, dtype=torch.float64)
    a.requires_grad_(True)
    out = ssim(a, b)
    assert not is_fused(out) and out.dtype == torch.float64
    a32, b32 = a.detach().float().requires_grad_(True), b.float().requires_grad_(True)
    out = ssim(a32, b32)
    assert not is_fused(out)
    out.backward()
    assert b32.grad is not None and a32.grad is not None
    with torch.no_grad():  # no gradient anywhere: the fused op is fine even with b.requires_grad
        assert abs(float(ssim(a32, b32)) - float(reference(a32, b32))) <= 1e-5


def test_dispatch_meta_and_cuda_use_reference():
    a = torch.empty(3, 16, 16, device="meta", requires_grad=True)
    out = ssim(a, torch.empty(3, 16, 16, device="meta"))
    assert out.device.type == "meta" and not is_fused(out)
    assert not loss_utils._use_fused_ssim(torch.empty(1, 3, 4, 4, device="meta"), torch.empty(1, 3, 4, 4), 11)
    if torch.cuda.is_available():
        x, y = images((3, 16, 16), seed=0)
        out = ssim(x.cuda().requires_grad_(True), y.cuda())
        assert not is_fused(out) and abs(float(out) - float(reference(x, y))) <= 1e-5


def test_dispatch_without_extension_uses_reference(monkeypatch):
    monkeypatch.setattr(loss_utils, "_FUSED", [None])
    a, b = images((3, 16, 16), seed=6)
    out = ssim(a.requires_grad_(True), b)
    assert not is_fused(out) and abs(float(out) - float(reference(a, b))) <= 1e-6
