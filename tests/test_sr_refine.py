"""The 3DSR loop (sr_refine.py, training/sr_loop.py): its sampler step against diffusers' DDIM, an oracle
model against the HR-trained bound, a tiny sd-x4-upscaler end to end, kill-and-resume, bad input."""
import hashlib
import json
import os
import shutil
from argparse import ArgumentParser, Namespace

import pytest
import torch
from cli import run_script, tiny_llff_scene

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR_FACTOR = 4  # the LR model is trained on images_4 (64x48); x4 gives the full 256x192 images


run = run_script


def tree_digest(folder):
    """Hash of every file under folder (names and bytes): proves nothing was changed or lost."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    return tiny_llff_scene(tmp_path_factory, "srscene", views=12, seed=1, num_points=2000)


@pytest.fixture(scope="module")
def lr_model(tiny_scene, tmp_path_factory):
    model = str(tmp_path_factory.mktemp("srmodel") / "tiny")
    run(["train.py", "-s", tiny_scene, "-m", model, "-r", str(LR_FACTOR), "--eval", "--iterations", "300",
         "--densify_from_iter", "100", "--densify_until_iter", "250", "--densification_interval", "50",
         "--opacity_reset_interval", "100000", "--sh_increase_interval", "100", "--test_iterations", "300",
         "--save_iterations", "300", "--quiet"])
    return model


@pytest.fixture(scope="module")
def tiny_sr_folder(tmp_path_factory):
    from sr.testing import save_tiny_x4_upscaler
    return save_tiny_x4_upscaler(str(tmp_path_factory.mktemp("tinysr") / "x4"))


def fit_options(total, densify=True, **overrides):
    """OptimizationParams as sr_refine.py sets them for a stage of `total` iterations."""
    from arguments import OptimizationParams
    parser = ArgumentParser()
    opt = OptimizationParams(parser).extract(parser.parse_args([]))
    opt.position_lr_max_steps = total
    opt.opacity_reset_interval = 0
    opt.densify_until_iter = total // 2 if densify else 0
    for k, v in overrides.items():
        setattr(opt, k, v)
    return opt


def load_lr(model):
    """(gaussians, scene) of the LR model, as sr_refine.py loads them."""
    from arguments import read_cfg_args
    from scene import GaussianModel, Scene
    from training.fit import seed_everything
    cfg = read_cfg_args(model)
    cfg.model_path = model
    seed_everything(0)
    gaussians = GaussianModel(3)
    return gaussians, Scene(cfg, gaussians, load_iteration=-1)


def make_refiner(model, run_dir, settings, sr, opt, densify=True, hr_test=(), save_images=False, views=None):
    from training.sr_loop import SRRefiner
    from training.strategy import DensifyStrategy
    gaussians, scene = load_lr(model)
    strategy = DensifyStrategy.from_opt(opt) if densify else None
    return SRRefiner(settings, gaussians, scene.train_cameras[:views], opt=opt, pipe=Namespace(backend="auto", debug=False),
                     background=torch.zeros(3), kernel_size=0.1, scene_extent=scene.cameras_extent,
                     run_dir=run_dir, ply_path=os.path.join(run_dir, "point_cloud.ply"), sr=sr,
                     strategy=strategy, hr_test_cameras=hr_test, save_images=save_images, progress=False)


# ---- the sampler step ---------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_loop_step_without_3d_equals_diffusers_ddim(eta, tiny_sr_folder, one_thread, tmp_path):
    """With z = x0 (no 3D replacement), each loop step is DDIMScheduler.step on the same inputs."""
    from diffusers import DDIMScheduler

    from scene.cameras import Camera
    from sr.latents import ViewLatents
    from sr.loading import load_sr_model
    from training.sr_loop import SRRefiner, SRSettings

    sr = load_sr_model(tiny_sr_folder, "cpu")
    g = torch.Generator().manual_seed(3)
    cams = [Camera(uid=i, image_name=f"v{i}", world_to_camera=torch.eye(4), fx=20.0, fy=20.0, cx=8.0, cy=6.0,
                   width=16, height=12, image=torch.rand(3, 12, 16, generator=g)) for i in range(3)]
    settings = SRSettings(mode="per-view", steps=4, iters_per_step=0, final_iters=0, eta=eta, seed=5)
    refiner = SRRefiner(settings, None, cams, opt=None, pipe=None, background=None, kernel_size=0.1,
                        scene_extent=1.0, run_dir=str(tmp_path), ply_path=str(tmp_path / "p.ply"), sr=sr,
                        save_images=False, progress=False)
    latents = ViewLatents.create(sr, refiner.lr_images, settings.steps, refiner.generator)
    scheduler = DDIMScheduler.from_pretrained(tiny_sr_folder, subfolder="scheduler", timestep_spacing="trailing")
    scheduler.set_timesteps(settings.steps)
    assert scheduler.timesteps.tolist() == latents.timesteps.tolist() == [999, 749, 499, 249]
    for t in scheduler.timesteps.tolist():
        x_t = latents.latents.clone()
        out = sr.model_output(x_t, t, refiner.lr_images, latents.cond_noise)
        noise_gen = torch.Generator().set_state(refiner.generator.get_state())
        noise = torch.randn(x_t.shape, generator=noise_gen)  # what the loop's step will draw
        expected = scheduler.step(out, t, x_t, eta=eta, variance_noise=noise).prev_sample
        refiner.sampler_step(latents, refiner._keep_x0)
        torch.testing.assert_close(latents.latents, expected, rtol=1e-5, atol=1e-5)
    assert latents.done


# ---- the oracle -------------------------------------------------------------------------------------
def test_oracle_model_reaches_the_hr_trained_bound(lr_model, tiny_scene, tmp_path):
    """x0 = the ground-truth HR views: 3DSR then fits the true HR images at every step, so its HR test
    PSNR must match Gaussians fitted directly on the HR images for as many iterations (measured: 26.46
    vs 26.48 dB; the LR model rendered at HR gives 24.05), proving the plumbing end to end."""
    from scene.dataset_readers import read_scene
    from scene.scene import camera_from_info
    from sr.testing import PixelOracleSR
    from training.fit import evaluate, fit_gaussians
    from training.sr_loop import SRSettings
    from training.strategy import DensifyStrategy

    steps, k = 2, 100
    hr = read_scene(tiny_scene, resolution=1, eval=True)
    hr_train = {c.image_name: camera_from_info(c) for c in hr.train_cameras}
    hr_test = [camera_from_info(c) for c in hr.test_cameras]
    pipe, bg = Namespace(backend="auto", debug=False), torch.zeros(3)
    opt = fit_options(steps * k, densify_from_iter=25, densification_interval=20)

    gaussians, scene = load_lr(lr_model)
    lr_at_hr = evaluate(hr_test, gaussians, pipe, bg, 0.1)["psnr"]
    targets = torch.stack([hr_train[c.image_name].image for c in scene.train_cameras])
    settings = SRSettings(mode="3dsr", steps=steps, iters_per_step=k, final_iters=0)
    refiner = make_refiner(lr_model, str(tmp_path / "oracle"), settings, PixelOracleSR(targets), opt,
                           hr_test=hr_test)
    log = refiner.run()
    oracle = log["final"]["psnr_hr_test"]

    gaussians, scene = load_lr(lr_model)
    fit_gaussians(gaussians, [hr_train[c.image_name] for c in scene.train_cameras], opt, pipe, bg,
                  kernel_size=0.1, first_iter=1, last_iter=steps * k, scene_extent=scene.cameras_extent,
                  strategy=DensifyStrategy.from_opt(opt), grow_sh=False, progress=False)
    bound = evaluate(hr_test, gaussians, pipe, bg, 0.1)["psnr"]
    print(f"oracle {oracle:.3f} dB, HR-trained bound {bound:.3f} dB, LR model at HR {lr_at_hr:.3f} dB")
    assert abs(oracle - bound) < 0.25, (oracle, bound)
    assert oracle > lr_at_hr + 1.0, (oracle, lr_at_hr)
    # the fit really follows the targets: renders approach the (true) proposals step after step
    per_step = [e["psnr_render_vs_decoded"] for e in log["steps"]]
    assert per_step[-1] > per_step[0] + 1.0, per_step


def test_schedule_words_resolve_to_per_step_counts():
    """'ramp' (the default) is 0.1 / 0.25 / 0.65 / 1 x K at 4 steps, interpolated for other step counts;
    'uniform' is the paper's K at every step; counts pass through."""
    from training.sr_loop import resolve_iters_schedule
    assert resolve_iters_schedule(["ramp"], 4, 1000) == [100, 250, 650, 1000]
    assert resolve_iters_schedule([], 4, 1000) == [100, 250, 650, 1000]
    assert resolve_iters_schedule(["uniform"], 4, 5000) == [5000] * 4
    assert resolve_iters_schedule(["100", "200"], 2, 7) == [100, 200]
    assert resolve_iters_schedule(["ramp"], 1, 300) == [300]
    assert resolve_iters_schedule(["ramp"], 2, 1000) == [100, 1000]
    seven = resolve_iters_schedule(["ramp"], 7, 1000)  # points at 0, 1/3, 2/3, 1 fall on steps 1, 3, 5, 7
    assert seven[0] == 100 and seven[2] == 250 and seven[4] == 650 and seven[6] == 1000
    assert seven == sorted(seven) and seven[1] == 175 and seven[3] == 450 and seven[5] == 825
    assert resolve_iters_schedule(["ramp"], 4, 10) == [1, 3, 7, 10]  # halves round up
    from utils.errors import ThreeDSRError
    with pytest.raises(ThreeDSRError, match="'ramp', 'uniform' or one iteration count per step"):
        resolve_iters_schedule(["fast"], 4, 10)


