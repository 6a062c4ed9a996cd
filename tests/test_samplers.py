"""The sampler registry: every sampler against oracles, an exact ODE solution, and diffusers.

- an oracle denoiser (it knows the clean image) is returned to 1e-5 by every sampler;
- on Gaussian data the probability-flow ODE has a closed-form solution: the ODE samplers converge
  to it at their order (Euler 1, Heun 2) and DPM-Solver++(2M) beats Euler at equal model calls;
- DPM-Solver++(2M) equals diffusers' DPMSolverMultistepScheduler step by step (1e-5), and through
  the tiny IF checkpoints equals IFPipeline with that scheduler (1e-5);
- Euler is DDIM (eta 0).
"""

import inspect

import pytest
import torch

from helpers import OracleDenoiser, clean_image
from dfedit.constants import SAMPLER_NAMES
from dfedit.errors import DfeditError
from dfedit.sampler import conditioned, denoise_loop, plan_timesteps
from dfedit.samplers import SAMPLERS, get_sampler
from dfedit.schedule import NoiseSchedule

PROMPT = "an oil painting of a snowy mountain village"
COURSE_TS = list(range(990, -1, -30))  # the course's stride-30 list
# (sampler, eta) pairs that cover every registered sampler, DDIM both deterministic and stochastic
EVERY = [(n, 0.0) for n in SAMPLERS] + [("ddim", 1.0)]


def test_registry_is_what_the_cli_offers_and_shares_one_signature():
    assert tuple(SAMPLERS) == SAMPLER_NAMES
    sigs = {n: list(inspect.signature(s.step).parameters) for n, s in SAMPLERS.items()}
    assert all(p == ["ctx", "x", "t", "t_prev"] for p in sigs.values()), sigs
    with pytest.raises(DfeditError, match="^sampler 'plms' is unknown: use ddpm, ddim, dpmpp-2m, euler, heun$"):
        get_sampler("plms")


def test_steps_count_model_calls():
    s = NoiseSchedule.from_config({"beta_schedule": "squaredcos_cap_v2"})
    ts = plan_timesteps(s, "dpmpp-2m", steps=20)
    assert ts[:3] == [999, 949, 899] and ts[-1] == 50 and len(ts) == 20  # diffusers' "linspace"
    assert SAMPLERS["dpmpp-2m"].model_calls(ts) == 20
    heun = plan_timesteps(s, "heun", steps=19)
    assert len(heun) == 10 and SAMPLERS["heun"].model_calls(heun) == 19  # 2 per step, 1 for the last
    assert plan_timesteps(s, "ddpm") == list(range(990, -1, -30))  # default: stride 30
    with pytest.raises(DfeditError, match="^stride and steps cannot both be given"):
        plan_timesteps(s, "ddpm", stride=30, steps=20)
    with pytest.raises(DfeditError, match="^steps must be"):
        plan_timesteps(s, "ddpm", steps=0)


@pytest.mark.parametrize("name,eta", EVERY)
@pytest.mark.parametrize("grid", ["stride", "steps"])
def test_oracle_is_returned_by_every_sampler(if_schedule, name, eta, grid):
    x0 = clean_image()
    oracle = OracleDenoiser(x0, if_schedule)
    ts = plan_timesteps(if_schedule, name, stride=30 if grid == "stride" else None,
                        steps=20 if grid == "steps" else None)
    g = torch.Generator().manual_seed(0)
    out = denoise_loop(conditioned(oracle, None), torch.randn(1, 3, 16, 16, generator=g), ts, if_schedule, g,
                       sampler=name, eta=eta)
    assert (out - x0).abs().max() < 1e-5
    assert len(oracle.calls) == SAMPLERS[name].model_calls(ts)


