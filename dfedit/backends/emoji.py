"""The emoji backend: dfedit-train run and checkpoint directories and the built-in `--model emoji`
(the model itself lives in dfedit/emoji/). One read of the checkpoint's config.json describes it.

It also knows what dfedit-train leaves on disk that is no model yet (a run without a checkpoint, a
run's checkpoints/ folder), so that the registry's sentence for such a string says what it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..constants import BUILTIN_MODELS
from ..errors import DfeditError, ParamError
from . import ModelInfo, standalone_upscaler

# What --upscale / `dfedit upscale` say when an emoji model's stage II cannot be found.
EMOJI_STAGE2_HINT = ("; stage II is DeepFloyd's IF-II, which upscales IF stage I images, and emoji models have "
                     "no stage II of their own: leave out {upscale}")

# What a model parameter naming stage II says when it is given an emoji model.
STAGE2_EMOJI = ("emoji models are stage I models with no super-resolution stage; {stage2} takes an IF "
                "stage II model (a Hub id such as DeepFloyd/IF-II-L-v1.0 or a diffusers directory), and an emoji "
                "model goes in {model}")

CAPTIONS = "captions.json"  # beside config.json: the captions the model was trained on, and the held-out ones


@dataclass(frozen=True)
class EmojiSource:
    """An emoji model as `checkpoint.open_model` read it: its checkpoint directory and validated config."""

    checkpoint: Path
    config: dict

    @property
    def text_encoder(self) -> dict:
        """The config's text_encoder section: name (MiniLM or a directory), max_length."""
        return self.config["text_encoder"]


def dfedit_train_layout(p: Path) -> str | None:
    """What dfedit-train wrote at `p`, read from its JSON files only (no weights, no model code):
    "checkpoint", "run", "checkpoints" (a run's checkpoints/ folder), or None."""
    try:
        if (p / "config.json").is_file():
            return "checkpoint" if json.loads((p / "config.json").read_text()).get("format", "").startswith(
                "dfedit-train/") else None
    except (OSError, ValueError, AttributeError):
        return None
    if (p / "latest.json").is_file() or ((p / "checkpoints").is_dir() and (p / "log.jsonl").is_file()):
        return "run"
    if p.is_dir() and any((q / "config.json").is_file() for q in p.glob("step-*")):
        return "checkpoints"
    return None


def known_captions(info: ModelInfo[EmojiSource]) -> dict[str, list[str]]:
    """{"train": [...], "held_out": [...]} of an emoji model that ships its caption list
    (dfedit_train/captions.py writes it; the built-in model has one)."""
    ck = info.source.checkpoint
    path = ck / CAPTIONS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        lists = {k: data[k] for k in ("train", "held_out")}
        if not all(isinstance(v, list) and all(isinstance(c, str) for c in v) for v in lists.values()):
            raise ValueError("not lists of captions")
    except FileNotFoundError:
        raise DfeditError(f"{info.name} ships no caption list ({path} is missing): write one with "
                          f"python -m dfedit_train.captions {ck}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DfeditError(f"{path} cannot be read ({e}): write it again with python -m dfedit_train.captions "
                          f"{ck}") from None
    return lists


class Emoji:
    name = "emoji"
    builtin = True
    summary = ("emoji (the built-in 32 px emoji model)", "a dfedit-train run or checkpoint directory")

    def probe(self, model: str) -> ModelInfo[EmojiSource] | None:
        from ..emoji import checkpoint
        from ..emoji.config import schedule_of
        from ..emoji.names import for_encoder

        opened = checkpoint.open_model(model)
        if opened is None:
            return None
        source = EmojiSource(*opened)
        cfg = source.config
        schedule = schedule_of(cfg)
        return ModelInfo(
            name=model, backend=self, schedule=schedule, sample_size=int(cfg["model"]["image_size"]),
            # the scale the run's validation grids used
            default_cfg=float(cfg.get("train", {}).get("guidance", 3.0)),
            # the unconditional branch: the model never saw IF's photo caption
            default_prompt="", upscales=False, prompt_limit=int(source.text_encoder["max_length"]),
            text_encoder="the emoji model's MiniLM text encoder",
            prompt_text=for_encoder,  # emoji typed in a prompt become their CLDR names (dfedit/emoji/names.py)
            offloads=False,  # small enough to load whole
            styles=tuple(cfg["model"].get("styles") or ()), source=source)

    def explain(self, model: str, param: str) -> str | None:
        """What `model` is, when it is an emoji name or dfedit-train's but no model `param` can take."""
        import difflib

        flag = "{" + param + "}"  # placeholder: the parameter's name, or its option on a command line
        p = Path(model).expanduser()
        kind = dfedit_train_layout(p)
        if param == "stage2" and (model in BUILTIN_MODELS or kind is not None):
            return f"{model}: {STAGE2_EMOJI}"
        if not p.exists():
            close = difflib.get_close_matches(model.strip("/"), list(BUILTIN_MODELS), n=1, cutoff=0.6)
            return f"{model} does not exist: did you mean {flag} {close[0]}, the built-in model?" if close else None
        if kind == "checkpoints":
            steps = sorted(q.name for q in p.glob("step-*") if (q / "config.json").is_file())
            return (f"{model} is dfedit-train's checkpoints folder: pass the run directory {p.parent} (its latest "
                    f"checkpoint) or one checkpoint such as {p / steps[-1]}")
        if kind == "run":
            return f"{model} is a dfedit-train run directory with no checkpoint yet (no latest.json): train it first"
        return None

    def count_tokens(self, info: ModelInfo[EmojiSource], prompts: list[str]) -> list[int]:
        from ..emoji.text import count_tokens
        return count_tokens(info.source.text_encoder["name"], prompts)

    def load(self, info, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        from ..emoji import checkpoint
        src = info.source
        return checkpoint.load_denoiser(info.name, device, dtype, cache_dir=cache_dir,
                                        opened=(src.checkpoint, src.config))

    def prompt_encoder(self, info, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        from ..emoji.text import CaptionEncoder
        cfg = info.source.config
        return CaptionEncoder(cfg["text_encoder"]["name"], cfg["text_encoder"]["max_length"],
                              cfg["model"]["text_dim"], device, dtype, cache_dir=cache_dir)

    def upscaler(self, info, model, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        # An emoji model has no stage II of its own; --upscale asks IF-II (with its own T5).
        return standalone_upscaler(model, device, dtype, offload=offload, cache_dir=cache_dir, quiet=quiet,
                                   hint=EMOJI_STAGE2_HINT)

    def check_upscale(self, info, stage2: str, steps: int, noise_level: int) -> None:
        """`dfedit upscale` on an emoji model: that it has no stage II is the cause, whatever else
        is wrong with the stage II it would run."""
        import torch
        try:
            standalone_upscaler(stage2, torch.device("cpu"), torch.float32, hint="").check(steps, noise_level)
        except DfeditError as e:
            if isinstance(e, ParamError):  # its own parameter and the ones it names keep their CLI spelling
                why, also = "{" + e.param + "} " + e.problem, (e.param, *e.also)
            else:
                why, also = str(e), ()
            raise ParamError("model", f"{info.name} has no stage II: emoji models have no stage II of their own, "
                             "and dfedit upscale runs DeepFloyd's IF stage II ({stage2}), which upscales IF stage I "
                             f"images; here it cannot run either ({why})",
                             also=tuple(dict.fromkeys(("stage2", *also)))) from None
