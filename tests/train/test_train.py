"""Training: a step changes the weights, resume is bit-exact, checkpoints round-trip, sampling
goes through dfedit's loop, the non-finite guard skips a step."""

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from dfedit.denoiser import Denoiser
from dfedit.errors import DfeditError
from dfedit.sampler import cfg, denoise_loop, randn
from dfedit_train import checkpoint as ckpt
from dfedit_train.diffusion import Diffusion
from dfedit_train.sample import sample
from dfedit_train.train import lr_at, resolve_configs, train


def run(out, cfgs, **kw):
    mc, dc, tc, dac = cfgs
    return train(out, mc, dc, tc, dac, progress=False, **kw)


def tensors(out, which):
    return ckpt.load_tensors(ckpt.resolve(out), which)


def test_one_step_changes_the_weights(tmp_path, tiny):
    cfgs = tiny(epochs=1, sample_every=0)
    torch.manual_seed(cfgs[2].seed)
    from dfedit.emoji.unet import UNet
    init = {k: v.clone() for k, v in UNet(replace(cfgs[0], text_dim=32)).state_dict().items()}
    r = run(tmp_path / "run", cfgs, max_steps=1)
    assert r["step"] == 1 and r["stopped_early"]
    after = tensors(tmp_path / "run", "model")
    assert set(after) == set(init)
    changed = {k for k in init if not torch.equal(init[k], after[k])}
    # Zero-initialised output layers: step 1 only has gradient at the head, which must move.
    assert {"out_conv.weight", "out_conv.bias"} <= changed
    ema = tensors(tmp_path / "run", "ema")
    assert not torch.equal(ema["out_conv.weight"], init["out_conv.weight"])
    # Three steps later the gradient has reached (nearly) every tensor through the zeroed layers.
    r = run(tmp_path / "run3", tiny(epochs=3, sample_every=0), max_steps=4)
    assert r["step"] == 4
    after3 = tensors(tmp_path / "run3", "model")
    assert sum(not torch.equal(init[k], after3[k]) for k in init) > 0.9 * len(init)


def test_resume_is_bit_exact(tmp_path, tiny):
    cfgs = tiny(epochs=3, sample_every=0, grad_accum=2, batch_size=4, flip_prob=0.5)
    full = run(tmp_path / "full", cfgs)
    # Interrupted twice: mid-epoch, then again; each time the same command picks up from disk.
    part = tmp_path / "part"
    run(part, cfgs, max_steps=3)
    for stop in (5, None):
        mc, dc, tc, dac, saved = resolve_configs(part, cfgs[:3], {})
        assert saved is not None
        train(part, mc, dc, tc, dac, saved=saved, progress=False, max_steps=stop)
    assert full["step"] == json.loads((part / "latest.json").read_text())["step"]
    for which in ("model", "ema", "optimizer"):
        a, b = tensors(tmp_path / "full", which), tensors(part, which)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{which}.{k} differs after resume"


def test_rerun_finished_and_extend_epochs(tmp_path, tiny):
    cfgs = tiny(epochs=1, sample_every=0)
    out = tmp_path / "run"
    r1 = run(out, cfgs)
    mc, dc, tc, dac, saved = resolve_configs(out, cfgs[:3], {"train.epochs": 1})
    r2 = train(out, mc, dc, tc, dac, saved=saved, progress=False)
    assert r2["step"] == r1["step"]  # nothing to do
    mc, dc, tc, dac, saved = resolve_configs(out, cfgs[:3], {"train.epochs": 2})
    r3 = train(out, mc, dc, tc, dac, saved=saved, progress=False)
    assert r3["step"] == 2 * r1["step"]
    with pytest.raises(DfeditError, match="lr="):
        resolve_configs(out, cfgs[:3], {"train.lr": 0.5})
    with pytest.raises(DfeditError, match="already at epoch 2"):
        resolve_configs(out, cfgs[:3], {"train.epochs": 1})


