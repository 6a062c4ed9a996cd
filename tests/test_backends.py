"""The backend registry (dfedit/backends): a model string is resolved once per command, models
live for the command rather than for one call, and a new backend is one class (issue 11)."""

from __future__ import annotations

import pathlib
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from dfedit import backends
from dfedit.backends import ModelInfo
from dfedit.denoiser import Cond
from dfedit.outputs import read_metadata
from dfedit.schedule import NoiseSchedule
from helpers import ok, pixels

FAST = ["--device", "cpu", "--quiet"]


@pytest.fixture
def photo(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "in.png")
    return tmp_path / "in.png"


# ---- model lifetime: one load per stage per command -----------------------------------------------

def test_a_sweep_of_six_starts_with_stage2_loads_each_stage_once(cli, tiny_models, tmp_path, photo, monkeypatch):
    import diffusers
    s1, s2 = tiny_models
    loads = Counter()
    real = diffusers.UNet2DConditionModel.from_pretrained.__func__

    def counting(cls, root, *a, **k):
        loads[str(root)] += 1
        return real(cls, root, *a, **k)

    monkeypatch.setattr(diffusers.UNet2DConditionModel, "from_pretrained", classmethod(counting))
    starts = [a for i in (1, 3, 5, 10, 20, 30) for a in ("--i-start", i)]
    ok(cli("sdedit", photo, *starts, "--repeat", "2", "--model", s1, "--stage2", s2, "--stage2-steps", "2",
            *FAST, "-o", tmp_path / "sweep.png"))
    assert loads == {str(s1): 1, str(s2): 1}
    meta = read_metadata(tmp_path / "sweep.png")
    assert meta["i_start"] == [1, 3, 5, 10, 20, 30] and meta["stage2_steps"] == 2


def test_a_sweep_equals_its_entries_run_one_by_one(tiny_models, photo):
    """Loading once changes nothing: each entry of a sweep is what a command of its own makes."""
    from dfedit import DFEdit
    s1, s2 = tiny_models
    kw = dict(seed=4, stage2_steps=2, stride=90)
    df = DFEdit(model=str(s1), stage2=str(s2), device="cpu", quiet=True, keep_loaded=False)
    sweep = df.sdedit_sweep(photo, "a dog", [2, 7], repeat=2, **kw)
    for i, res in zip([2, 7], sweep):
        alone = DFEdit(model=str(s1), stage2=str(s2), device="cpu", quiet=True).sdedit(photo, "a dog", i_start=i,
                                                                                       repeat=2, **kw)
        assert torch.equal(res.images, alone.images) and torch.equal(res.stage1, alone.stage1)
        assert res.meta == alone.meta


# ---- one resolution per command ---------------------------------------------------------------------

def test_an_emoji_command_reads_the_models_config_once(cli, tmp_path, photo, monkeypatch):
    from dfedit.constants import BUILTIN_MODELS
    cfg = (BUILTIN_MODELS["emoji"] / "config.json").resolve()
    reads = []
    for name in ("read_bytes", "read_text"):
        real = getattr(pathlib.Path, name)

        def counting(self, *a, _real=real, **k):
            if self.name == "config.json" and self.resolve() == cfg:
                reads.append(self)
            return _real(self, *a, **k)

        monkeypatch.setattr(pathlib.Path, name, counting)
    ok(cli("sdedit", photo, "--i-start", "1", "--i-start", "3", "--model", "emoji", "--stride", "200", *FAST,
            "-o", tmp_path / "e.png"))
    assert len(reads) == 1
    reads.clear()
    ok(cli("sample", "grinning face", "--model", "emoji", "--stride", "200", *FAST, "-o", tmp_path / "s.png"))
    assert len(reads) == 1