def test_per_step_schedule_numbers_each_steps_fit_globally(lr_model, tiny_sr_folder, one_thread, tmp_path):
    """--iters_schedule: step k fits its own count, numbered on from the steps before; the final fit follows."""
    from sr.loading import load_sr_model
    from training.sr_loop import SRSettings
    from utils.errors import ThreeDSRError

    settings = SRSettings(mode="3dsr", steps=3, iters_per_step=50, iters_schedule=[2, 0, 4], final_iters=3)
    assert [settings.step_iters(k) for k in (1, 2, 3)] == [2, 0, 4]
    assert [settings.first_iteration(k) for k in (1, 2, 3, 4)] == [1, 3, 3, 7]
    assert settings.total_iterations == 9
    assert settings.describe_iterations() == "3 steps (2+0+4) + 3 final fit iterations"
    assert SRSettings(steps=2, iters_per_step=5, final_iters=1).total_iterations == 11
    assert SRSettings(steps=2, iters_per_step=5, iters_schedule=[5, 5]) == SRSettings(steps=2, iters_per_step=5)
    with pytest.raises(ThreeDSRError, match="2 entries for --steps 3"):
        SRSettings(steps=3, iters_schedule=[1, 2])
    with pytest.raises(ThreeDSRError, match="negative"):
        SRSettings(steps=2, iters_schedule=[1, -2])

    sr = load_sr_model(tiny_sr_folder, "cpu")
    opt = fit_options(settings.total_iterations, densify=False)
    refiner = make_refiner(lr_model, str(tmp_path / "s"), settings, sr, opt, densify=False)
    calls, fit = [], refiner.fit
    refiner.fit = lambda targets, first, last, desc: calls.append((first, last)) or fit(targets, first, last, desc)
    log = refiner.run()
    assert calls == [(1, 2), (3, 2), (3, 6), (7, 9)]
    assert log["settings"]["iters_schedule"] == [2, 0, 4] and log["complete"]
    # a checkpoint written under one schedule does not resume under another
    other = SRSettings(mode="3dsr", steps=3, iters_per_step=50, iters_schedule=[2, 1, 3], final_iters=3)
    with pytest.raises(ThreeDSRError, match="iters_schedule"):
        make_refiner(lr_model, str(tmp_path / "s"), other, sr, opt, densify=False).run(resume=True)

    # the baselines fit once, for the schedule's total
    per_view = SRSettings(mode="per-view", steps=3, iters_schedule=[2, 0, 4], final_iters=3)
    refiner = make_refiner(lr_model, str(tmp_path / "p"), per_view, sr, opt, densify=False)
    calls, fit = [], refiner.fit
    refiner.fit = lambda targets, first, last, desc: calls.append((first, last)) or fit(targets, first, last, desc)
    refiner.run()
    assert calls == [(1, 9)]


