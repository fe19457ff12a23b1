"""Tests for sr/: loading (tiny random models of the real diffusers classes, saved as pipeline folders and
loaded through load_sr_model), the DiffusionSR interface of the sd-x4-upscaler adapter, equivalence
with diffusers' StableDiffusionUpscalePipeline, chunking, determinism, errors and ViewLatents resume."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("diffusers")

from sr import ViewLatents, load_sr_model, timestep_pairs  # noqa: E402
from sr.testing import save_tiny_x4_upscaler  # noqa: E402
from utils.errors import ModelNotFoundError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUB_ID = "stabilityai/stable-diffusion-x4-upscaler"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny x4-upscaler pipeline folder with a tiny CLIP text encoder + tokenizer (if transformers is here)."""
    return save_tiny_x4_upscaler(str(tmp_path_factory.mktemp("sr") / "tiny-x4"), seed=0)


@pytest.fixture(scope="module")
def sr(tiny_folder):
    return load_sr_model(tiny_folder, "cpu", torch.float32)


def _lr(views=2, h=12, w=16, seed=5):
    return torch.rand(views, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _sample(sr, lr, num_steps=4, seed=0, eta=0.0, replace=None):
    """The 3DSR loop's sampling skeleton; `replace(x0) -> z` stands in for render + encode."""
    g = torch.Generator().manual_seed(seed)
    state = ViewLatents.create(sr, lr, num_steps, g)
    while not state.done:
        t, t_prev = state.current()
        x0, eps = sr.predict(state.latents, t, lr, state.cond_noise)
        z = replace(x0) if replace is not None else x0
        state.advance(sr.step(z, eps, t, t_prev, eta, generator=g))
    return state


# ---- interface -------------------------------------------------------------------------------------

def test_interface_shapes_dtypes_and_ranges(sr):
    assert sr.scale == 4 and sr.prediction_type == "v_prediction"
    assert sr.device == torch.device("cpu") and sr.dtype == torch.float32
    lr = _lr()
    g = torch.Generator().manual_seed(0)
    cond = sr.init_cond_noise(lr, g)
    x = sr.init_latents(lr, g)
    assert cond.shape == (2, 3, 12, 16) and x.shape == (2, 4, 12, 16) and x.dtype == torch.float32
    x0, eps = sr.predict(x, 999, lr, cond)
    assert x0.shape == eps.shape == x.shape and x0.dtype == eps.dtype == torch.float32
    assert torch.isfinite(x0).all() and torch.isfinite(eps).all()
    hr = sr.decode(x0)
    assert hr.shape == (2, 3, 48, 64) and hr.dtype == torch.float32
    assert hr.min() >= 0.0 and hr.max() <= 1.0
    z = sr.encode(hr)
    assert z.shape == x.shape and z.dtype == torch.float32
    assert torch.equal(z, sr.encode(hr)), "encode must be deterministic (posterior mean)"
    assert sr.alpha_bar(-1) == pytest.approx(float(sr.alphas_cumprod[0]))  # set_alpha_to_one=False config
    with pytest.raises(ValueError, match="cond_noise"):
        sr.predict(x, 999, lr)
    with pytest.raises(ValueError, match="outside"):
        sr.predict(x, 1000, lr, cond)


def test_fp16_keeps_the_vae_in_fp32_and_returns_fp32(sr, tiny_folder):
    """The CUDA default (fp16), exercised on CPU: UNet in fp16, VAE upcast (force_upcast), fp32 out."""
    half = load_sr_model(tiny_folder, "cpu", torch.float16)
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32
    lr = _lr()
    g = torch.Generator().manual_seed(0)
    cond, x = half.init_cond_noise(lr, g), half.init_latents(lr, g)
    x0_half, eps_half = half.predict(x, 749, lr, cond)
    x0, eps = sr.predict(x, 749, lr, cond)
    assert x0_half.dtype == torch.float32
    torch.testing.assert_close(x0_half, x0, atol=2e-2, rtol=2e-2)
    assert half.decode(x0_half).dtype == torch.float32


def test_timesteps_spacing(sr, tiny_folder):
    assert sr.timesteps(4).tolist() == [999, 749, 499, 249]  # default "trailing"
    assert sr.timesteps(4, "leading").tolist() == [751, 501, 251, 1]  # the released config's, steps_offset 1
    leading = load_sr_model(tiny_folder, "cpu", timestep_spacing="leading")
    assert leading.timesteps(4).tolist() == [751, 501, 251, 1]
    with pytest.raises(ValueError, match="spacing"):
        load_sr_model(tiny_folder, "cpu", timestep_spacing="uniform")


def test_chunking_matches_one_batch(sr):
    lr = _lr(views=3)
    g = torch.Generator().manual_seed(1)
    cond, x = sr.init_cond_noise(lr, g), sr.init_latents(lr, g)
    results = {}
    for batch in (1, 2, 3):
        sr.sr_batch = batch
        x0, eps = sr.predict(x, 499, lr, cond)
        hr = sr.decode(x0)
        results[batch] = (x0, eps, hr, sr.encode(hr))
    sr.sr_batch = 1
    for batch in (2, 3):
        for a, b in zip(results[1], results[batch]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_seeded_sampling_is_deterministic(sr):
    lr = _lr()
    a = _sample(sr, lr, eta=1.0, seed=3).latents
    b = _sample(sr, lr, eta=1.0, seed=3).latents
    c = _sample(sr, lr, eta=1.0, seed=4).latents
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_views_get_their_own_latents(sr):
    lr = _lr(views=3)
    state = ViewLatents.create(sr, lr, 4, torch.Generator().manual_seed(0))
    assert state.latents.shape[0] == 3 and not torch.allclose(state.latents[0], state.latents[1])
    assert not torch.allclose(state.cond_noise[0], state.cond_noise[1])


def test_end_to_end_tiny_4_steps_2_views(tiny_folder):
    t0 = time.perf_counter()
    sr = load_sr_model(tiny_folder, "cpu", torch.float32)
    t_load = time.perf_counter() - t0
    lr = _lr(views=2, h=12, w=16)  # 16x12 LR -> 64x48 HR
    t0 = time.perf_counter()
    state = _sample(sr, lr, num_steps=4, eta=1.0, replace=lambda x0: sr.encode(sr.decode(x0)))
    hr = sr.decode(state.latents)
    t_run = time.perf_counter() - t0
    print(f"\ntiny sd-x4-upscaler: load {t_load:.2f} s, 4 steps x 2 views (predict+decode+encode+step) "
          f"+ final decode {t_run:.2f} s")
    assert state.step == 4 and hr.shape == (2, 3, 48, 64)
    assert torch.isfinite(hr).all() and hr.min() >= 0 and hr.max() <= 1
    assert t_run < 30


# ---- equivalence with diffusers' pipeline --------------------------------------------------------

@pytest.mark.parametrize("prompt,guidance_scale,steps", [("", 1.0, 4), ("a red brick wall", 3.0, 2)])
def test_matches_diffusers_upscale_pipeline(tiny_folder, prompt, guidance_scale, steps):
    """Leading spacing, eta 0, same seed: our components + DDIM step reproduce the pipeline's images."""
    transformers = pytest.importorskip("transformers")  # noqa: F841  (the pipeline's prompt encoding)
    from diffusers import StableDiffusionUpscalePipeline

    sr = load_sr_model(tiny_folder, "cpu", torch.float32, prompt=prompt, guidance_scale=guidance_scale,
                       timestep_spacing="leading")
    lr = _lr()
    ours = sr.decode(_sample(sr, lr, num_steps=steps, seed=0).latents).permute(0, 2, 3, 1)
    pipe = StableDiffusionUpscalePipeline.from_pretrained(tiny_folder)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(prompt=[prompt] * 2, image=lr, num_inference_steps=steps, guidance_scale=guidance_scale,
               noise_level=20, generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(ours, ref.permute(0, 2, 3, 1).float(), atol=1e-4, rtol=1e-4)


# ---- prompt / text encoder -------------------------------------------------------------------------

def test_no_text_encoder_uses_zero_embedding_and_says_so(tmp_path, capsys):
    folder = save_tiny_x4_upscaler(str(tmp_path / "no-text"), with_text_encoder=False)
    capsys.readouterr()
    sr = load_sr_model(folder, "cpu")
    assert "zero prompt embedding" in capsys.readouterr().out
    assert sr.prompt_embeds.shape == (1, 77, 32) and not sr.prompt_embeds.any()
    with pytest.raises(ModelNotFoundError, match="text encoder"):
        load_sr_model(folder, "cpu", prompt="a cat")


def test_prompt_changes_the_embedding(tiny_folder):
    pytest.importorskip("transformers")
    empty = load_sr_model(tiny_folder, "cpu")
    cat = load_sr_model(tiny_folder, "cpu", prompt="a cat")
    assert empty.prompt_embeds.shape == cat.prompt_embeds.shape == (1, 77, 32)
    assert not torch.allclose(empty.prompt_embeds, cat.prompt_embeds)


def test_vae_tiling_option(tmp_path):
    folder = save_tiny_x4_upscaler(str(tmp_path / "tiled"), with_text_encoder=False, vae_sample_size=32)
    sr = load_sr_model(folder, "cpu", vae_tiling=True)  # tiles of 32 px: a 48x64 image is tiled
    hr = sr.decode(torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(0)))
    assert hr.shape == (1, 3, 48, 64) and hr.min() >= 0 and hr.max() <= 1
    assert sr.encode(hr).shape == (1, 4, 12, 16)


# ---- errors ----------------------------------------------------------------------------------------

def _one_line_error(call):
    with pytest.raises(ModelNotFoundError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_unknown_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    msg = _one_line_error(lambda: load_sr_model("stable-sr-turbo", "cpu"))
    assert "stable-sr-turbo" in msg and "sd-x4-upscaler" in msg


def test_missing_folder(tmp_path):
    missing = str(tmp_path / "models" / "nope")
    msg = _one_line_error(lambda: load_sr_model(missing, "cpu"))
    assert missing in msg and "does not exist" in msg


def test_hub_id_not_in_cache_says_how_to_get_it(tmp_path):
    for name in ("sd-x4-upscaler", HUB_ID):
        msg = _one_line_error(lambda: load_sr_model(name, "cpu", cache_dir=str(tmp_path)))
        assert HUB_ID in msg and f"hf download {HUB_ID}" in msg


def test_not_a_pipeline_folder(tmp_path, tiny_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "model_index.json" in _one_line_error(lambda: load_sr_model(str(empty), "cpu"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert "StableDiffusionPipeline" in _one_line_error(lambda: load_sr_model(str(other), "cpu"))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    shutil.rmtree(broken / "vae")
    assert "vae" in _one_line_error(lambda: load_sr_model(str(broken), "cpu"))


def test_diffusers_missing(tiny_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    assert "pip install diffusers" in _one_line_error(lambda: load_sr_model(tiny_folder, "cpu"))


def test_unknown_option(tiny_folder):
    with pytest.raises(ValueError, match="unknown option"):
        load_sr_model(tiny_folder, "cpu", guidence_scale=2.0)


def test_cli_boundary_prints_one_line(tmp_path):
    """What a user sees: one line on stderr and exit code 2, no traceback."""
    code = ("from utils.system_utils import run_cli; from sr import load_sr_model; "
            f"run_cli(lambda argv: load_sr_model('sd-x4-upscaler', 'cpu', cache_dir={str(tmp_path)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr


def test_hub_id_found_in_local_cache(tmp_path, tiny_folder):
    """A hub id (or its short name) resolves to its snapshot in the HF cache, loaded by the same code."""
    repo = tmp_path / ("models--" + HUB_ID.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(tiny_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    sr = load_sr_model("sd-x4-upscaler", "cpu", cache_dir=str(tmp_path))
    assert sr.name == "sd-x4-upscaler" and sr.scale == 4


# ---- ViewLatents: save / load / resume -------------------------------------------------------------

def test_view_latents_resume_equals_uninterrupted(sr, tmp_path):
    lr = _lr()
    full = _sample(sr, lr, num_steps=4, eta=1.0, seed=7).latents

    g = torch.Generator().manual_seed(7)
    state = ViewLatents.create(sr, lr, 4, g, view_names=["a.png", "b.png"])
    for _ in range(2):
        t, t_prev = state.current()
        x0, eps = sr.predict(state.latents, t, lr, state.cond_noise)
        state.advance(sr.step(x0, eps, t, t_prev, 1.0, generator=g))
    path = tmp_path / "sr" / "latents.pt"
    state.save(path, generator=g, extra={"loss": 0.5})

    g2 = torch.Generator().manual_seed(12345)  # a fresh process would not know the state
    resumed = ViewLatents.load(path, generator=g2)
    assert resumed.step == 2 and resumed.view_names == ["a.png", "b.png"] and resumed.extra == {"loss": 0.5}
    assert resumed.model_name == sr.name and torch.equal(resumed.timesteps, state.timesteps)
    for t, t_prev in timestep_pairs(resumed.timesteps)[resumed.step:]:
        x0, eps = sr.predict(resumed.latents, t, lr, resumed.cond_noise)
        resumed.advance(sr.step(x0, eps, t, t_prev, 1.0, generator=g2))
    assert resumed.done and torch.equal(resumed.latents, full)
    with pytest.raises(IndexError):
        resumed.current()


def test_view_latents_bad_files(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no SR latent checkpoint"):
        ViewLatents.load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelNotFoundError, match="cannot read"):
        ViewLatents.load(junk)
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ModelNotFoundError, match="not an SR latent checkpoint"):
        ViewLatents.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="view names"):
        ViewLatents(latents=torch.zeros(2, 4, 3, 3), timesteps=torch.tensor([1]), view_names=["a"])
