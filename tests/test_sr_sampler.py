"""Tests for sr/sampler.py: timestep respacing and the DDIM step, checked against diffusers' DDIMScheduler.

The step is checked twice: on random tensors for several scheduler configs (fast, pure math), and with
z = x0 of a tiny x4-upscaler model (epsilon- and v-prediction) for the whole 4-step schedule, i.e. the
3DSR step with no 3D replacement.
"""
import math

import pytest
import torch

from sr.sampler import (TIMESTEP_SPACINGS, ddim_sigma, ddim_step, respaced_timesteps, split_prediction,
                        timestep_pairs)

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _scheduler(spacing="trailing", prediction_type="epsilon", set_alpha_to_one=False, steps_offset=1):
    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0001, beta_end=0.02, clip_sample=False,
                         set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset,
                         prediction_type=prediction_type, timestep_spacing=spacing)


@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
@pytest.mark.parametrize("num_steps", [1, 2, 3, 4, 7, 50, 1000])
def test_respaced_timesteps_match_diffusers(spacing, num_steps):
    sched = _scheduler(spacing)
    sched.set_timesteps(num_steps)
    ours = respaced_timesteps(1000, num_steps, spacing, steps_offset=1)
    assert ours.dtype == torch.long
    assert torch.equal(ours, sched.timesteps)
    assert len(set(ours.tolist())) == num_steps and all(a > b for a, b in zip(ours.tolist(), ours.tolist()[1:]))


def test_respaced_timesteps_values_and_errors():
    assert respaced_timesteps(1000, 4, "trailing").tolist() == [999, 749, 499, 249]
    assert respaced_timesteps(1000, 4, "leading", steps_offset=1).tolist() == [751, 501, 251, 1]
    assert respaced_timesteps(1000, 4, "linspace").tolist() == [999, 666, 333, 0]
    with pytest.raises(ValueError, match="steps"):
        respaced_timesteps(1000, 0)
    with pytest.raises(ValueError, match="spacing"):
        respaced_timesteps(1000, 4, "uniform")


def test_timestep_pairs():
    assert timestep_pairs(torch.tensor([999, 749, 499, 249])) == [(999, 749), (749, 499), (499, 249), (249, -1)]
    assert timestep_pairs([5]) == [(5, -1)]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_split_prediction_inverts_the_parameterisation(prediction_type):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g)
    a = 0.37
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    out = {"epsilon": eps, "sample": x0, "v_prediction": math.sqrt(a) * eps - math.sqrt(1 - a) * x0}[prediction_type]
    x0_hat, eps_hat = split_prediction(out, x_t, a, prediction_type)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_hat, eps, atol=1e-5, rtol=1e-5)


def test_ddim_sigma():
    assert ddim_sigma(0.3, 0.6, 0.0) == 0.0
    a_t, a_prev = 0.3, 0.6
    # eta = 1: the DDPM posterior standard deviation sqrt(beta~_t) with beta_t = 1 - a_t / a_prev.
    posterior_var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    assert ddim_sigma(a_t, a_prev, 1.0) == pytest.approx(math.sqrt(posterior_var))
    assert ddim_sigma(a_t, 1.0, 1.0) == 0.0  # the clean end: no noise left to add


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers_on_random_outputs(prediction_type, set_alpha_to_one, eta):
    sched = _scheduler("trailing", prediction_type, set_alpha_to_one)
    sched.set_timesteps(4)
    g = torch.Generator().manual_seed(1)
    final = 1.0 if set_alpha_to_one else float(sched.alphas_cumprod[0])
    for t, t_prev in timestep_pairs(sched.timesteps):
        x_t, out, noise = (torch.randn(2, 4, 6, 5, generator=g) for _ in range(3))
        a_t = float(sched.alphas_cumprod[t])
        a_prev = float(sched.alphas_cumprod[t_prev]) if t_prev >= 0 else final
        x0, eps = split_prediction(out, x_t, a_t, prediction_type)
        ours = ddim_step(x0, eps, a_t, a_prev, eta, noise=noise)
        ref = sched.step(out, t, x_t, eta=eta, variance_noise=noise)
        torch.testing.assert_close(x0, ref.pred_original_sample, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(ours, ref.prev_sample, atol=2e-5, rtol=1e-5)


def test_ddim_step_noise_from_generator_is_reproducible_and_eta0_draws_nothing():
    z, eps = torch.zeros(1, 4, 3, 3), torch.ones(1, 4, 3, 3)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = ddim_step(z, eps, 0.2, 0.5, 1.0, generator=g1)
    b = ddim_step(z, eps, 0.2, 0.5, 1.0, generator=g2)
    assert torch.equal(a, b)
    state = g1.get_state()
    ddim_step(z, eps, 0.2, 0.5, 0.0, generator=g1)
    assert torch.equal(g1.get_state(), state)


# ---- with a tiny model: z = x0 of the model, i.e. the 3DSR step without 3D replacement -------------

@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def tiny_model(request, tmp_path_factory):
    from sr import load_sr_model
    from sr.testing import save_tiny_x4_upscaler
    folder = save_tiny_x4_upscaler(str(tmp_path_factory.mktemp("tiny") / request.param),
                                   prediction_type=request.param, with_text_encoder=False)
    return load_sr_model(folder, "cpu", torch.float32)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_model_step_equals_ddim_scheduler_step(tiny_model, eta):
    sr = tiny_model
    sched = DDIMScheduler.from_config(sr.scheduler.config, timestep_spacing="trailing")
    sched.set_timesteps(4)
    assert torch.equal(sr.timesteps(4), sched.timesteps)
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(2, 3, 12, 16, generator=g)
    cond = sr.init_cond_noise(lr, g)
    x_t = sr.init_latents(lr, g)
    for t, t_prev in timestep_pairs(sr.timesteps(4)):
        raw = sr.model_output(x_t, t, lr, cond)
        x0, eps = sr.predict(x_t, t, lr, cond)
        noise = torch.randn(x_t.shape, generator=g)
        ours = sr.step(x0, eps, t, t_prev, eta, noise=noise)
        ref = sched.step(raw, t, x_t, eta=eta, variance_noise=noise)
        torch.testing.assert_close(x0, ref.pred_original_sample, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(ours, ref.prev_sample, atol=2e-5, rtol=1e-5)
        x_t = ref.prev_sample