# ---- the CLI end to end ----------------------------------------------------------------------------
def test_sr_refine_cli_tiny_x4_end_to_end(lr_model, tiny_sr_folder, tmp_path):
    model = str(tmp_path / "model")
    shutil.copytree(lr_model, model)
    run(["sr_refine.py", "-m", model, "--sr_model", tiny_sr_folder, "--steps", "2", "--iters_per_step", "20",
         "--final_iters", "10", "--densify_from_iter", "5", "--densification_interval", "10", "--quiet"])
    run_dir = os.path.join(model, "sr", "sr")
    log = json.load(open(os.path.join(run_dir, "log.json")))
    assert log["complete"] and log["mode"] == "3dsr" and log["hr_size"] == [256, 192]
    assert [e["timestep"] for e in log["steps"]] == [999, 499] and [e["t_prev"] for e in log["steps"]] == [499, -1]
    for e in log["steps"] + [log["final"]]:
        for key in ("fit_loss", "psnr_render_vs_decoded", "psnr_lr_consistency", "psnr_hr_test", "seconds",
                    "num_gaussians", "peak_memory_mb"):
            assert e[key] is not None, (key, e)
    from PIL import Image
    for sub in ("step_1/decoded", "step_1/renders", "step_2/decoded", "step_2/renders", "final/renders"):
        files = sorted(os.listdir(os.path.join(run_dir, sub)))
        assert len(files) == 10, sub
        assert Image.open(os.path.join(run_dir, sub, files[0])).size == (256, 192)
    assert not os.path.exists(os.path.join(run_dir, "step_1", "checkpoint.pth"))  # only the latest is kept
    assert os.path.isfile(os.path.join(run_dir, "step_2", "checkpoint.pth"))
    assert "sr_model" in open(os.path.join(run_dir, "cfg_args")).read()
    # the adapter's options are part of the settings a checkpoint resumes under (not the batch size)
    assert log["settings"]["sr_options"]["noise_level"] == 20 and "sr_batch" not in log["settings"]["sr_options"]
    # the result is an iteration of the model folder: render.py renders it at HR (its own scale) into 3dsr/
    run(["render.py", "-m", model, "--iteration", "sr", "--skip_train", "--quiet"])
    img = Image.open(os.path.join(model, "test", "3dsr", "renders", "00000.png"))
    assert img.size == (256, 192)
    assert os.path.isfile(os.path.join(model, "test", "3dsr", "gt", "00000.png"))  # images_1 exist at x4
    # a finished run resumed is a no-op
    proc = run(["sr_refine.py", "-m", model, "--sr_model", tiny_sr_folder, "--steps", "2", "--iters_per_step",
                "20", "--final_iters", "10", "--resume", "--quiet"])
    assert "is complete" in proc.stdout


