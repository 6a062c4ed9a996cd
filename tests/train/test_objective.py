"""The trainer's `Objective`s: each one's schedule, t draws and loss against values computed here
independently (diffusers' DDPMScheduler for the VP tables, the closed-form flow table, the targets
and min-SNR weights written out by hand in float64), and the train step's draws come from it."""

import numpy as np
import pytest
import torch

from dfedit.schedule import NoiseSchedule
from dfedit_train.config import DiffusionConfig
from dfedit_train.diffusion import OBJECTIVE_ALIASES, OBJECTIVES, Diffusion, EpsObjective, Objective
from dfedit_train.step import draw_batch

CASES = {  # --objective name: (DiffusionConfig fields, prediction type dfedit reads)
    "eps": ({}, "epsilon"),
    "v": ({"prediction_type": "v_prediction", "beta_schedule": "linear"}, "v_prediction"),
    "x0": ({"prediction_type": "sample", "beta_schedule": "sigmoid"}, "sample"),
    "flow": ({"prediction_type": "flow_prediction", "beta_schedule": "flow"}, "flow_prediction"),
}


def _config(name, **kw):
    fields, _ = CASES[name]
    return DiffusionConfig(**{**fields, **kw})


def _abar_reference(dc: DiffusionConfig) -> np.ndarray:
    """abar per timestep from outside dfedit: diffusers for the VP schedules, the formula for flow."""
    T = dc.num_train_timesteps
    if dc.beta_schedule == "flow":
        s = (np.arange(T, dtype=np.float64) + 1) / (T + 1)
        return (1 - s) ** 2 / ((1 - s) ** 2 + s**2)
    from diffusers import DDPMScheduler
    return DDPMScheduler(num_train_timesteps=T, beta_schedule=dc.beta_schedule).alphas_cumprod.double().numpy()


def test_every_objective_name_has_one_objective():
    assert sorted(set(OBJECTIVE_ALIASES.values())) == sorted(OBJECTIVES)
    for name, (_, pred) in CASES.items():
        obj = Objective.from_config(_config(name))
        assert type(obj) is OBJECTIVES[pred] and obj.prediction_type == pred


@pytest.mark.parametrize("name", list(CASES))
def test_the_schedule_an_objective_implies_is_what_dfedit_reads(name):
    """The trainer's noise levels (the objective's schedule) against what dfedit reads back from a
    checkpoint's config.json (its `diffusion` section, through the loaders' one reader)."""
    import dataclasses
    import json

    from dfedit.emoji.config import schedule_of
    dc = _config(name)
    trained = Objective.from_config(dc).schedule
    sched = schedule_of(json.loads(json.dumps({"diffusion": dataclasses.asdict(dc)})))
    assert torch.equal(sched.alphas_cumprod, trained.alphas_cumprod)
    assert (sched.prediction_type, sched.flow_matching) == (trained.prediction_type, trained.flow_matching)
    assert sched.prediction_type == CASES[name][1] and sched.clip_sample and sched.variance_type == "fixed_small"
    assert sched.flow_matching == (name == "flow")
    np.testing.assert_allclose(sched.alphas_cumprod.double().numpy(), _abar_reference(dc), rtol=2e-6, atol=1e-9)


def _expected_loss(name: str, out, x0, eps, ab, gamma: float) -> np.ndarray:
    """Per-sample loss written out in float64: MSE on the target, times min(SNR, gamma) over the
    weight that MSE on that target puts on the x0 error."""
    out, x0, eps = (v.double().numpy() for v in (out, x0, eps))
    ab = ab.reshape(-1, 1, 1, 1)
    a, s = np.sqrt(ab), np.sqrt(1 - ab)
    target = {"eps": eps, "v": a * eps - s * x0, "x0": x0, "flow": eps - x0}[name]
    per = ((out - target) ** 2).mean(axis=(1, 2, 3))
    if gamma > 0:
        snr = (ab / (1 - ab)).reshape(-1)
        implied = {"eps": snr, "v": snr + 1, "x0": np.ones_like(snr),
                   "flow": ((a + s) / s).reshape(-1) ** 2}[name]
        per = per * np.minimum(snr, gamma) / implied
    return per


