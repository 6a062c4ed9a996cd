"""Flow matching: the mapping from flow time to the loop's noise levels is exact, a tiny
`--objective flow` run trains, and every dfedit edit runs on it through the CLI (issue 12)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dfedit.cli import app as dfedit_app
from dfedit.denoiser import FlowDenoiser
from dfedit.errors import DfeditError
from dfedit.outputs import read_metadata
from dfedit.sampler import conditioned, denoise_loop, plan_timesteps
from dfedit.samplers import SAMPLERS
from dfedit.schedule import NoiseSchedule
from dfedit_train.cli import app as train_app
from dfedit_train.config import DiffusionConfig
from dfedit_train.diffusion import Diffusion

runner = CliRunner()
FLOW = DiffusionConfig(prediction_type="flow_prediction", beta_schedule="flow")


def flow_schedule(clip: bool = True) -> NoiseSchedule:
    """What a flow checkpoint's config gives dfedit."""
    return NoiseSchedule.from_config({**FLOW.scheduler_config(), "clip_sample": clip})


def oracle_velocity(x0):
    """A flow model that knows the clean image: v = eps - x0 = (x_flow - x0) / s, in flow coordinates."""
    return lambda x_flow, s, cond: (x_flow - x0) / s


def _x0_eps(shape=(2, 3, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 1.8 - 0.9, torch.randn(shape, generator=g)


def test_flow_state_is_a_rescaled_vp_state():
    """x_flow = (1 - s) x0 + s eps at s = (t + 1) / (T + 1) is the loop's state x_t times 1/(alpha + sigma),
    exactly up to the float32 abar table (near t = 0, abar ~ 1 - 1e-6 carries sigma to ~1%: 7e-6 in s)."""
    s_ = flow_schedule()
    x0, eps = _x0_eps()
    for t in (0, 1, 250, 500, 990, 999):
        s = (t + 1) / 1001
        a, sg = s_.alpha_sigma(t)
        assert float(s_.alphas_cumprod[t]) == pytest.approx((1 - s) ** 2 / ((1 - s) ** 2 + s**2), rel=1e-7)
        s_tab = float(sg / (a + sg))  # the flow time of the state the loop actually holds
        assert s_.flow_time(t) == s and abs(s_tab - s) < 1e-5
        x_vp = a * x0 + sg * eps
        torch.testing.assert_close(s_.to_flow(x_vp, t), (1 - s_tab) * x0 + s_tab * eps, atol=2e-6, rtol=0)


def test_flow_network_input_is_the_same_from_the_flow_state():
    """The trainer feeds the VP state through per-channel standardisation, which is scale-free: the
    network sees exactly what standardising the course's x_flow would give it."""
    mean, std = [0.5, -0.2, 0.1], [0.3, 0.6, 0.4]
    diff = Diffusion(FLOW, mean, std)
    x0, eps = _x0_eps((4, 3, 8, 8))
    t = torch.tensor([0, 300, 700, 999])
    ab = diff.abar[t].view(-1, 1, 1, 1)
    s = (1 - ab).sqrt() / (ab.sqrt() + (1 - ab).sqrt())  # (t + 1) / 1001 up to the float32 table
    x_vp = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    x_flow = (1 - s) * x0 + s * eps
    m, v = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1) ** 2
    torch.testing.assert_close(diff.net_input(x_vp, t), (x_flow - (1 - s) * m) / ((1 - s) ** 2 * v + s**2).sqrt(),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,eta", [(n, 0.0) for n in SAMPLERS] + [("ddim", 1.0)])
def test_oracle_flow_model_and_oracle_eps_model_follow_the_same_trajectory(name, eta):
    """A flow model that knows x0 (v = (x_flow - x0) / s, in its own coordinates) and an eps model
    that knows x0, on the same schedule, same seed: every state of the trajectory agrees. In float64
    (the schedule's coefficients stay float32: ~4e-8 apart), so that float32 rounding of the states,
    which the first step at alpha ~ 1e-3 amplifies to ~3e-5 in either model, does not hide the
    mapping; flow time t / T instead of (t + 1) / (T + 1) puts them 3e-3 apart."""
    sch = flow_schedule()
    x0 = _x0_eps((1, 3, 16, 16))[0].double()
    flow = FlowDenoiser(oracle_velocity(x0), sch, 16)

    def eps_oracle(x, t, cond):  # tests/conftest.py's OracleDenoiser: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)
        a = sch.alphas_cumprod[t]
        return (x - a.sqrt() * x0) / (1 - a).sqrt(), None

    trajectories = []
    for den in (flow, eps_oracle):
        g = torch.Generator().manual_seed(0)
        xs = []
        denoise_loop(conditioned(den, None), torch.randn(1, 3, 16, 16, generator=g, dtype=torch.float64),
                     plan_timesteps(sch, name, steps=20), sch, g, callback=lambda i, t, tp, x, x0h: xs.append(x), sampler=name, eta=eta)
        trajectories.append(torch.stack(xs))
    a, b = trajectories
    assert a.dtype == torch.float64 and (a - b).abs().max() < 1e-6 and (a[-1] - x0).abs().max() < 1e-6


def test_the_course_flow_sampler_is_dfedits_euler_and_ddim_on_any_flow_model():
    """The course's sampler (x_flow += (s' - s) v(x_flow, s), from noise to s = 0) on an arbitrary,
    non-oracle velocity field equals dfedit's `euler` and `ddim` through FlowDenoiser."""
    sch = flow_schedule(clip=False)
    w = torch.randn(3, 3, 3, 3, generator=torch.Generator().manual_seed(1)) * 0.2

    def velocity(x, s, cond):
        return torch.tanh(torch.nn.functional.conv2d(x, w, padding=1)) + (s - 0.5) * x

    ts = plan_timesteps(sch, "euler", steps=25)
    x_T = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    x = sch.to_flow(x_T, ts[0])
    times = [sch.flow_time(t) for t in ts] + [0.0]
    for s, s_next in zip(times[:-1], times[1:]):
        x = x + (s_next - s) * velocity(x, s, None)
    for name in ("euler", "ddim"):
        out = denoise_loop(conditioned(FlowDenoiser(velocity, sch, 16), None), x_T, ts, sch, None, sampler=name)
        assert (out - x).abs().max() < 1e-5 * max(1.0, x.abs().max().item()), name


def test_min_snr_is_refused_nowhere_and_schedule_flags_are_consistent():
    with pytest.raises(DfeditError, match="^objective flow has its own noise schedule"):
        DiffusionConfig(prediction_type="flow_prediction", beta_schedule="linear").scheduler_config()
    with pytest.raises(DfeditError, match="^objective flow has its own noise schedule"):
        DiffusionConfig(prediction_type="epsilon", beta_schedule="flow").scheduler_config()
    cfg = FLOW.scheduler_config()
    assert cfg["flow_matching"] is True and cfg["prediction_type"] == "flow_prediction"


# ---- a tiny flow run through both command lines ------------------------------------------------

@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, npm_tarball, tiny_encoder):
    out = tmp_path_factory.mktemp("flow") / "run"
    r = runner.invoke(train_app, [str(a) for a in ["emoji", "--preset", "tiny", "--objective", "flow",
                                                   "--data", npm_tarball, "--text-encoder", tiny_encoder,
                                                   "--max-length", "12", "--out", out, "--epochs", "4", "--quiet",
                                                   "--sample-every", "0"]])
    assert r.exit_code == 0, r.output
    return out


def dfedit(*args):
    r = runner.invoke(dfedit_app, [str(a) for a in args] + ["--quiet"])
    assert r.exit_code == 0, r.stderr
    return r


def px(p):
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_a_tiny_flow_run_trains_and_describes_its_schedule(flow_run):
    from dfedit.emoji import checkpoint as ckpt

    ck, cfg = ckpt.load(flow_run)
    assert cfg["diffusion"]["prediction_type"] == "flow_prediction" and cfg["schedule"]["flow_matching"] is True
    losses = [json.loads(line)["loss"] for line in (flow_run / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(np.isfinite(losses)) and losses[-1] < losses[0]  # velocity MSE goes down
    den = ckpt.load_denoiser(flow_run)
    assert den.schedule.flow_matching and den.schedule.prediction_type == "flow_prediction"
    torch.testing.assert_close(den.schedule.alphas_cumprod, flow_schedule().alphas_cumprod, atol=0, rtol=0)


def test_every_edit_runs_on_the_flow_model_through_the_cli(flow_run, tmp_path):
    s = 16
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (s, s, 3), dtype=np.uint8)).save(src)
    mask = tmp_path / "mask.png"
    m = np.zeros((s, s), np.uint8)
    m[4:12, 4:12] = 255
    Image.fromarray(m).save(mask)
    common = ["--model", flow_run, "--steps", "8"]
    dfedit("sample", "grinning face", *common, "--sampler", "dpmpp-2m", "-o", tmp_path / "a.png")
    dfedit("sample", "grinning face", *common, "--sampler", "dpmpp-2m", "-o", tmp_path / "b.png")
    assert np.array_equal(px(tmp_path / "a.png"), px(tmp_path / "b.png"))
    meta = read_metadata(tmp_path / "a.png")
    assert meta["sampler"] == "dpmpp-2m" and meta["steps"] == 8 and meta["stride"] is None
    dfedit("sample", "red heart", "--model", flow_run, "--stride", "100", "-o", tmp_path / "ddpm.png")
    dfedit("sample", "red heart", *common, "--sampler", "heun", "-o", tmp_path / "heun.png")
    dfedit("sdedit", src, "--i-start", "2", "--i-start", "5", *common, "--sampler", "ddim", "-o", tmp_path / "sd.png")
    # RePaint with resampling (DDPM): the kept region equals the input exactly
    dfedit("inpaint", src, "--mask", mask, "--model", flow_run, "--stride", "100", "--jump-length", "2",
           "--jump-n-sample", "2", "-o", tmp_path / "inpainted.png")
    out, inp, hole = px(tmp_path / "inpainted.png"), px(src), m > 127
    assert np.array_equal(out[~hole], inp[~hole]) and not np.array_equal(out[hole], inp[hole])
    dfedit("anagram", "grinning face", "red heart", "--view", "flip", *common, "--sampler", "euler",
           "-o", tmp_path / "an.png")
    dfedit("hybrid", "rocket", "snowman", *common, "--sampler", "dpmpp-2m", "-o", tmp_path / "hy.png")
    dfedit("noise", src, "--model", flow_run, "--t", "500", "-o", tmp_path / "n.png")
    dfedit("denoise", src, "--model", flow_run, "--t", "500", "--sampler", "dpmpp-2m", "--steps", "8",
           "-o", tmp_path / "de.png")
    for f in ("sd.png", "an.png", "hy.png", "n.png", "de.png", "ddpm.png", "heun.png"):
        assert (tmp_path / f).stat().st_size > 0
    # resampling with an ODE sampler: one sentence, before any model loads, no file
    r = runner.invoke(dfedit_app, [str(a) for a in ["inpaint", src, "--mask", mask, "--model", flow_run,
                                                    "--sampler", "dpmpp-2m", "--jump-n-sample", "2",
                                                    "-o", tmp_path / "no.png"]])
    assert r.exit_code == 1 and r.stderr.startswith("dfedit: error: --jump-n-sample > 1 (RePaint resampling)")
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "no.png").exists()


def test_flow_objective_refuses_a_schedule(tmp_path, npm_tarball):
    r = runner.invoke(train_app, ["emoji", "--preset", "tiny", "--objective", "flow", "--schedule", "linear",
                                  "--data", str(npm_tarball), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "--objective flow has its own noise schedule" in r.stderr
    assert not (tmp_path / "o").exists()