# ---- modes --------------------------------------------------------------------------------------------
def test_per_view_and_bicubic_modes(lr_model, tiny_sr_folder, one_thread, tmp_path):
    from sr.loading import load_sr_model
    from sr.latents import ViewLatents
    from training.sr_loop import SRSettings, bicubic_upsample

    # per-view = plain sampling of each view, then one fit of steps*K + final iterations
    sr = load_sr_model(tiny_sr_folder, "cpu")
    settings = SRSettings(mode="per-view", steps=2, iters_per_step=5, final_iters=5)
    refiner = make_refiner(lr_model, str(tmp_path / "pv"), settings, sr, fit_options(15, densify=False),
                           densify=False, save_images=True)
    log = refiner.run()
    assert [e["fit_loss"] for e in log["steps"]] == [None, None] and log["final"]["fit_loss"] is not None
    g = torch.Generator().manual_seed(settings.seed)
    lat = ViewLatents.create(sr, refiner.lr_images, 2, g)
    for t, t_prev in [(999, 499), (499, -1)]:
        x0, eps = sr.predict(lat.latents, t, refiner.lr_images, lat.cond_noise)
        lat.advance(sr.step(x0, eps, t, t_prev, 0.0, g))
    from utils.image_utils import load_image, to_tensor_chw
    name = refiner.names[0]
    saved = to_tensor_chw(load_image(os.path.join(str(tmp_path / "pv"), "final", "decoded", f"{name}.png")))
    expected = sr.decode(lat.latents)[0]
    assert (saved - expected).abs().max() <= 0.5 / 255 + 1e-6

    # bicubic: no diffusion, bicubic targets, as many fit iterations
    settings = SRSettings(mode="bicubic", steps=2, iters_per_step=5, final_iters=5)
    refiner = make_refiner(lr_model, str(tmp_path / "bic"), settings, None, fit_options(15, densify=False),
                           densify=False)
    before = {n: p.detach().clone() for n, p in refiner.gaussians.params.items()}
    log = refiner.run()
    assert log["steps"] == [] and log["final"]["fit_loss"] is not None
    assert not torch.equal(before["xyz"], refiner.gaussians.params["xyz"])  # positions really move
    up = bicubic_upsample(refiner.lr_images, 4)
    assert up.shape[-2:] == (192, 256) and 0.0 <= float(up.min()) and float(up.max()) <= 1.0


