"""The schedule, the strided step and the loop: against diffusers bit-for-bit, and against oracles."""

import pytest
import torch
from diffusers import DDPMScheduler

from helpers import OracleDenoiser, clean_image
from dfedit.sampler import cfg, conditioned, denoise_loop, step_pairs
from dfedit.schedule import NoiseSchedule

COURSE_TS = list(range(990, -1, -30))


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_schedule_table_equals_diffusers(beta_schedule):
    ref = DDPMScheduler(beta_schedule=beta_schedule)
    ours = NoiseSchedule.from_config(dict(ref.config))
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)


def test_strided_timesteps_follow_the_course():
    s = NoiseSchedule.from_config({"beta_schedule": "squaredcos_cap_v2"})
    assert s.strided_timesteps(30) == COURSE_TS and len(COURSE_TS) == 34
    assert [COURSE_TS[i] for i in (1, 3, 5, 7, 10, 20)] == [960, 900, 840, 780, 690, 390]
    assert s.strided_timesteps(10)[:3] == [990, 980, 970]
    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    ref.set_timesteps(50)
    assert s.leading_timesteps(50) == ref.timesteps.tolist()  # stage II's default 50 steps


@pytest.mark.parametrize("variance_type,thresholding", [("learned_range", True), ("learned_range", False),
                                                         ("fixed_small", False), ("fixed_large", True)])
def test_step_equals_ddpm_scheduler_step(variance_type, thresholding):
    """Every strided pair, terminal step included, against DDPMScheduler.step with the same draws."""
    config = dict(beta_schedule="squaredcos_cap_v2", variance_type=variance_type, thresholding=thresholding,
                  dynamic_thresholding_ratio=0.95, sample_max_value=1.5, clip_sample=True)
    ref = DDPMScheduler(**config)
    ref.set_timesteps(timesteps=COURSE_TS)
    ours = NoiseSchedule.from_config(dict(ref.config))
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8) * 1.5
    g_ref, g_ours = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    from dfedit.sampler import randn
    for t, t_prev in step_pairs(COURSE_TS):
        eps, var = torch.randn(2, 3, 8, 8), torch.rand(2, 3, 8, 8) * 2 - 1
        learned = variance_type == "learned_range"
        out = torch.cat([eps, var], 1) if learned else eps
        expect = ref.step(out, t, x, generator=g_ref).prev_sample
        noise = randn(eps.shape, g_ours, "cpu", eps.dtype) if t > 0 else None
        got, _ = ours.step(x, eps, var if learned else None, ours.step_coefficients(t, t_prev), noise)
        assert torch.equal(got, expect), (t, (got - expect).abs().max())
        x = expect


def test_oracle_loop_returns_the_clean_image(if_schedule):
    x0 = clean_image()
    oracle = OracleDenoiser(x0, if_schedule)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(1, 3, 16, 16, generator=g)
    out = denoise_loop(conditioned(oracle, None), x_T, COURSE_TS, if_schedule, g)
    assert (out - x0).abs().max() < 1e-5
    assert [t for t, _ in oracle.calls] == COURSE_TS  # 34 model calls, terminal step included


def test_oracle_loop_catches_a_wrong_formula(if_schedule, monkeypatch):
    """Plant abar[t'] where abar[t] belongs in the x0 estimate: the oracle test must fail."""
    x0 = clean_image()
    good = NoiseSchedule.step_coefficients

    def wrong(self, t, t_prev):
        c = good(self, t, t_prev)
        c.sqrt_abar = self.abar(t_prev) ** 0.5
        c.sqrt_one_minus_abar = (1 - self.abar(t_prev)) ** 0.5
        return c

    monkeypatch.setattr(NoiseSchedule, "step_coefficients", wrong)
    g = torch.Generator().manual_seed(0)
    out = denoise_loop(conditioned(OracleDenoiser(x0, if_schedule), None), torch.randn(1, 3, 16, 16, generator=g),
                       COURSE_TS, if_schedule, g)
    assert (out - x0).abs().max() > 1e-2


def test_without_terminal_step_the_loop_is_off_by_the_last_noise(if_schedule):
    """A loop that stops at t = 0 (CS180 style) is one step short: about sigma_0 ~ 0.02 away."""
    x0 = clean_image()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 16, 16, generator=g)
    oracle = OracleDenoiser(x0, if_schedule)
    states = []
    denoise_loop(conditioned(oracle, None), x, COURSE_TS, if_schedule, g,
                 callback=lambda i, t, tp, xp, x0h: states.append((tp, xp)))
    before_last = dict(states)[0]
    err = (before_last - x0).abs().max().item()
    assert 1e-3 < err < 0.2


def test_forward_jump_pairs_renoise_without_calling_the_model(if_schedule):
    """A pair with t' > t (RePaint resampling) re-noises: the oracle still converges to x0."""
    x0 = clean_image()
    oracle = OracleDenoiser(x0, if_schedule)
    ts = [990, 960, 930, 960, 930, 900] + list(range(870, -1, -30))
    g = torch.Generator().manual_seed(0)
    out = denoise_loop(conditioned(oracle, None), torch.randn(1, 3, 16, 16, generator=g), ts, if_schedule, g)
    assert (out - x0).abs().max() < 1e-5
    assert len(oracle.calls) == len(ts) - 1  # the one upward pair made no model call


def test_cfg_is_one_batched_call_and_matches_two_calls(if_schedule):
    from dfedit.denoiser import Cond

    class Linear:
        """eps depends on the conditioning so guidance is visible; records batch sizes."""
        schedule, calls = if_schedule, []

        def __call__(self, x, t, cond):
            self.calls.append(x.shape[0])
            e = x * 0.5 + cond.text.mean(dim=(1, 2)).view(-1, 1, 1, 1)
            return e, x * 0.1 + cond.text[:, 0, 0].view(-1, 1, 1, 1)

    den = Linear()
    c, u = Cond(text=torch.full((2, 4, 8), 1.0)), Cond(text=torch.full((2, 4, 8), -1.0))
    x = torch.randn(2, 3, 4, 4)
    eps, var = cfg(den, c, u, 7.0)(x, 500)
    assert den.calls == [4]
    e_c, v_c = den(x, 500, c)
    e_u, _ = den(x, 500, u)
    assert torch.allclose(eps, e_u + 7.0 * (e_c - e_u))
    assert torch.equal(var, v_c)  # variance from the conditional half
    den.calls.clear()
    eps1, _ = cfg(den, c, u, 1.0)(x, 500)
    assert den.calls == [2] and torch.equal(eps1, e_c)


def test_same_seed_same_output_different_seed_different(if_schedule):
    x0 = clean_image()
    oracle = OracleDenoiser(x0 * 3, if_schedule)  # out of range: thresholding and noise both matter

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return denoise_loop(conditioned(oracle, None), torch.randn(1, 3, 16, 16, generator=g),
                            COURSE_TS[:10], if_schedule, g)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


@pytest.mark.parametrize("shape", [(1, 12288), (3, 777), (2, 5)])
@pytest.mark.parametrize("q", [0.0, 0.5, 0.95, 0.995, 1.0])
def test_selection_quantile_equals_torch_quantile(shape, q):
    from dfedit.schedule import quantile

    flat = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape) + int(q * 1000))).abs()
    assert torch.equal(quantile(flat, q), torch.quantile(flat, q, dim=1))