def _gaussian_problem(beta_schedule):
    """Data x0 ~ N(mu, c^2) per pixel: the exact denoiser is linear, and the probability-flow ODE keeps
    z = (x_t - alpha mu) / sqrt(alpha^2 c^2 + sigma^2) fixed, so x_T goes to exactly mu + c z."""
    cfg = {"flow_matching": True} if beta_schedule == "flow" else {"beta_schedule": beta_schedule}
    s = NoiseSchedule.from_config({**cfg, "clip_sample": False})
    mu, c = 0.3, 0.5

    def eps_fn(x, t):
        a, sg = s.alpha_sigma(t)
        x0 = mu + a * c**2 / (a**2 * c**2 + sg**2) * (x - a * mu)
        return (x - a * x0) / sg, None

    def solve(name, calls):
        ts = plan_timesteps(s, name, steps=calls)
        a, sg = s.alpha_sigma(ts[0])
        x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        exact = mu + c * (x - a * mu) / (a**2 * c**2 + sg**2) ** 0.5
        return (denoise_loop(eps_fn, x, ts, s, None, sampler=name) - exact).abs().max().item()

    return solve


@pytest.mark.parametrize("beta_schedule", ["squaredcos_cap_v2", "linear", "flow"])
def test_ode_samplers_converge_to_the_exact_solution_at_their_order(beta_schedule):
    solve = _gaussian_problem(beta_schedule)
    euler = [solve("euler", n) for n in (20, 40, 80)]
    heun = [solve("heun", n) for n in (20, 40, 80)]
    assert 1.8 < euler[0] / euler[1] < 2.1 and 1.8 < euler[1] / euler[2] < 2.1  # first order
    assert 2.8 < heun[1] / heun[2] < 4.6  # second order
    assert heun[2] < euler[2] / 2 and solve("dpmpp-2m", 80) < euler[2] / 10
    assert solve("ddim", 40) == pytest.approx(euler[1], rel=1e-4)  # Euler is DDIM (eta 0)


def test_dpmpp_beats_euler_and_heun_at_20_calls_on_the_cosine_schedule():
    solve = _gaussian_problem("squaredcos_cap_v2")
    assert solve("dpmpp-2m", 20) < min(solve("euler", 20), solve("heun", 20)) / 10


def _dpm_scheduler(config: dict, **kw):
    from diffusers import DPMSolverMultistepScheduler
    return DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero", euler_at_final=False, use_karras_sigmas=False, timestep_spacing="linspace", **kw)


@pytest.mark.parametrize("steps", [10, 20, 25])
@pytest.mark.parametrize("beta_schedule,thresholding", [("squaredcos_cap_v2", True), ("squaredcos_cap_v2", False),
                                                        ("linear", False)])
def test_dpmpp_2m_step_by_step_equals_diffusers(steps, beta_schedule, thresholding):
    from diffusers import DDPMScheduler
    base = DDPMScheduler(beta_schedule=beta_schedule, thresholding=thresholding, dynamic_thresholding_ratio=0.95,
                         sample_max_value=1.5, clip_sample=False).config
    ref = _dpm_scheduler(base)
    ref.set_timesteps(steps)
    ours = NoiseSchedule.from_config(dict(base))
    ts = plan_timesteps(ours, "dpmpp-2m", steps=steps)
    assert ts == ref.timesteps.tolist()
    w = torch.randn(3, 3, 1, 1, generator=torch.Generator().manual_seed(1))

    def model(x, t):  # any deterministic function of (x, t)
        return torch.nn.functional.conv2d(x, w) * 0.3 + x * 0.9 + t / 1000, None

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    expect = x
    for t in ref.timesteps:
        expect = ref.step(model(expect, int(t))[0], t, expect).prev_sample
    got = denoise_loop(model, x, ts, ours, None, sampler="dpmpp-2m")
    assert (got - expect).abs().max() <= 1e-5