# ---- resume -------------------------------------------------------------------------------------------
class Killed(BaseException):
    pass


def kill_at(refiner, call):
    """Make the refiner's fit loss raise at its `call`-th evaluation, like a kill at that moment."""
    inner, count = refiner.loss_fn, [0]

    def loss_fn(pkg, cam):
        count[0] += 1
        if count[0] == call:
            raise Killed()
        return inner(pkg, cam)
    refiner.loss_fn = loss_fn


def test_kill_and_resume_equals_uninterrupted(lr_model, tiny_sr_folder, one_thread, tmp_path):
    """eta = 1 (DDIM noise), LR noise augmentation and densification all draw random numbers: a run
    killed inside step 2's fit, or inside the final fit, and resumed ends bit-identical."""
    from sr.loading import load_sr_model
    from training.sr_loop import SRSettings

    settings = SRSettings(mode="3dsr", steps=3, iters_per_step=8, final_iters=6, eta=1.0, seed=7)
    opt = fit_options(settings.total_iterations, densify_from_iter=2, densification_interval=4)
    sr = load_sr_model(tiny_sr_folder, "cpu")

    ref = make_refiner(lr_model, str(tmp_path / "ref"), settings, sr, opt)
    ref_log = ref.run()
    assert ref_log["steps"][-1]["num_gaussians"] != ref.gaussians.num_points or \
        ref_log["steps"][0]["num_gaussians"] != ref_log["steps"][-1]["num_gaussians"]  # densification ran
    for name, kill_call in (("mid_step", 8 + 5), ("mid_final", 3 * 8 + 3)):
        run_dir = str(tmp_path / name)
        first = make_refiner(lr_model, run_dir, settings, sr, opt)
        kill_at(first, kill_call)
        with pytest.raises(Killed):
            first.run()
        resumed = make_refiner(lr_model, run_dir, settings, sr, opt)  # a fresh process' state
        log = resumed.run(resume=True)
        for key, value in ref.gaussians.params.items():
            assert torch.equal(value, resumed.gaussians.params[key]), (name, key)
        assert torch.equal(ref.gaussians.filter_3D, resumed.gaussians.filter_3D)
        strip = [{k: v for k, v in e.items() if k not in ("seconds", "peak_memory_mb")}
                 for e in log["steps"] + [log["final"]]]
        expected = [{k: v for k, v in e.items() if k not in ("seconds", "peak_memory_mb")}
                    for e in ref_log["steps"] + [ref_log["final"]]]
        assert strip == expected, name
        with open(os.path.join(run_dir, "point_cloud.ply"), "rb") as a, \
                open(os.path.join(str(tmp_path / "ref"), "point_cloud.ply"), "rb") as b:
            assert a.read() == b.read()


def test_resume_refuses_other_settings(lr_model, tiny_sr_folder, one_thread, tmp_path):
    from sr.loading import load_sr_model
    from training.sr_loop import SRSettings
    from utils.errors import ThreeDSRError

    sr = load_sr_model(tiny_sr_folder, "cpu")
    settings = SRSettings(mode="3dsr", steps=2, iters_per_step=3, final_iters=3)
    opt = fit_options(settings.total_iterations, densify=False)
    first = make_refiner(lr_model, str(tmp_path / "r"), settings, sr, opt, densify=False)
    kill_at(first, 5)
    with pytest.raises(Killed):
        first.run()
    other = SRSettings(mode="3dsr", steps=2, iters_per_step=3, final_iters=3, lambda_lr=0.5)
    with pytest.raises(ThreeDSRError, match="lambda_lr"):
        make_refiner(lr_model, str(tmp_path / "r"), other, sr, opt, densify=False).run(resume=True)
    other = SRSettings(mode="3dsr", steps=2, iters_per_step=3, final_iters=3, sr_options={"noise_level": 50})
    with pytest.raises(ThreeDSRError, match="sr_options"):
        make_refiner(lr_model, str(tmp_path / "r"), other, sr, opt, densify=False).run(resume=True)
    # a checkpoint written before the options were recorded resumes under any options
    path = os.path.join(str(tmp_path / "r"), "step_1", "checkpoint.pth")
    payload = torch.load(path, weights_only=False)
    del payload["settings"]["sr_options"]
    torch.save(payload, path)
    log = make_refiner(lr_model, str(tmp_path / "r"), other, sr, opt, densify=False).run(resume=True)
    assert log["complete"]