@pytest.mark.parametrize("gamma", [0.0, 5.0])
@pytest.mark.parametrize("name", list(CASES))
def test_loss_is_mse_on_the_target_with_min_snr_weights(name, gamma):
    dc = _config(name, min_snr_gamma=gamma)
    diff = Diffusion(dc, [0.1, -0.2, 0.3], [0.5, 0.6, 0.7])
    g = torch.Generator().manual_seed(11)
    x0, eps, out = (torch.randn(4, 3, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([3, 250, 640, 990])
    seen = {}

    def net(x_in, tt, text, mask):  # a "network" that returns a fixed output and records its input
        seen["x_in"], seen["t"] = x_in, tt
        return out

    loss = diff.loss(net, x0, t, eps, None, None)
    ab = _abar_reference(dc)[t.numpy()]
    np.testing.assert_allclose(loss.double().numpy(), _expected_loss(name, out, x0, eps, ab, gamma), rtol=1e-3)
    # It scored the network on x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, preconditioned.
    x_t = torch.from_numpy(np.sqrt(ab).reshape(-1, 1, 1, 1)) * x0.double() + \
        torch.from_numpy(np.sqrt(1 - ab).reshape(-1, 1, 1, 1)) * eps.double()
    torch.testing.assert_close(seen["x_in"], diff.net_input(x_t.float(), t), atol=1e-5, rtol=1e-5)
    assert torch.equal(seen["t"], t)


def test_draw_batch_takes_its_timesteps_from_the_objective():
    D = {"x": torch.zeros(6, 3, 4, 4), "text": torch.zeros(6, 2, 8), "mask": torch.ones(6, 2, dtype=torch.bool),
         "flip_ok": torch.zeros(6, dtype=torch.bool)}
    idx = torch.arange(5)
    # The default: uniform over the T levels, the first draw from the step's generator.
    _, t, noise, _, _ = draw_batch(D, idx, torch.Generator().manual_seed(4), EpsObjective(1000), 0.0, 0.0)
    ref = torch.Generator().manual_seed(4)
    assert torch.equal(t, torch.randint(0, 1000, (5,), generator=ref))
    assert torch.equal(noise, torch.randn((5, 3, 4, 4), generator=ref))

    class Fixed(EpsObjective):  # an objective that trains at one noise level only
        def sample_t(self, n, generator, device):
            return torch.full((n,), 321, device=device)

    _, t, _, _, _ = draw_batch(D, idx, torch.Generator().manual_seed(4), Fixed(1000), 0.0, 0.0)
    assert t.tolist() == [321] * 5


def test_a_schedule_that_does_not_go_with_the_objective_is_one_sentence():
    from dfedit.errors import DfeditError
    with pytest.raises(DfeditError, match="unknown noise schedule 'cubic'"):
        Objective.from_config(DiffusionConfig(beta_schedule="cubic")).scheduler_config()
    with pytest.raises(DfeditError, match="unsupported prediction_type 'score'"):
        Diffusion(DiffusionConfig(prediction_type="score"), [0.0] * 3, [1.0] * 3)


def test_the_shipped_models_stored_schedule_is_what_its_objective_implies():
    """The built-in model's config.json was written before objectives were classes: its stored
    scheduler config is still exactly what its diffusion section's objective implies now."""
    import json
    from pathlib import Path

    import dfedit
    from dfedit_train.config import from_dict

    cfg = json.loads((Path(dfedit.__file__).parent / "weights" / "emoji" / "config.json").read_text())
    dc = from_dict(DiffusionConfig, cfg["diffusion"])
    assert Objective.from_config(dc).scheduler_config() == cfg["schedule"]
    assert Objective.from_config(dc).prediction_type == "v_prediction"


@pytest.mark.parametrize("sched", ["squaredcos_cap_v2", "linear", "sigmoid"])
def test_schedule_config_is_dfedits(sched):
    dc = DiffusionConfig(beta_schedule=sched)
    s = NoiseSchedule.from_config(dc.scheduler_config())
    assert s.num_train_timesteps == 1000 and s.prediction_type == "epsilon" and s.variance_type == "fixed_small"
    assert s.alphas_cumprod[0] > 0.99 and s.alphas_cumprod[-1] < 0.01


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_objective_targets_convert_back_to_the_noise(pred):
    """For a perfect model, the per-sample to_eps and dfedit's model_output_to_eps both recover eps."""
    diff = Diffusion(DiffusionConfig(prediction_type=pred), [0.0] * 3, [1.0] * 3)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([5, 400, 990])
    ab = diff.abar[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    target = {"epsilon": eps, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0, "sample": x0}[pred]
    tol = 1e-3 if pred == "sample" else 1e-4  # x0 -> eps divides by sqrt(1 - abar), small at t = 5
    assert torch.allclose(diff.to_eps(target, x_t, t), eps, atol=tol)
    for i in range(3):
        got = diff.schedule.model_output_to_eps(target[i:i + 1], x_t[i:i + 1], int(t[i]))
        assert torch.allclose(got, eps[i:i + 1], atol=tol)
    # And the training loss of that perfect output is zero.
    net = lambda x, tt, text, mask: target  # noqa: E731
    assert diff.loss(net, x0, t, eps, None, None).abs().max() < 1e-6


def test_preconditioning_standardises_each_channel():
    mean, std = [0.5, -0.2, 0.1], [0.3, 0.6, 0.4]
    diff = Diffusion(DiffusionConfig(), mean, std)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4000, 3, 2, 2, generator=g) * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    for tv in (0, 300, 999):
        t = torch.full((4000,), tv)
        ab = diff.abar[t].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=g)
        z = diff.net_input(x_t, t)
        assert z.mean(dim=(0, 2, 3)).abs().max() < 0.05
        assert (z.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


def test_min_snr_weights_are_min_not_max():
    diff = Diffusion(DiffusionConfig(min_snr_gamma=5.0), [0.0] * 3, [1.0] * 3)
    x0 = torch.zeros(2, 3, 4, 4)
    noise = torch.ones(2, 3, 4, 4)
    net = lambda x, t, a, b: torch.zeros_like(x)  # noqa: E731  loss 1 per sample before weighting
    t = torch.tensor([1, 999])  # huge SNR at t=1 -> weight gamma/snr << 1; tiny SNR -> weight 1
    w = diff.loss(net, x0, t, noise, None, None)
    assert w[0] < 0.01 and abs(float(w[1]) - 1.0) < 1e-5


@pytest.mark.parametrize("pred", list(OBJECTIVES))
def test_objectives_convert_back_and_min_snr_weighs_the_x0_error_alike(pred):
    """For every objective: a perfect output converts back to eps (trainer and dfedit), and with
    min-SNR-gamma the loss of an output that is off by dx0 in x0 (at fixed x_t) is min(SNR, gamma) |dx0|^2."""
    dc = (DiffusionConfig(prediction_type="flow_prediction", beta_schedule="flow") if pred == "flow_prediction"
          else DiffusionConfig(prediction_type=pred))
    gamma = 5.0
    diff = Diffusion(DiffusionConfig(**{**dc.__dict__, "min_snr_gamma": gamma}), [0.0] * 3, [1.0] * 3)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand((3, 3, 8, 8), generator=g) * 1.8 - 0.9, torch.randn((3, 3, 8, 8), generator=g)
    t = torch.tensor([30, 400, 900])
    ab = diff.abar[t].view(-1, 1, 1, 1)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x_t = a * x0 + s * eps
    target = diff.objective.target(x0, eps, a, s)
    torch.testing.assert_close(diff.to_eps(target, x_t, t), eps, atol=2e-3, rtol=0)
    for i in range(3):
        got = diff.schedule.model_output_to_eps(target[i:i + 1], x_t[i:i + 1], int(t[i]))
        torch.testing.assert_close(got, eps[i:i + 1], atol=2e-3, rtol=0)
    d = 0.01 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    off = diff.objective.target(x0 + d, (x_t - a * (x0 + d)) / s, a, s)  # same x_t, x0 off by d
    loss = diff.loss(lambda *args: off, x0, t, eps, None, None)
    snr = (ab / (1 - ab)).flatten()
    torch.testing.assert_close(loss, torch.clamp(snr, max=gamma) * (d**2).mean(dim=(1, 2, 3)), rtol=1e-3, atol=0)