def test_a_hub_id_is_looked_up_once_for_configs_and_once_for_weights(cli, tiny_models, tmp_path, monkeypatch):
    """`dfedit sample` with IF from the Hub (faked: snapshot_download answers with the tiny
    checkpoints): per repo one look-up for the configs (before anything loads) and one for the
    weights it loads; stage II shares stage I's T5 and never looks up its own."""
    import huggingface_hub
    s1, s2 = tiny_models
    dirs = {"DeepFloyd/IF-I-XL-v1.0": s1, "DeepFloyd/IF-II-L-v1.0": s2}
    calls = []

    def fake(repo, allow_patterns, ignore_patterns, local_files_only):
        calls.append((repo, any(p.endswith(".safetensors") for p in allow_patterns)))
        return str(dirs[repo])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    ok(cli("sample", "a dog", "--model", "DeepFloyd/IF-I-XL-v1.0", "--stage2", "DeepFloyd/IF-II-L-v1.0",
            "--stride", "330", "--stage2-steps", "2", *FAST, "-o", tmp_path / "s.png"))
    assert Counter(calls) == {("DeepFloyd/IF-I-XL-v1.0", False): 1, ("DeepFloyd/IF-I-XL-v1.0", True): 1,
                              ("DeepFloyd/IF-II-L-v1.0", False): 1, ("DeepFloyd/IF-II-L-v1.0", True): 1}
    assert [r for r, w in calls if not w] == ["DeepFloyd/IF-I-XL-v1.0", "DeepFloyd/IF-II-L-v1.0"]
    assert calls.index(("DeepFloyd/IF-II-L-v1.0", False)) < calls.index(("DeepFloyd/IF-I-XL-v1.0", True))


# ---- a backend is one class ----------------------------------------------------------------------

SIZE = 16


def clean_image() -> torch.Tensor:
    """What the oracle knows: colour varying along the width only, so it is its own upside-down
    view (an anagram with --view flip then has one exact answer)."""
    w = torch.linspace(-0.9, 0.9, SIZE)
    return torch.stack([w, -w, 0.5 * w]).view(1, 3, 1, SIZE).expand(1, 3, SIZE, SIZE).contiguous()


class ToyPrompts:
    def encode(self, prompts):
        return Cond(text=torch.zeros(len(prompts), 1, 4))


class Oracle:
    """Knows the clean image: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar), for any prompt."""

    channels, name = 3, "toy-oracle"

    def __init__(self, schedule):
        self.schedule, self.sample_size = schedule, SIZE
        self.device, self.dtype, self.prompt_encoder = torch.device("cpu"), torch.float32, ToyPrompts()
        self.x0 = clean_image()

    def __call__(self, x, t, cond):
        a = self.schedule.alphas_cumprod[t]
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt(), None


class Toy:
    """A whole backend, in the test: claims --model toy, never reads a file."""

    name = "toy"
    summary = ("toy (the test's oracle, which knows one image)",)

    def __init__(self):
        self.loads = 0
        self.token_counts = []
        self.schedule = NoiseSchedule.from_config(dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000,
                                                       prediction_type="epsilon", variance_type="fixed_small",
                                                       clip_sample=True, clip_sample_range=1.0))

    def probe(self, model):
        if model != "toy":
            return None
        return ModelInfo(name=model, backend=self, schedule=self.schedule, sample_size=SIZE, default_cfg=2.0,
                         default_prompt="", upscales=False, prompt_limit=8)

    def count_tokens(self, info, prompts):
        self.token_counts.append(list(prompts))
        return [len(p.split()) for p in prompts]

    def load(self, info, device, dtype, **kw):
        self.loads += 1
        return Oracle(self.schedule)

    def prompt_encoder(self, info, device, dtype, **kw):
        return ToyPrompts()

    def upscaler(self, info, model, device, dtype, **kw):
        raise AssertionError("the toy backend has no upscaler")


@pytest.fixture
def toy():
    backend = backends.register(Toy())
    yield backend
    backends.unregister(backend)


def expected() -> np.ndarray:
    from dfedit.images import to_pil
    return np.asarray(to_pil(clean_image())[0]).astype(int)