def test_published_update_resumes_bit_identical_and_needs_stablesr(lr_model, tiny_sr_folder, one_thread, tmp_path):
    """--published_update (StableSR-Turbo, tiny oracle weights): differs from the default update, a run
    killed inside step 3's fit resumes bit-identical (x_T travels in the checkpoint), the setting must
    match to resume, and other models / modes refuse it."""
    from sr.loading import load_sr_model
    from sr.stablesr.testing import save_tiny_weights
    from training.sr_loop import SRSettings
    from utils.errors import ThreeDSRError

    weights = save_tiny_weights(str(tmp_path / "w"), os.path.join(ROOT, "tests", "fixtures", "stablesr-tiny",
                                                                  "manifest.json"))
    sr = load_sr_model("stablesr-turbo", "cpu", sr_weights=weights)
    settings = SRSettings(mode="3dsr", steps=4, iters_per_step=2, final_iters=1, seed=3, published_update=True)
    opt = fit_options(settings.total_iterations, densify=False)
    ref = make_refiner(lr_model, str(tmp_path / "ref"), settings, sr, opt, densify=False, views=1)
    ref_log = ref.run()
    default = make_refiner(lr_model, str(tmp_path / "default"), SRSettings(**{**settings.__dict__,
                                                                               "published_update": False}),
                           sr, opt, densify=False, views=1)
    default_log = default.run()
    assert ref_log["steps"][-1]["fit_loss"] != default_log["steps"][-1]["fit_loss"]
    assert ref_log["settings"]["published_update"] is True

    run_dir = str(tmp_path / "killed")
    first = make_refiner(lr_model, run_dir, settings, sr, opt, densify=False, views=1)
    kill_at(first, 2 * 2 + 1)
    with pytest.raises(Killed):
        first.run()
    ckpt = torch.load(os.path.join(run_dir, "step_2", "checkpoint.pth"), weights_only=False)
    assert ckpt["latents"]["extra"]["x_T"].shape == ckpt["latents"]["latents"].shape
    with pytest.raises(ThreeDSRError, match="published_update"):
        make_refiner(lr_model, run_dir, SRSettings(**{**settings.__dict__, "published_update": False}), sr, opt,
                     densify=False, views=1).run(resume=True)
    resumed = make_refiner(lr_model, run_dir, settings, sr, opt, densify=False, views=1)
    resumed.run(resume=True)
    for key, value in ref.gaussians.params.items():
        assert torch.equal(value, resumed.gaussians.params[key]), key
    with open(os.path.join(run_dir, "point_cloud.ply"), "rb") as a, \
            open(os.path.join(str(tmp_path / "ref"), "point_cloud.ply"), "rb") as b:
        assert a.read() == b.read()

    with pytest.raises(ThreeDSRError, match="stablesr-turbo"):
        make_refiner(lr_model, str(tmp_path / "x4"), settings, load_sr_model(tiny_sr_folder, "cpu"), opt,
                     densify=False, views=1)
    with pytest.raises(ThreeDSRError, match="--steps 4"):
        make_refiner(lr_model, str(tmp_path / "s2"), SRSettings(**{**settings.__dict__, "steps": 2}), sr, opt,
                     densify=False, views=1)
    for bad in ({"mode": "per-view"}, {"eta": 1.0}):
        with pytest.raises(ThreeDSRError, match="published_update"):
            SRSettings(**{**settings.__dict__, **bad})


