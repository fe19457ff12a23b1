"""NIQE, the "completely blind" image quality analyser (Mittal, Soundararajan & Bovik 2013). Lower is better.

Conventions (those of the MATLAB release and of basicsr's `calculate_niqe`, which papers use):
  * input: an 8-bit RGB image ([H,W,3] uint8 values, or floats in [0,1] that are rounded to 8 bits first);
  * luma: the Y channel of MATLAB's `rgb2ycbcr` (ITU-R BT.601 studio swing,
    Y = 16 + (65.481 R + 128.553 G + 24.966 B) with R,G,B in [0,1]), computed in float32 exactly as basicsr
    does, scaled to [0,255] and rounded to integers;
  * crop_border 0; the image is cropped to whole 96x96 patches (top-left kept), no patch overlap;
  * precision: the MSCN stage (luma, local mean / deviation, normalisation) is float32, the resize, the
    features and the MVG are float64. basicsr computes the MSCN stage in float32 too, and it matters: in
    flat regions the MSCN coefficients are rounding noise whose signs drive the AGGD fit, so NIQE moves by
    up to ~0.035 between a float32 and a float64 MSCN stage (skimage's astronaut). We follow basicsr, the
    implementation papers use, and match it to < 0.001 on photographs (tests/test_metrics.py);
  * MSCN coefficients with the 7x7 Gaussian window of the pristine model (sigma 7/6), `nearest` borders,
    (I - mu) / (sigma + 1);
  * per patch 18 features (AGGD fit of the MSCN coefficients and of their products with the horizontal,
    vertical and two diagonal neighbours, neighbours taken with a circular shift inside the patch; shape
    found on the grid 0.2:0.001:10), at two scales: the second scale is MATLAB's
    `imresize(I, 0.5)` (bicubic, antialiased) with 48x48 patches;
  * the test MVG: nan-mean of the patch features and the covariance of the patches without NaNs;
    NIQE = sqrt((mu_p - mu_d) pinv((C_p + C_d) / 2) (mu_p - mu_d)^T), with the MATLAB pristine parameters
    (`niqe_pris_params`, fetched from the basicsr 1.4.2 sdist by tools/fetch_metric_weights.py).
At least two 96x96 patches are needed (e.g. 96x192); smaller images are `MetricUnavailable`.
"""
import math
import os

import numpy as np
import scipy.ndimage
from scipy.special import gamma

from evaluation import MetricUnavailable, load_safetensors_numpy, metric_cache_dir

__all__ = ["niqe", "rgb_to_y_matlab", "imresize_matlab", "load_niqe_params", "PATCH"]

PATCH = 96
_GAM = np.arange(0.2, 10.001, 0.001)
_R_GAM = gamma(2.0 / _GAM) ** 2 / (gamma(1.0 / _GAM) * gamma(3.0 / _GAM))
_PARAMS = {}


def load_niqe_params(cache=None):
    path = os.path.join(cache or metric_cache_dir(), "niqe_pris_params.safetensors")
    if path not in _PARAMS:
        p = load_safetensors_numpy(path, "NIQE pristine parameters")
        _PARAMS[path] = {k: p[k].astype(np.float64) for k in ("mu_pris_param", "cov_pris_param", "gaussian_window")}
    return _PARAMS[path]


def rgb_to_y_matlab(rgb_uint8):
    """Y of MATLAB's rgb2ycbcr in [0,255] (float32, not rounded), computed in basicsr's float32 order."""
    x = np.asarray(rgb_uint8).astype(np.float32) / np.float32(255.0)
    y = np.dot(x[..., ::-1], [24.966, 128.553, 65.481]) + 16.0  # (B, G, R) order and float64, like basicsr
    return (y / 255.0).astype(np.float32) * np.float32(255.0)


def _cubic(x):
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def _resize_matrix(n_in, scale):
    """[n_out, n_in] matrix of MATLAB's bicubic imresize along one axis (antialiased when shrinking)."""
    n_out = int(math.ceil(n_in * scale))
    width = 4.0 / scale if scale < 1 else 4.0
    x = np.arange(1, n_out + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)  # output pixel centre in input coordinates (1-based)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    w = scale * _cubic((u[:, None] - idx) * scale) if scale < 1 else _cubic(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    # symmetric (mirror, edge repeated) boundary, 1-based -> 0-based
    j = idx - 1
    period = 2 * n_in
    j = np.mod(j, period)
    j = np.where(j >= n_in, period - 1 - j, j).astype(np.int64)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.repeat(np.arange(n_out), taps), j.ravel()), w.ravel())
    return m


