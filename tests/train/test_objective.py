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
    dc = _config(name)
    cfg = Objective.from_config(dc).scheduler_config()
    assert cfg == dc.scheduler_config()  # what every checkpoint's config.json stores
    sched = NoiseSchedule.from_config(cfg)
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