def test_a_toy_backend_registered_in_the_test_runs_every_edit(cli, toy, tmp_path, photo):
    clean = expected()
    common = ["--model", "toy", "--stride", "90", "--no-display", *FAST]
    ok(cli("sample", "anything", *common, "-o", tmp_path / "sample.png"))
    ok(cli("sdedit", photo, "--i-start", "3", *common, "-o", tmp_path / "sdedit.png"))
    ok(cli("hybrid", "low", "high", *common, "-o", tmp_path / "hybrid.png"))
    for name in ("sample", "sdedit", "hybrid"):  # the oracle's image, whatever the edit asked
        assert np.abs(pixels(tmp_path / f"{name}.png") - clean).max() <= 1, name
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, : SIZE // 2] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    ok(cli("inpaint", photo, "--mask", tmp_path / "mask.png", *common, "-o", tmp_path / "inpaint.png"))
    out, src = pixels(tmp_path / "inpaint.png"), pixels(photo)
    assert np.array_equal(out[:, SIZE // 2:], src[:, SIZE // 2:])  # kept exactly
    assert np.abs(out[:, : SIZE // 2] - clean[:, : SIZE // 2]).max() <= 1  # regenerated: the oracle's
    ok(cli("anagram", "upright", "upside down", "--view", "flip", *common, "-o", tmp_path / "anagram.png"))
    sheet = pixels(tmp_path / "anagram.png")
    tile, step = 128, 128 // SIZE
    for col in (0, 1):  # the image, and the image upside down: both the clean image
        t = sheet[2:2 + tile:step, 2 + col * (tile + 2):2 + col * (tile + 2) + tile:step]
        assert np.abs(t - clean).max() <= 1, col
    for name in ("sample", "sdedit", "hybrid", "inpaint", "anagram"):
        meta = read_metadata(tmp_path / f"{name}.png")
        assert meta["model"] == "toy-oracle" and meta["cfg"] == 2.0, name  # the backend's default guidance
    assert toy.loads == 5  # one load per command


@pytest.fixture
def toy_sampler_and_view():
    """A sampler and a view registered from the test, as docs/architecture.md says to add one."""
    from dfedit import samplers, views
    calls = []

    @samplers.register("toy-x0", "jumps to the x0 estimate, re-noised to t' with the same eps", ode=True)
    def toy_x0(ctx, x, t, t_prev):
        calls.append(t)
        x0, eps = ctx.denoised(x, t)
        return (x0 if t_prev < 0 else ctx.schedule.add_noise(x0, eps, t_prev)), x0

    class Transpose(views.View):
        name = "transpose"

        def apply(self, x):
            return x.transpose(-2, -1)

        inverse = apply

    views.register_view("transpose", Transpose)
    yield calls
    samplers.SAMPLERS.pop("toy-x0")
    views.VIEWS.pop("transpose")


def test_a_sampler_and_a_view_registered_in_the_test_run_through_the_cli(cli, toy, toy_sampler_and_view, tmp_path):
    clean = expected()
    common = ["--model", "toy", "--stride", "90", "--no-display", *FAST]
    ok(cli("sample", "anything", "--sampler", "toy-x0", *common, "-o", tmp_path / "s.png"))
    assert len(toy_sampler_and_view) == 12  # 990, 900, ..., 0: one call per step
    assert np.abs(pixels(tmp_path / "s.png") - clean).max() <= 1 and read_metadata(tmp_path / "s.png")["sampler"] == "toy-x0"
    ok(cli("anagram", "as shown", "transposed", "--view", "transpose", *common, "-o", tmp_path / "a.png"))
    assert read_metadata(tmp_path / "a.png")["views"] == ["identity", "transpose"]
    code, _, err = cli("anagram", "a", "b", "--view", "transpose", "--sampler", "no-such", *common,
                       "-o", tmp_path / "x.png")
    assert code == 1 and "'no-such' is unknown" in err and "toy-x0" in err  # the registry's names, live


def test_a_command_validates_once(cli, toy, tmp_path, photo):
    """The CLI checks every option before anything loads; `generate` does not check them again."""
    ok(cli("sdedit", photo, "--prompt", "a red fox", "--i-start", "3", "--i-start", "5", "--model", "toy",
            "--stride", "90", *FAST, "-o", tmp_path / "o.png"))
    assert toy.token_counts == [["a red fox"]] and toy.loads == 1
    code, _, err = cli("sample", "one two three four five six seven eight nine", "--model", "toy", *FAST,
                       "-o", tmp_path / "long.png")
    assert code == 1 and "is 9 tokens long" in err and toy.loads == 1


def test_an_unknown_model_is_told_what_every_backend_takes(cli, toy, tmp_path):
    """The sentence for a --model no backend claims lists each backend's own summary, the toy's too."""
    code, _, err = cli("sample", "x", "--model", "bananas", *FAST, "-o", tmp_path / "o.png")
    line = err.strip()
    assert code == 1 and "\n" not in line, err
    assert line.startswith("dfedit: error: --model bananas does not exist: --model takes toy (the test's oracle, "
                           "which knows one image), emoji (the built-in 32 px emoji model), "), line
    assert "a dfedit-train run or checkpoint directory" in line and "a Hub id such as" in line


# ---- one Result type, saved like the CLI saves ---------------------------------------------------

@pytest.mark.parametrize("command", ["sample", "hybrid"])
def test_result_save_writes_what_the_cli_writes(cli, tiny_models, tmp_path, command):
    from dfedit import DFEdit
    from dfedit.pipeline import Result
    s1, s2 = tiny_models
    prompts = ["a dog"] if command == "sample" else ["a dog", "a cat"]
    ok(cli(command, *prompts, "--model", s1, "--stage2", s2, "--stride", "330", "--stage2-steps", "2", "--seed",
            "5", "--no-display", *FAST, "-o", tmp_path / "cli.png"))
    df = DFEdit(model=str(s1), stage2=str(s2), device="cpu", quiet=True)
    kw = dict(seed=5, stride=330, stage2_steps=2)
    res = df.sample(prompts[0], **kw) if command == "sample" else df.hybrid(prompts, **kw)
    assert isinstance(res, Result)
    res.save(tmp_path / "api.png")
    cli_meta, api_meta = read_metadata(tmp_path / "cli.png"), read_metadata(tmp_path / "api.png")
    assert cli_meta.pop("command_line").startswith(f"dfedit {command} ")
    assert cli_meta == api_meta and api_meta["dfedit_version"]
    with Image.open(tmp_path / "cli.png") as a, Image.open(tmp_path / "api.png") as b:
        assert {k: v for k, v in a.text.items() if k not in ("command_line", "dfedit")} == \
            {k: v for k, v in b.text.items() if k != "dfedit"}
    assert np.array_equal(pixels(tmp_path / "cli.png"), pixels(tmp_path / "api.png"))


# ---- the core speaks of parameters, the CLI of options --------------------------------------------

def test_library_errors_name_parameters_and_the_cli_names_options(cli, toy, tmp_path):
    from dfedit import DFEdit, DfeditError
    df = DFEdit(model="toy", device="cpu", quiet=True)
    for kw, param in ((dict(cfg=float("nan")), "cfg"), (dict(num_samples=0), "num_samples"),
                      (dict(seed=-1), "seed"), (dict(stage2_cfg=float("inf")), "stage2_cfg")):
        with pytest.raises(DfeditError) as e:
            df.sample("x", **kw)
        assert str(e.value).startswith(f"{param} must be ") and "--" not in str(e.value)
    with pytest.raises(DfeditError, match="^repeat must be at least 1"):
        df.sdedit(torch.zeros(1, 3, SIZE, SIZE), "x", repeat=0)
    code, _, err = cli("sample", "x", "--model", "toy", "--cfg", "nan", *FAST, "-o", tmp_path / "o.png")
    assert code == 1 and err.strip() == "dfedit: error: --cfg must be a finite number, got nan"
    code, _, err = cli("anagram", "a", "b", "--view-seed", "-1", "--model", "toy", *FAST, "-o", tmp_path / "o.png")
    assert code == 1 and err.strip().startswith("dfedit: error: --view-seed must be between 0 and 2^64 - 1")
