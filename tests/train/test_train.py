"""Training: a step changes the weights, resume is bit-exact, checkpoints round-trip, sampling
goes through dfedit's loop, the non-finite guard skips a step."""

import json
import math
from dataclasses import replace

import pytest
import torch
from PIL import Image

from dfedit.denoiser import Denoiser
from dfedit.errors import DfeditError
from dfedit.sampler import cfg, denoise_loop, randn
from dfedit.emoji import checkpoint as ckpt
from dfedit_train.diffusion import Diffusion
from dfedit_train.sample import sample
from dfedit_train.config import resolve_configs
from dfedit_train.step import lr_at
from dfedit_train.train import train


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
    """The denoiser of a v- or x0-trained run returns eps, checked against a value built here from
    the checkpoint alone: abar from diffusers' DDPMScheduler, the run's stored channel statistics,
    the network called on a hand-made preconditioned input, the conversion written out in float64."""
    from diffusers import DDPMScheduler

    mc, dc, tc, dac = tiny(epochs=1, sample_every=0)
    dc = replace(dc, prediction_type=objective, beta_schedule="linear")
    train(tmp_path / "run", mc, dc, tc, dac, progress=False)
    den = ckpt.load_denoiser(tmp_path / "run")
    assert den.schedule.prediction_type == objective

    # Output layers start at zero and one tiny epoch barely moves them: give the head random weights
    # so the output depends strongly on the input (and so on the preconditioning).
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in den.net.out_conv.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.randn(1, 3, 16, 16, generator=g)
    cond = den.prompt_encoder.encode(["rocket"])
    stats = json.loads((ckpt.resolve(tmp_path / "run") / "config.json").read_text())["data"]
    m, s = (torch.tensor(stats[k], dtype=torch.float64).view(1, 3, 1, 1) for k in ("mean", "std"))
    abar = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod.double()
    x64 = x.double()
    for t in (300, 700):
        eps, _ = den(x, t, cond)
        ab = float(abar[t])
        x_in = (x64 - ab**0.5 * m) / (ab * s**2 + 1 - ab) ** 0.5  # per-channel standardised input
        with torch.no_grad():
            raw = den.net(x_in.float(), torch.tensor([t]), cond.text, cond.text_mask).double()
        if objective == "v_prediction":  # v = sqrt(ab) eps - sqrt(1 - ab) x0, x = sqrt(ab) x0 + sqrt(1 - ab) eps
            want = ab**0.5 * raw + (1 - ab) ** 0.5 * x64
        else:  # the output is x0
            want = (x64 - ab**0.5 * raw) / (1 - ab) ** 0.5
        torch.testing.assert_close(eps.double(), want, atol=1e-5, rtol=1e-5)


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


def test_the_training_bar_shows_steps_epoch_smoothed_loss_and_speed(capsys):
    """The trainer's bar is dfedit's progress helper with the trainer's figures: steps done of all
    (a resumed run starts at its step), epoch, the loss smoothed over steps (a non-finite step
    leaves it alone) and images/s; disabled, it writes nothing."""
    from dfedit_train.train import _TrainBar

    with _TrainBar(10, 2, enabled=True) as bar:
        bar.update(1, 3, 0.5, 12.34)
        bar.update(1, 3, float("nan"), 13.0)
        bar.update(2, 3, 1.5, 14.0)
    err = capsys.readouterr().err
    # (captured stderr is not a terminal: the bar's plain-line form, dfedit.progress.LineProgress)
    assert err.startswith("train") and "5/10" in err and "epoch 2/3" in err and "14.0 img/s" in err
    assert "loss 0.5500" in err  # 0.95 * 0.5 + 0.05 * 1.5
    with _TrainBar(10, 0, enabled=False) as bar:
        bar.update(1, 3, 0.5, 12.34)
    assert capsys.readouterr().err == ""


def test_train_step_is_one_optimizer_step_and_a_non_finite_one_moves_nothing():
    """train_step outside any loop: a finite step moves the weights by AdamW on the objective's loss
    and clears the gradients; a batch with a NaN pixel gives ok=False, the weights untouched."""
    from accelerate import Accelerator

    from dfedit_train.config import DiffusionConfig, TrainConfig
    from dfedit_train.step import train_step

    acc = Accelerator(mixed_precision="no")
    dev = acc.device

    class Toy(torch.nn.Module):  # the UNet's call signature, one conv
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x, t, text, mask):
            return self.conv(x)

    torch.manual_seed(0)
    net = Toy().to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=1.0)  # train_step sets the step's own lr
    net, opt = acc.prepare(net, opt)
    dc, tc = DiffusionConfig(), TrainConfig(batch_size=2, grad_clip=1.0)
    diff = Diffusion(dc, [0.0] * 3, [1.0] * 3, dev)
    D = {"x": torch.rand(4, 3, 8, 8, device=dev) * 2 - 1, "text": torch.zeros(4, 2, 8, device=dev),
         "mask": torch.ones(4, 2, dtype=torch.bool, device=dev), "flip_ok": torch.zeros(4, dtype=torch.bool, device=dev)}
    micro = [torch.tensor([0, 1], device=dev), torch.tensor([2, 3], device=dev)]
    before = [p.detach().clone() for p in net.parameters()]
    loss, gnorm, ok = train_step(acc, net, net, opt, diff, D, micro, 1e-2, 0, 0, dc, tc)
    assert ok and loss > 0 and gnorm > 0
    assert opt.param_groups[0]["lr"] == 1e-2
    # AdamW's first step moves every weight by about lr (the update is lr * sign-like m / sqrt(v)).
    moved = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(net.parameters(), before)])
    assert moved.min() > 1e-3 and moved.max() < 2e-2
    assert all(p.grad is None for p in net.parameters())
    D["x"][3, 0, 0, 0] = float("nan")
    before = [p.detach().clone() for p in net.parameters()]
    loss, gnorm, ok = train_step(acc, net, net, opt, diff, D, micro, 1e-2, 1, 0, dc, tc)
    assert not ok and not math.isfinite(loss)
    assert all(torch.equal(p.detach(), b) for p, b in zip(net.parameters(), before))
    assert all(p.grad is None for p in net.parameters())
