"""Device canary for sr/: every SR adapter loaded and run with torch's default device set to `meta`.

With everything explicitly on the CPU, a tensor or network made without an explicit device (a
`torch.zeros(n)`, a scheduler table, a model built on the default device) lands on `meta` and fails
loudly: on CPU, this catches the bugs that would put tensors on the wrong device on CUDA. Each adapter
(tiny sd-x4-upscaler, tiny pixel prior, tiny StableSR-Turbo from tests/fixtures/stablesr-tiny) is loaded
through load_sr_model and taken through timesteps, init_cond_noise / init_latents (ViewLatents.create),
predict, decode, encode and a stochastic step with CPU generators, plus the ViewLatents state round trip;
outputs must be finite and on the CPU."""
import os

import pytest
import torch

pytest.importorskip("diffusers")

from sr import ViewLatents, load_sr_model  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "stablesr-tiny")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny model folders, written before the canary is set."""
    import numpy as np

    from sr.stablesr.testing import save_tiny_weights
    from sr.testing import save_tiny_pixel_prior, save_tiny_x4_upscaler
    tmp = tmp_path_factory.mktemp("sr_device")
    with np.load(os.path.join(FIXTURE, "arrays.npz")) as f:
        context = torch.from_numpy(f["context"])
    return {"sd-x4": save_tiny_x4_upscaler(str(tmp / "x4")),
            "prior": save_tiny_pixel_prior(str(tmp / "prior")),
            "stablesr": save_tiny_weights(str(tmp / "stablesr"), os.path.join(FIXTURE, "manifest.json"),
                                          context=context),
            "stablesr-no-context": save_tiny_weights(str(tmp / "stablesr-nc"), os.path.join(FIXTURE, "manifest.json"))}


def _on_cpu_and_finite(*tensors):
    for t in tensors:
        assert t.device.type == "cpu", t.device
        assert torch.isfinite(t).all()


def _run(sr, lr, steps=4):
    """One 3DSR step and the state round trip; returns what it made."""
    g = torch.Generator().manual_seed(0)  # a CPU generator, as the loop's
    ts = sr.timesteps(steps)
    assert ts.device.type == "cpu"
    state = ViewLatents.create(sr, lr, steps, g, view_names=[f"v{i}" for i in range(lr.shape[0])])
    t, t_prev = state.current()
    x0, eps = sr.predict(state.latents, t, lr, state.cond_noise)
    hr = sr.decode(x0, lr)
    z = sr.encode(hr, lr)
    x = sr.step(z, eps, t, t_prev, 1.0, generator=g)  # eta 1: draws noise from the generator
    state.advance(x)
    payload = state.state_dict(g)
    back = ViewLatents.from_state_dict(payload, "cpu", torch.Generator())
    assert back.step == 1 and torch.equal(back.latents, state.latents)
    t, t_prev = back.current()
    x0_next, _ = sr.predict(back.latents, t, lr, back.cond_noise)
    _on_cpu_and_finite(state.latents, x0, eps, hr, z, x, back.latents, x0_next)
    if state.cond_noise is not None:
        _on_cpu_and_finite(state.cond_noise, back.cond_noise)
    assert hr.shape[-2:] == (lr.shape[-2] * sr.scale, lr.shape[-1] * sr.scale)
    assert 0.0 <= float(hr.min()) and float(hr.max()) <= 1.0
    return {"x0": x0, "hr": hr, "z": z, "x": x}


def _lr(views=2, h=12, w=16):
    return torch.rand(views, 3, h, w, generator=torch.Generator().manual_seed(1), device="cpu")


def test_canary_catches_a_deviceless_tensor(meta_default_device):
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.ones(3, device="cpu") + torch.zeros(3)


@pytest.mark.parametrize("opts", [{}, {"prompt": "a cat", "guidance_scale": 2.0, "vae_tiling": True, "sr_batch": 2}])
def test_sd_x4_upscaler(folders, meta_default_device, opts):
    sr = load_sr_model(folders["sd-x4"], "cpu", **opts)
    assert all(p.device.type == "cpu" for p in list(sr.unet.parameters()) + list(sr.vae.parameters()))
    _on_cpu_and_finite(sr.alphas_cumprod, sr.prompt_embeds, sr.low_res_scheduler.alphas_cumprod)
    _run(sr, _lr())


def test_pixel_prior(folders, meta_default_device):
    sr = load_sr_model(folders["prior"], "cpu", sr_batch=2)
    assert all(p.device.type == "cpu" for p in sr.net.parameters())
    _on_cpu_and_finite(sr.alphas_cumprod)
    _run(sr, _lr(views=3, h=9, w=11))  # padded to the UNet's multiple


@pytest.mark.parametrize("opts", [{}, {"vae_tile": 64, "vae_tile_overlap": 32, "sr_batch": 2}])
def test_stablesr_turbo(folders, meta_default_device, opts):
    sr = load_sr_model("stablesr-turbo", "cpu", sr_weights=folders["stablesr"], tile_size=8, tile_overlap=4, **opts)
    assert all(t.device.type == "cpu" for t in list(sr.model.parameters()) + list(sr.model.buffers()))
    s = sr.model.schedule
    _on_cpu_and_finite(sr.alphas_cumprod, s.alphas_cumprod_1000, s.posterior_mean_coef1, s.ori_timesteps)
    lr = _lr(views=3, h=24, w=20)  # latent 16x16: tiled denoiser (tiles of 8)
    out = _run(sr, lr)
    # the published 3DSR update (fresh LR-latent draws, stale x_T, DDPM posterior)
    g = torch.Generator().manual_seed(2)
    shape = sr.latent_shape(tuple(lr.shape))
    n = lambda: torch.randn(shape, generator=g, device=g.device)  # noqa: E731  (as the loop draws them)
    x_T = sr.start_latents(lr, n(), n())
    x0, _ = sr.predict(x_T, 999, lr, n())
    x = sr.published_update(sr.decode(x0, lr), x_T, 999, n(), n())
    _on_cpu_and_finite(x_T, x0, x, out["x"])


def test_stablesr_empty_prompt_embedding_from_a_text_encoder(folders, meta_default_device, tmp_path):
    """--text_encoder: the CLIP text model is loaded and run on the CPU explicitly under the canary."""
    pytest.importorskip("transformers")
    with torch.device("cpu"):  # the test's own tiny SD-2 style text encoder (23 layers)
        from transformers import CLIPTextConfig, CLIPTextModel

        from sr.testing import tiny_clip_text
        tokenizer, _ = tiny_clip_text(32)
        encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=23,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
        encoder.save_pretrained(str(tmp_path / "sd21" / "text_encoder"))
        tokenizer.save_pretrained(str(tmp_path / "sd21" / "tokenizer"))
    sr = load_sr_model("stablesr-turbo", "cpu", sr_weights=folders["stablesr-no-context"],
                       text_encoder=str(tmp_path / "sd21"), tile_size=8, tile_overlap=4)
    assert sr.model.context.device.type == "cpu" and sr.model.context.abs().sum() > 0
    _on_cpu_and_finite(sr.model.context)