def test_checkpoint_round_trip_rotation_and_grid(tmp_path, tiny):
    cfgs = tiny(epochs=4, keep_checkpoints=2, sample_every=2)
    out = tmp_path / "run"
    run(out, cfgs)
    steps = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert len(steps) == 2 and not list((out / "checkpoints").glob(".tmp*"))
    assert ckpt.is_checkpoint_dir(out) and ckpt.is_checkpoint_dir(out / "checkpoints" / steps[0])
    assert not ckpt.is_checkpoint_dir(tmp_path) and not ckpt.is_checkpoint_dir(tmp_path / "missing")
    ck, config = ckpt.load(out)
    assert config["schedule"]["beta_schedule"] == "squaredcos_cap_v2"
    assert config["schedule"]["prediction_type"] == "epsilon"
    assert len(config["data"]["mean"]) == 3 and config["state"]["epoch"] == 4
    assert config["text_encoder"]["max_length"] == 12
    den = ckpt.load_denoiser(out)
    assert isinstance(den, Denoiser)
    ema = tensors(out, "ema")
    for k, v in den.net.state_dict().items():
        assert torch.equal(v, ema[k])
    model = ckpt.load_denoiser(out, weights="model")
    assert any(not torch.equal(v, ema[k]) for k, v in model.net.state_dict().items())
    # Validation grids every 2 epochs, same prompts and noise each time, parameters in the PNG.
    grids = sorted((out / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["epoch-0002.png", "epoch-0004.png"]
    meta = [json.loads(Image.open(g).text["dfedit"]) for g in grids]
    assert meta[0]["prompts"] == meta[1]["prompts"] and meta[0]["seed"] == meta[1]["seed"]


def test_sampling_through_dfedits_loop(tmp_path, tiny):
    out = tmp_path / "run"
    run(out, tiny(epochs=1, sample_every=0))
    den = ckpt.load_denoiser(out)
    cond = den.prompt_encoder.encode(["grinning face", "thumbs up"])
    uncond = den.prompt_encoder.encode(["", ""])
    assert not uncond.text_mask.any()
    seen = []
    gen = torch.Generator().manual_seed(3)
    x = randn((2, 3, den.sample_size, den.sample_size), gen, den.device, torch.float32)
    ts = den.schedule.strided_timesteps(100)
    y = denoise_loop(cfg(den, cond, uncond, 4.0), x, ts, den.schedule, gen,
                     callback=lambda i, t, tp, xp, x0: seen.append(t))
    assert seen == ts and y.shape == (2, 3, 16, 16) and torch.isfinite(y).all()
    a = sample(den, ["grinning face", "thumbs up"], seed=3, stride=100, guidance=4.0)
    b = sample(den, ["grinning face", "thumbs up"], seed=3, stride=100, guidance=4.0)
    c = sample(den, ["grinning face", "thumbs up"], seed=4, stride=100, guidance=4.0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, y.float().clamp(-1, 1))  # `sample` is exactly dfedit's loop + CFG
    # Protocol call: noise estimate of the input's shape, fixed variance.
    eps, var = den(x, 500, cond)
    assert eps.shape == x.shape and var is None


@pytest.mark.parametrize("objective", ["v_prediction", "sample"])
def test_other_objectives_give_noise_estimates(tmp_path, tiny, objective):
    mc, dc, tc, dac = tiny(epochs=1, sample_every=0)
    dc = replace(dc, prediction_type=objective, beta_schedule="linear")
    train(tmp_path / "run", mc, dc, tc, dac, progress=False)
    den = ckpt.load_denoiser(tmp_path / "run")
    assert den.schedule.prediction_type == objective
    x = torch.randn(1, 3, 16, 16)
    cond = den.prompt_encoder.encode(["rocket"])
    eps, _ = den(x, 700, cond)
    raw = den.net(den.diffusion.net_input(x, torch.tensor([700])), torch.tensor([700]), cond.text, cond.text_mask)
    assert torch.allclose(eps, den.schedule.model_output_to_eps(raw, x, 700), atol=1e-6)


def test_non_finite_loss_is_skipped_and_reported(tmp_path, tiny, monkeypatch):
    cfgs = tiny(epochs=1, sample_every=0)
    real = Diffusion.loss
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        out = real(self, *a, **k)
        return out * float("nan") if calls["n"] == 2 else out

    monkeypatch.setattr(Diffusion, "loss", flaky)
    msgs = []
    r = run(tmp_path / "run", cfgs, log=msgs.append)
    assert r["skipped"] == 1 and any("non-finite" in m for m in msgs)
    assert all(torch.isfinite(v).all() for v in tensors(tmp_path / "run", "model").values())
    assert ckpt.load(tmp_path / "run")[1]["state"]["skipped_steps"] == 1


def test_lr_schedule_warmup_and_cosine():
    from dfedit_train.config import TrainConfig
    tc = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10)
    assert lr_at(0, 100, tc) == pytest.approx(1e-4)
    assert lr_at(9, 100, tc) == pytest.approx(1e-3)
    assert lr_at(55, 100, tc) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(100, 100, tc) == pytest.approx(1e-5)


def test_constant_lr_run_extends_exactly(tmp_path, tiny):
    """A constant-rate run asked for 1 epoch and then extended to 3 is the run asked for 3 epochs
    from the start: no second warm-up, no decay stretched to the new end."""
    cfgs = tiny(epochs=3, sample_every=0, lr_schedule="constant", warmup_steps=3)
    run(tmp_path / "full", cfgs)
    part = tmp_path / "part"
    run(part, tiny(epochs=1, sample_every=0, lr_schedule="constant", warmup_steps=3))
    mc, dc, tc, dac, saved = resolve_configs(part, cfgs[:3], {"train.epochs": 3})
    train(part, mc, dc, tc, dac, saved=saved, progress=False)
    for which in ("model", "ema", "optimizer"):
        a, b = tensors(tmp_path / "full", which), tensors(part, which)
        for k in a:
            assert torch.equal(a[k], b[k]), f"{which}.{k} differs after extending"
    # The cosine schedule cannot do this: its rate depends on where the run is meant to end.
    cos = replace(cfgs[2], lr_schedule="cosine")
    assert lr_at(10, 30, cos) != lr_at(10, 60, cos)
    const = cfgs[2]
    assert lr_at(10, 30, const) == lr_at(10, 60, const) == const.lr
    assert lr_at(0, 30, const) == const.lr / 3  # warm-up still ramps