# ---- bad input -----------------------------------------------------------------------------------------
def expect_error(args, needle):
    proc = run(args, check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and needle in line, line
    return line


def test_bad_inputs_fail_cleanly(lr_model, tiny_scene, tiny_sr_folder, tmp_path):
    model = str(tmp_path / "model")
    shutil.copytree(lr_model, model)
    digest = tree_digest(model)
    base = ["sr_refine.py", "-m", model, "--steps", "1", "--iters_per_step", "2", "--final_iters", "1", "--quiet"]
    expect_error(base + ["--sr_model", "no-such-model"], "unknown SR model")
    expect_error(base + ["--sr_model", str(tmp_path / "missing_folder")], "does not exist")
    expect_error(base + ["--sr_model", tiny_sr_folder, "--scale", "3"], "upscales x4")
    expect_error(base + ["--mode", "bicubic", "--name", "300"], "is a number")
    expect_error(base + ["--mode", "bicubic", "--hr_images", str(tmp_path / "no_hr")], "does not exist")
    expect_error(base + ["--sr_model", tiny_sr_folder, "--scale", "2"], "upscales x4")
    expect_error(base + ["--mode", "nonsense"], "invalid choice: 'nonsense'")
    expect_error(base + ["--mode", "per-view", "--sr_model", tiny_sr_folder, "--published_update"],
                 "--published_update applies to --mode 3dsr")
    expect_error(base + ["--mode", "bicubic", "--iters_schedule", "2", "3"], "--iters_schedule has 2 entries")
    expect_error(base + ["--mode", "bicubic", "--iters_schedule", "fast"], "--iters_schedule takes 'ramp'")
    assert tree_digest(model) == digest  # nothing written, nothing lost

    # a model folder with no trained point cloud
    empty = str(tmp_path / "untrained")
    os.makedirs(empty)
    shutil.copy(os.path.join(model, "cfg_args"), empty)
    expect_error(["sr_refine.py", "-m", empty, "--mode", "bicubic"], "no saved iterations")

    # LR images missing: the scene's images_4 lacks a view
    scene = str(tmp_path / "scene")
    shutil.copytree(tiny_scene, scene)
    victim = sorted(os.listdir(os.path.join(scene, f"images_{LR_FACTOR}")))[1]
    os.remove(os.path.join(scene, f"images_{LR_FACTOR}", victim))
    cfg_path = os.path.join(model, "cfg_args")
    text = open(cfg_path).read()
    with open(cfg_path, "w") as f:
        f.write(text.replace(repr(os.path.abspath(tiny_scene)), repr(scene)))
    digest = tree_digest(model)
    expect_error(base + ["--mode", "bicubic"], "missing from")
    assert tree_digest(model) == digest

    # an existing run is not clobbered without --resume / --overwrite
    with open(cfg_path, "w") as f:
        f.write(text)
    run(base + ["--mode", "bicubic"])
    digest = tree_digest(model)
    expect_error(base + ["--mode", "bicubic"], "--resume")
    assert tree_digest(model) == digest
    run(base + ["--mode", "bicubic", "--overwrite"])


def test_sr_refine_cli_stablesr_turbo_tiny_end_to_end(lr_model, tmp_path):
    """--sr_model stablesr-turbo --sr_weights DIR with the tiny oracle weights (tests/fixtures/stablesr-tiny)."""
    from sr.stablesr.testing import save_tiny_weights
    weights = save_tiny_weights(str(tmp_path / "stablesr"),
                                os.path.join(ROOT, "tests", "fixtures", "stablesr-tiny", "manifest.json"))
    model = str(tmp_path / "model")
    shutil.copytree(lr_model, model)
    run(["sr_refine.py", "-m", model, "--sr_model", "stablesr-turbo", "--sr_weights", weights, "--steps", "2",
         "--iters_per_step", "3", "--iters_schedule", "uniform", "--final_iters", "2", "--no_step_images", "--quiet"])
    log = json.load(open(os.path.join(model, "sr", "sr", "log.json")))
    assert log["complete"] and [e["timestep"] for e in log["steps"]] == [999, 0]
    assert os.path.isfile(os.path.join(model, "sr", "sr", "point_cloud", "iteration_8", "point_cloud.ply"))
    expect_error(["sr_refine.py", "-m", model, "--sr_model", "stablesr-turbo", "--name", "other", "--quiet"],
                 "--sr_weights")


def test_prior_v2_base_through_the_loop_and_resume(lr_model, one_thread, tmp_path, monkeypatch):
    """A pixel prior on a Real-ESRGAN base (prior v2, tiny random weights in a private cache): the loop's
    decode / encode see the base of each view, computed once per view per run (also after a resume), and a
    run killed inside step 2 and resumed in a fresh refiner ends bit-identical."""
    from sr.loading import load_sr_model
    from sr.testing import save_tiny_pixel_prior, save_tiny_realesrgan
    from training.sr_loop import SRSettings

    monkeypatch.setenv("THREEDSR_CACHE", str(tmp_path / "cache"))
    save_tiny_realesrgan(str(tmp_path / "cache" / "isr" / "realesrgan-x4plus.safetensors"))
    folder = save_tiny_pixel_prior(str(tmp_path / "v2"), base="realesrgan-x4plus")
    settings = SRSettings(mode="3dsr", steps=2, iters_per_step=4, final_iters=3, eta=1.0, seed=3)
    opt = fit_options(settings.total_iterations, densify=False)

    def counted_prior():
        sr = load_sr_model(folder, "cpu")
        inner, calls = sr.bases.isr.upscale, []
        sr.bases.isr.upscale = lambda images: (calls.append(images.shape[0]), inner(images))[1]
        return sr, calls

    sr, calls = counted_prior()
    ref = make_refiner(lr_model, str(tmp_path / "ref"), settings, sr, opt, densify=False, views=3)
    ref_log = ref.run()
    assert sum(calls) == 3  # one base per view for the whole run
    first = make_refiner(lr_model, str(tmp_path / "k"), settings, counted_prior()[0], opt, densify=False, views=3)
    kill_at(first, 4 + 2)
    with pytest.raises(Killed):
        first.run()
    sr2, calls2 = counted_prior()
    log = make_refiner(lr_model, str(tmp_path / "k"), settings, sr2, opt, densify=False, views=3).run(resume=True)
    assert sum(calls2) == 3
    strip = [{k: v for k, v in e.items() if k not in ("seconds", "peak_memory_mb")} for e in log["steps"]]
    expected = [{k: v for k, v in e.items() if k not in ("seconds", "peak_memory_mb")} for e in ref_log["steps"]]
    assert strip == expected
    with open(tmp_path / "k" / "point_cloud.ply", "rb") as a, open(tmp_path / "ref" / "point_cloud.ply", "rb") as b:
        assert a.read() == b.read()


def test_stop_rule_ends_fits_early_and_keeps_the_global_numbering(lr_model, tiny_sr_folder, one_thread, tmp_path):
    """--fit_stop_db: a fit of at least two windows stops after two when the gain is below the threshold
    (100 dB: always); the next fit still starts where the schedule says; log.json counts what ran."""
    from sr.loading import load_sr_model
    from training.sr_loop import SRSettings
    from utils.errors import ThreeDSRError

    with pytest.raises(ThreeDSRError, match="fit_stop_db"):
        SRSettings(fit_stop_db=-1.0)
    settings = SRSettings(mode="3dsr", steps=2, iters_per_step=50, iters_schedule=[3, 10], final_iters=10,
                          fit_stop_db=100.0, fit_stop_window=1)
    assert "< 100 dB per 1 iterations" in settings.describe_iterations()
    sr = load_sr_model(tiny_sr_folder, "cpu")
    opt = fit_options(settings.total_iterations, densify=False)
    refiner = make_refiner(lr_model, str(tmp_path / "s"), settings, sr, opt, densify=False, views=2)
    calls, fit = [], refiner.fit
    refiner.fit = lambda targets, first, last, desc: calls.append((first, last)) or fit(targets, first, last, desc)
    log = refiner.run()
    assert calls == [(1, 3), (4, 13), (14, 23)]  # planned ranges: a stopped fit does not shift the next one
    entries = log["steps"] + [log["final"]]
    # window = 2 views: the 3-iteration fit never completes two windows; the others stop after 4
    assert [e["fit_iterations"] for e in entries] == [3, 4, 4]
    assert [e["fit_stopped_early"] for e in entries] == [False, True, True]
    assert [len(e["fit_agreement_db"]) for e in entries] == [1, 2, 2]  # completed windows
    assert log["fit_iterations"] == 11 and log["complete"]
    # the rule is part of the run's settings: a checkpoint does not resume without it
    off = SRSettings(mode="3dsr", steps=2, iters_per_step=50, iters_schedule=[3, 10], final_iters=10)
    with pytest.raises(ThreeDSRError, match="fit_stop_db"):
        make_refiner(lr_model, str(tmp_path / "s"), off, sr, opt, densify=False, views=2).run(resume=True)
    # off: every fit runs its planned count
    log = make_refiner(lr_model, str(tmp_path / "o"), off, sr, opt, densify=False, views=2).run()
    assert [e["fit_iterations"] for e in log["steps"] + [log["final"]]] == [3, 10, 10]
    assert not any(e["fit_stopped_early"] for e in log["steps"] + [log["final"]])