def imresize_matlab(img, scale):
    """MATLAB `imresize(img, scale)` (bicubic, antialiasing) of a 2D float image, in float64."""
    img = np.asarray(img, dtype=np.float64)
    rows = _resize_matrix(img.shape[0], scale)
    cols = _resize_matrix(img.shape[1], scale)
    return rows @ img @ cols.T


def _aggd(blocks):
    """AGGD fit per block: blocks [N, h, w] -> (alpha, beta_l, beta_r), each [N] (NaN where undefined)."""
    x = blocks.reshape(blocks.shape[0], -1)
    neg, pos = x < 0, x > 0
    sq = x * x
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt((sq * neg).sum(1) / neg.sum(1))
        right = np.sqrt((sq * pos).sum(1) / pos.sum(1))
        gammahat = left / right
        rhat = np.abs(x).mean(1) ** 2 / sq.mean(1)
        rhatnorm = rhat * (gammahat ** 3 + 1) * (gammahat + 1) / (gammahat ** 2 + 1) ** 2
        # argmin over the grid; a NaN rhatnorm picks the first grid value, as numpy's argmin does
        alpha = _GAM[np.argmin((_R_GAM[None, :] - rhatnorm[:, None]) ** 2, axis=1)]
        ratio = np.sqrt(gamma(1.0 / alpha) / gamma(3.0 / alpha))
    return alpha, left * ratio, right * ratio


def _features(blocks):
    """[N, h, w] MSCN blocks -> [N, 18] NIQE features."""
    alpha, bl, br = _aggd(blocks)
    feats = [alpha, (bl + br) / 2.0]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        prod = blocks * np.roll(blocks, shift, axis=(1, 2))
        a, l, r = _aggd(prod)
        mean = (r - l) * (gamma(2.0 / a) / gamma(1.0 / a))
        feats += [a, mean, l, r]
    return np.stack(feats, axis=1)


def _blocks(img, bh, bw, nh, nw):
    return img[: nh * bh, : nw * bw].reshape(nh, bh, nw, bw).transpose(0, 2, 1, 3).reshape(nh * nw, bh, bw)


def niqe_y(y, params):
    """NIQE of a luma image y (float, [0,255], already rounded) with the given pristine parameters."""
    y = np.asarray(y, dtype=np.float32)
    h, w = y.shape
    nh, nw = h // PATCH, w // PATCH
    if nh * nw < 2:
        raise MetricUnavailable(f"NIQE needs at least two {PATCH}x{PATCH} patches, the image is {w}x{h}")
    img = np.ascontiguousarray(y[: nh * PATCH, : nw * PATCH])
    window = params["gaussian_window"]
    dist = []
    for scale in (1, 2):
        # float32 in, float32 out (scipy keeps the input dtype), as in basicsr: see the module docstring
        mu = scipy.ndimage.convolve(img, window, mode="nearest")
        sigma = np.sqrt(np.abs(scipy.ndimage.convolve(img * img, window, mode="nearest") - mu * mu))
        mscn = ((img - mu) / (sigma + np.float32(1.0))).astype(np.float64)
        dist.append(_features(_blocks(mscn, PATCH // scale, PATCH // scale, nh, nw)))
        if scale == 1:
            img = imresize_matlab(img.astype(np.float64) / 255.0, 0.5).astype(np.float32) * np.float32(255.0)
    dist = np.concatenate(dist, axis=1)
    with np.errstate(invalid="ignore"):
        mu_d = np.nanmean(dist, axis=0)
    clean = dist[~np.isnan(dist).any(axis=1)]
    if clean.shape[0] < 2 or np.isnan(mu_d).any():
        raise MetricUnavailable("NIQE is undefined for this image (too few textured patches)")
    cov_d = np.cov(clean, rowvar=False)
    diff = params["mu_pris_param"].reshape(-1) - mu_d
    q = diff @ np.linalg.pinv((params["cov_pris_param"] + cov_d) / 2.0) @ diff
    return float(np.sqrt(q))


def niqe(img, params=None):
    """NIQE of an RGB image: uint8 [H,W,3], or floats in [0,1] ([H,W,3] or torch [3,H,W]).

    Float inputs are quantised to 8 bits (round(x*255)) first, the way they are saved as PNG.
    """
    if hasattr(img, "detach"):  # torch tensor [3,H,W]
        img = img.detach().cpu().permute(1, 2, 0).numpy()
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"NIQE expects an RGB image [H,W,3], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if params is None:
        params = load_niqe_params()
    y = np.round(rgb_to_y_matlab(arr))
    return niqe_y(y, params)
