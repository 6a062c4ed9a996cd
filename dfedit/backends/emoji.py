"""The emoji backend: dfedit-train run and checkpoint directories and the built-in `--model emoji`
(the model itself lives in dfedit/emoji/). One read of the checkpoint's config.json describes it."""

from __future__ import annotations

from . import ModelInfo

# What --upscale / `dfedit upscale` say when an emoji model's stage II cannot be found.
EMOJI_STAGE2_HINT = ("; stage II is DeepFloyd's IF-II, which upscales IF stage I images, and emoji models have "
                     "no stage II of their own: leave out {upscale}")


NO_OFFLOAD = ("is for IF models on a GPU with too little memory; an emoji model is small enough to "
              "load whole: leave out {offload}")  # about the parameter offload (see ParamError)


CAPTIONS = "captions.json"  # beside config.json: the captions the model was trained on, and the held-out ones


def known_captions(info: ModelInfo) -> dict[str, list[str]]:
    """{"train": [...], "held_out": [...]} of an emoji model that ships its caption list
    (dfedit_train/captions.py writes it; the built-in model has one)."""
    import json

    from ..errors import DfeditError
    path = info.source[0] / CAPTIONS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        lists = {k: data[k] for k in ("train", "held_out")}
        if not all(isinstance(v, list) and all(isinstance(c, str) for c in v) for v in lists.values()):
            raise ValueError("not lists of captions")
    except FileNotFoundError:
        raise DfeditError(f"{info.name} ships no caption list ({path} is missing): write one with "
                          f"python -m dfedit_train.captions {info.source[0]}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DfeditError(f"{path} cannot be read ({e}): write it again with python -m dfedit_train.captions "
                          f"{info.source[0]}") from None
    return lists


class Emoji:
    name = "emoji"
    builtin = True

    def probe(self, model: str) -> ModelInfo | None:
        from ..emoji import checkpoint
        from ..emoji.config import DiffusionConfig, from_dict
        from ..emoji.names import for_encoder
        from ..schedule import NoiseSchedule

        opened = checkpoint.open_model(model)
        if opened is None:
            return None
        ck, cfg = opened
        schedule = NoiseSchedule.from_config(from_dict(DiffusionConfig, cfg["diffusion"]).scheduler_config())
        return ModelInfo(
            name=model, backend=self, schedule=schedule, sample_size=int(cfg["model"]["image_size"]),
            # the scale the run's validation grids used
            default_cfg=float(cfg.get("train", {}).get("guidance", 3.0)),
            # the unconditional branch: the model never saw IF's photo caption
            default_prompt="", upscales=False, prompt_limit=int(cfg["text_encoder"]["max_length"]),
            text_encoder="the emoji model's MiniLM text encoder", stage2_hint=EMOJI_STAGE2_HINT,
            prompt_text=for_encoder,  # emoji typed in a prompt become their CLDR names (dfedit/emoji/names.py)
            no_offload=NO_OFFLOAD, styles=tuple(cfg["model"].get("styles") or ()), source=opened)

    def count_tokens(self, info: ModelInfo, prompts: list[str]) -> list[int]:
        from ..emoji.text import count_tokens
        return count_tokens(info.source[1]["text_encoder"]["name"], prompts)

    def load(self, info, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        from ..emoji import checkpoint
        return checkpoint.load_denoiser(info.name, device, dtype, cache_dir=cache_dir, opened=info.source)

    def prompt_encoder(self, info, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        from ..emoji.text import CaptionEncoder
        cfg = info.source[1]
        return CaptionEncoder(cfg["text_encoder"]["name"], cfg["text_encoder"]["max_length"],
                              cfg["model"]["text_dim"], device, dtype, cache_dir=cache_dir)

    def upscaler(self, info, model, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        # An emoji model has no stage II of its own; --upscale asks IF-II (with its own T5).
        from .deepfloyd import IFUpscaler
        return IFUpscaler(model, device, dtype, offload=offload, cache_dir=cache_dir, quiet=quiet,
                          hint=EMOJI_STAGE2_HINT)