@pytest.mark.parametrize("steps", [8, 20])
def test_dpmpp_2m_on_tiny_if_equals_ifpipeline_with_dpm_solver(tiny_models, steps):
    """IFPipeline + DPMSolverMultistepScheduler (dpmsolver++, order 2, IF's own thresholding, learned
    variance dropped) against `dfedit sample --sampler dpmpp-2m --steps N`: max difference <= 1e-5."""
    from diffusers import IFPipeline

    from dfedit import DFEdit

    p1, p2 = tiny_models
    pipe = IFPipeline.from_pretrained(p1, safety_checker=None, watermarker=None, feature_extractor=None,
                                      requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.thresholding and pipe.scheduler.config.variance_type == "learned_range"
    pipe.scheduler = _dpm_scheduler(pipe.scheduler.config)
    ref = pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.0, generator=torch.Generator().manual_seed(7),
               clean_caption=False, output_type="pt", num_images_per_prompt=2).images
    res = DFEdit(model=str(p1), stage2=str(p2), device="cpu", quiet=True).sample(
        PROMPT, seed=7, cfg=7.0, steps=steps, sampler="dpmpp-2m", num_samples=2, upscale=False)
    assert res.images.shape == ref.shape
    assert (res.images - ref).abs().max() <= 1e-5
    assert res.meta["sampler"] == "dpmpp-2m" and res.meta["steps"] == steps and res.meta["stride"] is None


def test_resampling_needs_a_stochastic_sampler(if_schedule):
    x0 = clean_image()
    ts = [990, 960, 930, 960, 930, 900] + list(range(870, -1, -30))
    g = torch.Generator().manual_seed(0)
    for name, eta in EVERY:
        run = lambda: denoise_loop(conditioned(OracleDenoiser(x0, if_schedule), None),  # noqa: E731
                                   torch.randn(1, 3, 16, 16, generator=g), ts, if_schedule, g, sampler=name, eta=eta)
        if SAMPLERS[name].stochastic(eta):
            assert (run() - x0).abs().max() < 1e-5
        else:
            # the library names parameters, not flags
            with pytest.raises(DfeditError, match=r"^jump_n_sample > 1 \(RePaint resampling\) needs a sampler "
                                                  r"that draws fresh noise.*use sampler ddpm, or ddim with eta > 0"):
                run()


def test_eta_is_refused_by_samplers_that_ignore_it(if_schedule):
    with pytest.raises(DfeditError, match="^eta applies to sampler ddim only"):
        denoise_loop(lambda x, t: (x, None), torch.zeros(1, 3, 4, 4), [990, 0], if_schedule, sampler="dpmpp-2m", eta=0.5)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("thresholding", [False, True])
def test_ddim_loop_equals_ddim_scheduler(eta, thresholding):
    """DDIM through the one loop == diffusers' DDIMScheduler (100 steps = our stride 10, final abar 1).

    With thresholding the matching configuration is use_clipped_model_output=True: dfedit's DDIM
    points the direction term at the thresholded x0 (NoiseSchedule.ddim_step says why)."""
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(beta_schedule="squaredcos_cap_v2", set_alpha_to_one=True, thresholding=thresholding,
                        sample_max_value=1.5, clip_sample=False)
    ref.set_timesteps(100)
    ours = NoiseSchedule.from_config(dict(ref.config))
    ts = ours.strided_timesteps(10)
    assert ts == ref.timesteps.tolist()
    w = torch.randn(3, 3, 1, 1, generator=torch.Generator().manual_seed(1))

    def model(x, t):  # any deterministic function of (x, t) will do
        return torch.nn.functional.conv2d(x, w) * 0.3 + t / 1000, None

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    expect = x
    for t in ref.timesteps:
        expect = ref.step(model(expect, int(t))[0], t, expect, eta=eta, generator=g,
                          use_clipped_model_output=thresholding).prev_sample
    got = denoise_loop(model, x, ts, ours, torch.Generator().manual_seed(3), eta=eta)
    assert torch.equal(got, expect)


def test_ddim_oracle_returns_the_clean_image(if_schedule):
    x0 = clean_image()
    g = torch.Generator().manual_seed(0)
    for eta in (0.0, 1.0):
        out = denoise_loop(conditioned(OracleDenoiser(x0, if_schedule), None), torch.randn(1, 3, 16, 16, generator=g),
                           COURSE_TS, if_schedule, g, eta=eta)
        assert (out - x0).abs().max() < 1e-5
