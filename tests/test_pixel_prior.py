"""The embedded x4 prior (sr/pixel_prior.py) and its trainer (tools/train_sr_prior.py): a tiny random prior
folder loaded through load_sr_model, sampling, the residual encode/decode, the v-prediction algebra,
training with bit-identical resume, evaluation, and one 3DSR step of the real loop with it."""
import math
import os
from argparse import ArgumentParser, Namespace

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from sr import load_sr_model  # noqa: E402
from sr.testing import save_tiny_pixel_prior  # noqa: E402
from utils.errors import ModelNotFoundError, ThreeDSRError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def prior_folder(tmp_path_factory):
    return save_tiny_pixel_prior(str(tmp_path_factory.mktemp("prior") / "tiny-prior"), seed=0)


@pytest.fixture(scope="module")
def sr(prior_folder):
    return load_sr_model(prior_folder, "cpu")


def _lr(views=2, h=8, w=12, seed=3):
    return torch.rand(views, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _sample(sr, lr, steps=4, seed=0, eta=0.0):
    from tools.train_sr_prior import sample_prior
    return sample_prior(sr, lr, steps, eta, seed)


def test_loads_through_the_registry_and_samples(sr, prior_folder):
    from sr.pixel_prior import PixelPriorSR
    assert isinstance(sr, PixelPriorSR) and sr.scale == 4 and sr.prediction_type == "v_prediction"
    assert sr.timesteps(4).tolist() == [999, 749, 499, 249]
    lr = _lr()
    hr = _sample(sr, lr)
    assert hr.shape == (2, 3, 32, 48) and hr.dtype == torch.float32
    assert float(hr.min()) >= 0.0 and float(hr.max()) <= 1.0
    assert torch.equal(hr, _sample(sr, lr))  # a seed fixes the sample
    assert not torch.equal(hr, _sample(sr, lr, seed=1))
    # sr_refine.py passes every SR flag to every adapter: neutral values are accepted
    load_sr_model(prior_folder, "cpu", prompt="", guidance_scale=1.0, noise_level=20, timestep_spacing="trailing",
                  sr_batch=2, vae_tiling=False)
    # sizes the UNet does not divide (odd LR) are padded inside the network and cropped back
    assert _sample(sr, _lr(1, 7, 9), steps=2).shape == (1, 3, 28, 36)


def test_saved_files_have_the_usual_permissions(prior_folder):
    umask = os.umask(0)
    os.umask(umask)
    for root, _, files in os.walk(prior_folder):
        for name in files:
            assert os.stat(os.path.join(root, name)).st_mode & 0o777 == 0o666 & ~umask, name


def test_chunking_does_not_change_results(prior_folder):
    lr = _lr(3)
    one = load_sr_model(prior_folder, "cpu", sr_batch=1)
    three = load_sr_model(prior_folder, "cpu", sr_batch=3)
    x = torch.randn(3, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(one.model_output(x, 499, lr), three.model_output(x, 499, lr), rtol=1e-5, atol=1e-5)


def test_encode_decode_are_the_residual_over_bicubic(sr):
    from sr.pixel_prior import bicubic_base
    lr = _lr()
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    z = sr.encode(images, lr)
    torch.testing.assert_close(z, (images - bicubic_base(lr, 4)) / sr.residual_scale)
    torch.testing.assert_close(sr.decode(z, lr), images, rtol=0, atol=1e-6)
    assert torch.equal(sr.decode(torch.zeros_like(z), lr), bicubic_base(lr, 4))  # x0 = 0 is the bicubic image
    with pytest.raises(ValueError, match="lr_images"):
        sr.decode(z)
    with pytest.raises(ValueError, match="do not match"):
        sr.encode(images, _lr(2, 4, 12))


def test_predict_follows_the_v_prediction_algebra(sr):
    lr = _lr()
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(2, 3, 32, 48, generator=g)
    for t in (999, 500, 10):
        a = sr.alpha_bar(t)
        v = sr.model_output(x_t, t, lr)
        x0, eps = sr.predict(x_t, t, lr)
        torch.testing.assert_close(x0, math.sqrt(a) * x_t - math.sqrt(1 - a) * v, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(eps, math.sqrt(1 - a) * x_t + math.sqrt(a) * v, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(math.sqrt(a) * x0 + math.sqrt(1 - a) * eps, x_t, rtol=1e-4, atol=1e-4)


def test_bad_folders_and_options(prior_folder, tmp_path):
    import shutil
    with pytest.raises(ModelNotFoundError, match="not text-conditioned"):
        load_sr_model(prior_folder, "cpu", prompt="a cat")
    with pytest.raises(ModelNotFoundError, match="guidance"):
        load_sr_model(prior_folder, "cpu", guidance_scale=7.5)
    broken = str(tmp_path / "broken")
    shutil.copytree(prior_folder, broken)
    os.remove(os.path.join(broken, "prior_config.json"))
    with pytest.raises(ModelNotFoundError, match="prior_config.json"):
        load_sr_model(broken, "cpu")
    shutil.copy(os.path.join(prior_folder, "prior_config.json"), broken)
    shutil.rmtree(os.path.join(broken, "unet"))
    with pytest.raises(ModelNotFoundError, match="cannot load the unet"):
        load_sr_model(broken, "cpu")


# ---- training ------------------------------------------------------------------------------------
def _photos(folder, n=3, size=(72, 88), seed=0):
    """Smooth random colour images (cumulative sums of noise) with some detail that 4x downsampling loses."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = rng.normal(0, 1, size + (3,)).cumsum(0).cumsum(1)
        a = (a - a.min()) / (a.max() - a.min() + 1e-9)
        a = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
        Image.fromarray((a * 255).astype(np.uint8)).save(os.path.join(folder, f"p{i}.png"))
    return folder


TINY = dict(steps=6, batch=2, crop=32, warmup=2, channels=[8, 16], layers_per_block=1, norm_groups=4, bf16=True,
            blur=0.5, noise=0.5, jpeg=0.5)


class Killed(BaseException):
    pass


def test_training_resumes_bit_identically_and_exports_a_loadable_prior(tmp_path):
    from tools.train_sr_prior import CHECKPOINT, TrainSettings, read_checkpoint, train

    data = _photos(str(tmp_path / "photos"))
    ref = train(TrainSettings(**TINY), data, str(tmp_path / "ref"), checkpoint_every=2, progress=False)
    assert ref["done"] and ref["step"] == 6

    def kill_at_5(step):
        if step == 5:  # after the step-4 checkpoint: step 5 is lost and redone on resume
            raise Killed()
    run = str(tmp_path / "killed")
    with pytest.raises(Killed):
        train(TrainSettings(**TINY), data, run, checkpoint_every=2, progress=False, on_step=kill_at_5)
    assert read_checkpoint(os.path.join(run, CHECKPOINT))["step"] == 4
    with pytest.raises(ThreeDSRError, match="--resume"):
        train(TrainSettings(**TINY), data, run, progress=False)
    with pytest.raises(ThreeDSRError, match="lr"):
        train(TrainSettings(**{**TINY, "lr": 1e-3}), data, run, resume=True, progress=False)
    out = train(TrainSettings(**TINY), data, run, checkpoint_every=2, resume=True, progress=False)
    assert out["done"]

    a, b = read_checkpoint(ref["checkpoint"]), read_checkpoint(out["checkpoint"])
    for key in ("model", "ema", "optimizer"):
        flat_a, flat_b = _tensors(a[key]), _tensors(b[key])
        assert flat_a.keys() == flat_b.keys()
        for k in flat_a:
            assert torch.equal(flat_a[k], flat_b[k]), (key, k)
    assert a["sampler"] == b["sampler"] and a["loss_avg"] == b["loss_avg"]
    weights = "unet/diffusion_pytorch_model.safetensors"
    with open(os.path.join(ref["prior"], weights), "rb") as fa, open(os.path.join(out["prior"], weights), "rb") as fb:
        assert fa.read() == fb.read()

    sr = load_sr_model(out["prior"], "cpu")
    assert sr.prior_config["training"]["steps"] == 6 and sr.residual_scale > 0
    hr = _sample(sr, _lr(1), steps=2)
    assert hr.shape == (1, 3, 32, 48) and 0.0 <= float(hr.min()) and float(hr.max()) <= 1.0


def _tensors(obj, prefix=""):
    """Every tensor inside nested dicts/lists, keyed by its path."""
    out = {}
    if torch.is_tensor(obj):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
    return out


def test_lr_is_made_like_the_datasets():
    from tools.train_sr_prior import make_lr
    hr = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    lr = make_lr(hr)
    expected = np.floor(hr.reshape(4, 4, 6, 4, 3).astype(np.float64).mean(axis=(1, 3)) + 0.5)
    assert lr.dtype == np.uint8 and np.array_equal(lr, expected.astype(np.uint8))


def test_eval_reports_prior_and_bicubic(prior_folder, tmp_path):
    from tools.train_sr_prior import evaluate_prior, format_report
    held = _photos(str(tmp_path / "held"), n=2, size=(40, 44), seed=1)
    photos = sorted(os.path.join(held, n) for n in os.listdir(held))
    report = evaluate_prior(prior_folder, photos, steps=(1, 2), seeds=(0, 1), crop=32,
                            figure=str(tmp_path / "crops.png"), isr=None)
    assert [r["steps"] for r in report["prior_runs"]] == [1, 2]
    for row in [report["bicubic_pil"]] + report["prior_runs"]:
        assert row["psnr"] > 5
        for net in ("alex", "vgg"):  # a number, or "unavailable: why" without the metric weights
            v = row[f"lpips_{net}"]
            assert isinstance(v, float) or v.startswith("unavailable")
    assert "psnr_between_seeds" in report["prior_runs"][0]
    for row in [report["bicubic_pil"]] + report["prior_runs"]:  # the mean is the mean of the photos
        assert len(row["per_photo"]) == 2
        assert row["psnr"] == pytest.approx(np.mean([r["psnr"] for r in row["per_photo"]]), abs=1e-3)
    from PIL import Image
    with Image.open(tmp_path / "crops.png") as im:  # 2 photos x (bicubic | prior | HR), 10-px crops shown 2x
        assert im.size == (3 * 20 + 2 * 4, 2 * 20 + 4)
    table = format_report(report)
    assert "PIL bicubic" in table and len(table.splitlines()) >= 4
    if isinstance(report["bicubic_pil"]["lpips_alex"], float):  # the relative column is (prior - bic) / bic
        r, b = report["prior_runs"][0]["lpips_alex"], report["bicubic_pil"]["lpips_alex"]
        assert f"({100.0 * (r - b) / b:+.1f}%)" in table


# ---- the 3DSR loop ---------------------------------------------------------------------------------
def test_one_3dsr_step_with_the_prior(sr, tmp_path):
    """sr_refine's loop runs with the prior: decode/encode get the LR images, renders replace x0."""
    from arguments import OptimizationParams
    from scene import GaussianModel
    from scene.cameras import Camera
    from scene.dataset_readers import BasicPointCloud
    from training.sr_loop import SRRefiner, SRSettings

    g = torch.Generator().manual_seed(0)
    cams = [Camera(uid=i, image_name=f"v{i}", world_to_camera=torch.eye(4), fx=10.0, fy=10.0, cx=6.0, cy=4.0,
                   width=12, height=8, image=torch.rand(3, 8, 12, generator=g)) for i in range(2)]
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-1, 1, (200, 2)), rng.uniform(2, 4, (200, 1))], axis=1).astype(np.float32)
    gaussians = GaussianModel(0)
    gaussians.create_from_pcd(BasicPointCloud(points=pts, colors=rng.uniform(0, 1, (200, 3)).astype(np.float32),
                                              normals=np.zeros_like(pts)), spatial_lr_scale=1.0)
    parser = ArgumentParser()
    opt = OptimizationParams(parser).extract(parser.parse_args([]))
    opt.position_lr_max_steps, opt.densify_until_iter, opt.opacity_reset_interval = 3, 0, 0
    settings = SRSettings(mode="3dsr", steps=1, iters_per_step=2, final_iters=1)
    refiner = SRRefiner(settings, gaussians, cams, opt=opt, pipe=Namespace(backend="auto", debug=False),
                        background=torch.zeros(3), kernel_size=0.1, scene_extent=1.0, run_dir=str(tmp_path),
                        ply_path=str(tmp_path / "point_cloud.ply"), sr=sr, save_images=False, progress=False)
    log = refiner.run()
    assert log["complete"] and [e["timestep"] for e in log["steps"]] == [999]
    assert log["steps"][0]["psnr_render_vs_decoded"] is not None and os.path.isfile(tmp_path / "point_cloud.ply")


@pytest.mark.parametrize("name", ["embedded-x4", "embedded-x4-v2"])
def test_shipped_embedded_prior_loads_and_samples(name, one_thread):
    """The repository's own priors (models/embedded-x4 on a bicubic base; embedded-x4-v2 on Real-ESRGAN's)
    load by their short names and sample a small real photograph on CPU: x4 shape, range [0, 1],
    deterministic per seed, different per seed, faithful to the LR input, and not just their base."""
    import numpy as np
    import skimage.data

    from sr.latents import ViewLatents
    from sr.loading import load_sr_model
    from utils.image_utils import area_downsample, psnr

    try:
        sr = load_sr_model(name, "cpu")
    except ModelNotFoundError as exc:  # v2 needs the Real-ESRGAN weights that scripts/setup.sh converts
        pytest.skip(f"{name}: {exc}")
    assert sr.scale == 4
    hr = torch.from_numpy(np.ascontiguousarray(skimage.data.astronaut()[80:144, 180:244])).permute(2, 0, 1)[None]
    lr = area_downsample(hr.float() / 255.0, 4)  # [1, 3, 16, 16], made as our datasets' LR images are

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        lat = ViewLatents.create(sr, lr, 4, g)
        while not lat.done:
            t, t_prev = lat.current()
            x0, eps = sr.predict(lat.latents, t, lr, lat.cond_noise)
            lat.advance(sr.step(x0, eps, t, t_prev, 0.0, g))
        return sr.decode(lat.latents, lr)

    a, b, c = sample(1), sample(1), sample(2)
    assert a.shape == (1, 3, 64, 64) and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    # keeps the LR content (v2 less so: Real-ESRGAN shifts contrast; 27.8 dB measured here, see its model card)
    assert float(psnr(area_downsample(a, 4), lr).min()) > {"embedded-x4": 30.0, "embedded-x4-v2": 25.0}[name]
    assert float((a - sr.bases(lr)).abs().mean()) > 2e-3  # and adds detail of its own


def test_crop_figure_shows_centre_crops_at_2x():
    from tools.train_sr_prior import crop_figure
    a = torch.rand(1, 3, 12, 9, generator=torch.Generator().manual_seed(0))
    b = torch.rand(1, 3, 12, 9, generator=torch.Generator().manual_seed(1))
    fig = crop_figure([a], [b], gap=2)
    assert fig.shape == (3, 8, 6 + 2 + 6)
    assert torch.equal(fig[:, ::2, :6:2], a[0, :, 4:8, 3:6]) and torch.equal(fig[:, 1::2, 1:6:2], a[0, :, 4:8, 3:6])
    assert torch.equal(fig[:, ::2, 8::2], b[0, :, 4:8, 3:6]) and bool((fig[:, :, 6:8] == 1).all())
