"""Prior v2 (sr/pixel_prior.py with an image-SR base): the base plumbing through decode/encode, its
once-per-view cache, training crops aligned with the precomputed bases, the evaluation's Real-ESRGAN row,
and a 3DSR run with such a prior killed and resumed. Tiny random Real-ESRGAN weights, written by the tests
into a private cache (THREEDSR_CACHE)."""
import os

import numpy as np
import pytest
import torch

from sr import load_sr_model
from sr.testing import save_tiny_pixel_prior, save_tiny_realesrgan
from utils.errors import ModelNotFoundError, ThreeDSRError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
ISR = "realesrgan-x4plus"


@pytest.fixture
def isr_cache(tmp_path, monkeypatch):
    """A cache whose `realesrgan-x4plus` is a tiny random RRDBNet; returns the weights path."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("THREEDSR_CACHE", str(cache))
    return save_tiny_realesrgan(str(cache / "isr" / "realesrgan-x4plus.safetensors"))


@pytest.fixture
def v2_folder(isr_cache, tmp_path):
    return save_tiny_pixel_prior(str(tmp_path / "v2"), base=ISR)


class CountingISR:
    """Wraps an ImageSR and counts the images it upscales."""

    def __init__(self, isr):
        self.isr, self.calls, self.name, self.scale = isr, 0, isr.name, isr.scale

    def upscale(self, images):
        self.calls += images.shape[0]
        return self.isr.upscale(images)


def _lr(views=3, h=8, w=12, seed=0):
    return torch.rand(views, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_base_is_the_isr_output_computed_once_per_view(isr_cache):
    from sr.image_sr import load_isr_model
    from sr.pixel_prior import BaseImages, store_base
    isr = CountingISR(load_isr_model(isr_cache, "cpu"))
    bases = BaseImages(4, isr)
    lr = _lr()
    first = bases(lr)
    assert isr.calls == 3 and first.shape == (3, 3, 32, 48) and first.dtype == torch.float32
    # other batchings and orders of the same views hit the cache
    again = torch.cat([bases(lr[2:]), bases(lr[:2].flip(0))])
    assert isr.calls == 3
    assert torch.equal(again, first[[2, 1, 0]])
    expected = store_base(isr.isr.upscale(lr[1:2])).float()
    assert torch.equal(first[1:2], expected)
    assert (first - isr.isr.upscale(lr)).abs().max() <= 1e-3  # fp16 storage only
    bases(lr + 1e-3)  # new content, new bases
    assert isr.calls == 6


def test_v2_prior_decodes_and_encodes_around_the_isr_base(v2_folder, isr_cache):
    from sr.image_sr import load_isr_model
    sr = load_sr_model(v2_folder, "cpu")
    assert sr.bases.name == ISR and sr.prior_config["base"] == ISR
    lr = _lr(2)
    base = load_isr_model(isr_cache, "cpu").upscale(lr)
    zero = torch.zeros(2, 3, 32, 48)
    assert (sr.decode(zero, lr) - base).abs().max() <= 1e-3  # x0 = 0 is the base itself
    hr = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    z = sr.encode(hr, lr)
    assert torch.allclose(z, (hr - sr.bases(lr)) / sr.residual_scale)
    assert torch.allclose(sr.decode(z, lr), hr, atol=1e-6)  # exact inverse on [0, 1]
    out = sr.model_output(torch.randn(2, 3, 32, 48), 999, lr)
    assert out.shape == (2, 3, 32, 48) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=ISR):
        sr.decode(zero)


def test_v2_prior_without_its_weights_fails_in_one_line(v2_folder, isr_cache):
    os.remove(isr_cache)
    with pytest.raises(ModelNotFoundError) as err:
        load_sr_model(v2_folder, "cpu")
    assert "fetch_isr_weights" in str(err.value) and "\n" not in str(err.value)


def test_unknown_base_is_refused(tmp_path):
    folder = save_tiny_pixel_prior(str(tmp_path / "p"), base="nearest")
    with pytest.raises(ModelNotFoundError, match="unknown base 'nearest'"):
        load_sr_model(folder, "cpu")


# ---- training ----------------------------------------------------------------------------------------
def test_crops_are_on_the_lr_grid_and_carry_their_base():
    """With precomputed bases, the HR crop, its LR and its base crop come from the same place and the same
    flip / turn: with the photo itself as the 'base' they are equal, and every crop starts on the LR grid
    (the photo's colours encode y mod 4 and x mod 4, which the corners of an aligned crop show)."""
    from tools.train_sr_prior import CropSampler, TrainSettings
    yy, xx = np.mgrid[0:72, 0:88]
    photo = np.stack([(yy % 4) * 64, (xx % 4) * 64, (yy * 3 + xx) % 256], -1).astype(np.uint8)
    settings = TrainSettings(crop=32, base=ISR)
    sampler = CropSampler([photo], settings, seed=0, bases=[photo.astype(np.float16) / 255])
    hr, lr, base = sampler.batch(16)
    assert torch.allclose(base, hr, atol=1e-3)
    c = settings.crop - 1
    for crop in (hr * 255).round().long():
        corners = {tuple(crop[:2, y, x].tolist()) for y in (0, c) for x in (0, c)}
        assert corners == {(0, 0), (0, 192), (192, 0), (192, 192)}
    assert lr.shape == (16, 3, 8, 8)


def test_isr_base_training_needs_clean_lr():
    from tools.train_sr_prior import TrainSettings
    with pytest.raises(ThreeDSRError, match="--base realesrgan-x4plus"):
        TrainSettings(base=ISR, noise=0.5).check()
    with pytest.raises(ThreeDSRError, match="--base must be one of"):
        TrainSettings(base="lanczos").check()


def test_training_on_isr_bases_from_an_init_prior_exports_a_v2_prior(isr_cache, tmp_path):
    from tests.test_pixel_prior import _photos
    from tools.train_sr_prior import CHECKPOINT, TrainSettings, read_checkpoint, train
    data = _photos(str(tmp_path / "photos"), size=(70, 90))  # not multiples of 4: cut to the grid
    init = save_tiny_pixel_prior(str(tmp_path / "v1"), seed=5)
    settings = TrainSettings(steps=3, batch=2, crop=32, warmup=1, channels=[8, 16], layers_per_block=1,
                             norm_groups=4, base=ISR, init=init)
    out = train(settings, data, str(tmp_path / "run"), progress=False)
    cached = os.listdir(os.path.join(os.environ["THREEDSR_CACHE"], "prior_bases", ISR))
    assert out["done"] and len(cached) == 3  # one base per photo, kept for the next run
    sr = load_sr_model(out["prior"], "cpu")
    assert sr.prior_config["base"] == ISR and sr.residual_scale > 0
    # the run started from the init weights: after 3 small steps it is close to them, not to a fresh net
    v1 = load_sr_model(init, "cpu").net.unet.state_dict()
    ckpt = read_checkpoint(os.path.join(str(tmp_path / "run"), CHECKPOINT))
    w = "conv_in.weight"
    assert (ckpt["model"][w] - v1[w]).abs().max() < 0.05 * v1[w].abs().max()
    with pytest.raises(ModelNotFoundError, match="--init"):
        TrainSettings(init=str(tmp_path / "nope")).check()


def test_eval_has_the_isr_alone_row(isr_cache, tmp_path):
    from tests.test_pixel_prior import _photos
    from tools.train_sr_prior import evaluate_prior, format_report
    held = _photos(str(tmp_path / "held"), n=2, size=(40, 44), seed=1)
    photos = sorted(os.path.join(held, n) for n in os.listdir(held))
    prior = save_tiny_pixel_prior(str(tmp_path / "p"), base=ISR)
    report = evaluate_prior(prior, photos, steps=(1,), seeds=(0,), crop=32, figure=str(tmp_path / "crops.png"))
    assert report["isr"]["name"] == ISR and len(report["isr"]["per_photo"]) == 2
    assert f"{ISR} alone" in format_report(report)
    from PIL import Image
    with Image.open(tmp_path / "crops.png") as im:  # bicubic | Real-ESRGAN | prior | HR
        assert im.size == (4 * 20 + 3 * 4, 2 * 20 + 4)
    os.remove(isr_cache)  # without the weights the row says why (a bicubic-base prior still evaluates)
    bic = save_tiny_pixel_prior(str(tmp_path / "b"))
    report = evaluate_prior(bic, photos, steps=(1,), seeds=(0,), crop=32)
    assert "fetch_isr_weights" in report["isr"]["unavailable"]
    assert "unavailable" in format_report(report)


def test_memory_estimate_counts_the_base_model(v2_folder, isr_cache, tmp_path):
    from training.memory import weights_bytes
    v1 = save_tiny_pixel_prior(str(tmp_path / "v1"))
    assert weights_bytes(v2_folder) == weights_bytes(v1) + os.path.getsize(isr_cache)
