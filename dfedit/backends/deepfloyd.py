"""The DeepFloyd IF backend: Hub ids and local diffusers-layout directories.

Stage I is the denoiser; T5-XXL sits behind the embedding cache (loaded only for prompts the cache
lacks, freed before any UNet runs); stage II (IF-II) is the `Upscaler`: its own noise schedule for
the low-res conditioning image, which it upsamples, noises and concatenates to x_t.

Each component is loaded on its own (not through IFPipeline) so that T5 is only loaded when a prompt
is missing from the embedding cache, and is freed before any UNet runs. Hub ids are first resolved to
a local snapshot holding only the files this run needs (fp16 weights only when running in fp16),
which also turns the Hub's failure modes (gated, unknown, offline) into one sentence each. Each
model string becomes one `Snapshot`, so its configs and its weights are each looked up once per
command.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from ..cache import EmbeddingCache, fingerprint
from ..constants import BUILTIN_MODELS
from ..denoiser import Cond
from ..devices import free_memory
from ..errors import DfeditError, ParamError
from ..schedule import NoiseSchedule
from . import ModelInfo, model_error

# diffusers' IF encode_prompt pads/truncates every prompt to 77 T5 tokens; parity depends on it.
IF_MAX_TOKENS = 77
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
# Every Hub failure points at the model that needs no Hub: the emoji model shipped in the package.
OFFLINE_HINT = "; or use {model} emoji, the built-in emoji model that runs offline on a CPU"
MODEL_KINDS = ("emoji (the built-in 32 px emoji model), a Hub id such as DeepFloyd/IF-I-XL-v1.0, a local "
               "diffusers IF directory, or a dfedit-train run or checkpoint directory")


def quiet_hf_logging() -> None:
    """transformers/diffusers print weight-loading bars and warnings of their own; we show ours."""
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as hf_logging

    for lib in (df_logging, hf_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


# ---- resolving a model argument to a local directory ------------------------------------------

def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _weight_patterns(sub: str, fp16: bool) -> list[str]:
    # Safetensors only (never pickled .bin). With fp16 we fetch only the fp16 variant: IF-I-XL's
    # fp32 UNet alone is 17 GB. Sharded checkpoints come with an index file.
    if fp16:
        return [f"{sub}/*.fp16.safetensors", f"{sub}/*.fp16-*.safetensors", f"{sub}/*.safetensors.index.fp16.json"]
    return [f"{sub}/*.safetensors", f"{sub}/*.safetensors.index.json"]  # fp16 files excluded by the caller


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


def _not_a_model(model: str, p: Path, param: str) -> ParamError:
    """The sentence for a model/stage2 argument that names no usable model."""
    flag = "{" + param + "}"  # placeholder: the parameter's name, or its option on a command line
    import difflib

    if not p.exists():
        close = difflib.get_close_matches(model.strip("/"), list(BUILTIN_MODELS), n=1, cutoff=0.6)
        if close:
            return model_error(param, f"{model} does not exist: did you mean {flag} {close[0]}, the built-in model?")
        return model_error(param, f"{model} does not exist: {flag} takes {MODEL_KINDS}")
    kind = dfedit_train_layout(p)
    if kind == "checkpoints":
        steps = sorted(q.name for q in p.glob("step-*") if (q / "config.json").is_file())
        return model_error(param, f"{model} is dfedit-train's checkpoints folder: pass the run directory "
                                  f"{p.parent} (its latest checkpoint) or one checkpoint such as {p / steps[-1]}")
    if kind == "run":
        return model_error(param, f"{model} is a dfedit-train run directory with no checkpoint yet (no latest.json): "
                                  "train it first")
    if p.is_file():
        return model_error(param, f"{model} is a file; {flag} takes {MODEL_KINDS}")
    return model_error(param, f"{model} is not a diffusers model directory (no model_index.json), nor a dfedit-train "
                              f"run or checkpoint (no latest.json or config.json); {flag} takes {MODEL_KINDS}")


def resolve(model: str, components: list[str], fp16: bool = False, weights: bool = True,
            param: str = "model", hint: str = OFFLINE_HINT, also: tuple[str, ...] = ()) -> Path:
    """A local directory holding `components` (subfolder names) of `model` (Hub id or directory).
    param names the argument in messages; hint ends every Hub failure's message; `also`: components
    fetched in the same Hub look-up that the directory need not have."""
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "model_index.json").is_file() and not any((p / c / "config.json").is_file() for c in components):
            raise _not_a_model(model, p, param)
        return p
    if p.exists() or not _HUB_ID.match(model):
        raise _not_a_model(model, p, param)
    return _hub_snapshot(model, list(components) + [c for c in also if c not in components], fp16, weights, hint,
                        param)


class Snapshot:
    """One model argument's local directories, each looked up once: what a command resolves its
    --model / --stage2 into (dfedit.backends.deepfloyd), so that a Hub id costs one snapshot look-up
    for its configs and one for its weights, however many layers ask. A look-up that fetched a
    superset of what is asked (more components, weights) answers for it."""

    def __init__(self, model: str, param: str = "model", hint: str = OFFLINE_HINT):
        self.model, self.param, self.hint = model, param, hint
        self._roots: dict[tuple, Path] = {}

    def root(self, components: list[str], fp16: bool = False, weights: bool = True,
             also: tuple[str, ...] = ()) -> Path:
        want = set(components)
        for (comps, fp, w), path in self._roots.items():
            if want <= set(comps) and fp == fp16 and (w or not weights):
                return path
        path = resolve(self.model, list(components), fp16=fp16, weights=weights, param=self.param, hint=self.hint,
                       also=also)
        self._roots[(tuple(components) + tuple(c for c in also if c not in components), fp16, weights)] = path
        return path


def _hub_snapshot(repo: str, components: list[str], fp16: bool, weights: bool, hint: str = OFFLINE_HINT,
                  param: str = "model") -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hfe

    patterns = ["model_index.json"]
    for c in components:
        patterns += [f"{c}/*.json", f"{c}/*.model", f"{c}/*.txt"]
        if weights and c in ("unet", "text_encoder"):
            patterns += _weight_patterns(c, fp16)
    # Full precision: never the fp16 variant's files (they match the broad patterns above).
    ignore = [] if fp16 else ["*.fp16.*", "*.fp16-*"]
    try:
        path = Path(snapshot_download(repo, allow_patterns=patterns, ignore_patterns=ignore,
                                      local_files_only=_offline()))
    except hfe.GatedRepoError:
        raise model_error(
            param, f"{repo} is gated: accept its licence at https://huggingface.co/{repo} while logged in, "
            f"then run `hf auth login` (or set HF_TOKEN) on this machine{hint}") from None
    except hfe.RepositoryNotFoundError:
        raise model_error(param, f"{repo} is not a model on the Hub (or it is private and you are not logged in): "
                          f"check the id or pass a local directory{hint}") from None
    except (hfe.LocalEntryNotFoundError, hfe.OfflineModeIsEnabled):
        raise model_error(param, f"{repo} is not in the local Hub cache and the Hub cannot be reached "
                          "(HF_HUB_OFFLINE is set or there is no network): download it once online, "
                          f"or pass a local directory{hint}") from None
    except (OSError, ValueError) as e:  # connection errors and other HTTP failures
        raise model_error(param, f"{repo} could not be fetched from the Hub ({type(e).__name__}): check your network "
                          f"or pass a local directory{hint}") from None
    if weights and fp16 and "unet" in components and not list(path.glob("unet/*fp16*.safetensors")):
        return _hub_snapshot(repo, components, False, weights, hint, param)  # repo without an fp16 variant
    return path


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DfeditError(f"{what} is missing ({path}): is this a DeepFloyd IF checkpoint directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DfeditError(f"{what} ({path}) is not valid JSON") from None


def has_component(root: Path, name: str) -> bool:
    index = root / "model_index.json"
    if index.is_file():
        entry = read_json(index, "model_index.json").get(name)
        if not entry or entry[0] is None:
            return False
    return (root / name / "config.json").is_file() or (root / name / "tokenizer_config.json").is_file()


# ---- the text encoder behind the cache --------------------------------------------------------

def _t5_width(root: Path) -> int | None:
    """d_model of the T5 config (what every cache entry's width must be), None if unreadable."""
    try:
        w = json.loads((root / "text_encoder" / "config.json").read_text()).get("d_model")
    except (OSError, ValueError, AttributeError):
        return None
    return w if isinstance(w, int) and not isinstance(w, bool) and w > 0 else None


class T5PromptEncoder:
    """Prompt -> (77, D) T5 states, through the on-disk cache; T5 is loaded only on a miss.

    Prompts are preprocessed as diffusers does with clean_caption=False (lower-case, strip). We
    chose not to run diffusers' caption cleaning (it needs bs4 + ftfy and rewrites URLs, emoji,
    punctuation): what you type is what T5 sees.
    """

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype, cache_dir=None,
                 offload: bool = False, quiet: bool = True, snapshot: "Snapshot | None" = None):
        self.model, self.device, self.dtype, self.offload, self.quiet = model, device, dtype, offload, quiet
        self.cache_dir = cache_dir
        self.snapshot = snapshot if snapshot is not None else Snapshot(model)
        self._root: Path | None = None
        self._cache: EmbeddingCache | None = None

    def _resolve(self) -> Path:
        if self._root is None:
            self._root = self.snapshot.root(["text_encoder", "tokenizer"], fp16=self.dtype == torch.float16)
            if not has_component(self._root, "text_encoder"):
                raise model_error("model", f"{self.model} has no text_encoder: pass {{model}} with the stage I checkpoint "
                                  "that provides T5 for it")
        return self._root

    @property
    def cache(self) -> EmbeddingCache:
        if self._cache is None:
            root = self._resolve()
            parts: list[bytes | str] = [str(self.dtype)]
            if Path(self.model).expanduser().is_dir():
                parts.append(str(root.resolve()))
            else:
                parts.append(self.model)
            for sub in ("text_encoder", "tokenizer"):
                for f in sorted((root / sub).glob("*")):
                    if f.suffix in (".json", ".model", ".txt"):
                        parts += [f.name, f.read_bytes()]
                    elif f.is_file():
                        st = f.stat()
                        parts += [f.name, f"{st.st_size}:{st.st_mtime_ns}"]
            width = _t5_width(root)
            self._cache = EmbeddingCache("t5-" + fingerprint(parts), self.cache_dir,
                                         shape=(IF_MAX_TOKENS, width) if width else None, dtype=self.dtype)
        return self._cache

    @staticmethod
    def preprocess(prompt: str) -> str:
        return prompt.lower().strip()

    def encode(self, prompts: list[str]) -> Cond:
        texts = [self.preprocess(p) for p in prompts]
        found = {t: self.cache.get(t) for t in dict.fromkeys(texts)}
        missing = [t for t, v in found.items() if v is None]
        if missing:
            for t, emb in zip(missing, self._run_t5(missing)):
                self.cache.put(t, {"text": emb})
                found[t] = {"text": emb}
        text = torch.stack([found[t]["text"] for t in texts])
        return Cond(text=text)

    def _run_t5(self, texts: list[str]) -> list[torch.Tensor]:
        from transformers import AutoTokenizer, T5EncoderModel

        from ..progress import progress_bar

        root = self._resolve()
        quiet_hf_logging()
        try:
            tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
            variant = "fp16" if self.dtype == torch.float16 and list((root / "text_encoder").glob("*fp16*")) else None
            t5 = T5EncoderModel.from_pretrained(root / "text_encoder", dtype=self.dtype, variant=variant,
                                                use_safetensors=True)
        except DfeditError:
            raise
        except (OSError, ValueError) as e:
            raise DfeditError(f"could not load the T5 text encoder from {root}: {str(e).splitlines()[0]}") from None
        t5.eval()
        if self.offload and self.device.type != "cpu":
            from accelerate import cpu_offload
            cpu_offload(t5, execution_device=self.device)
        else:
            t5.to(self.device)
        out = []
        # One prompt per forward: an entry must not depend on which prompts it was batched with.
        with torch.inference_mode(), progress_bar(len(texts), "T5 prompts", not self.quiet) as bar:
            for t in texts:
                tok = tokenizer(t, padding="max_length", max_length=IF_MAX_TOKENS, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
                states = t5(tok.input_ids.to(self.device), attention_mask=tok.attention_mask.to(self.device))[0]
                out.append(states[0].to("cpu"))
                bar.advance()
        del t5
        free_memory()  # T5-XXL must be gone before a UNet is moved to the GPU
        return out


_TOKENIZERS: dict[str, object] = {}


def count_t5_tokens(model: str, prompts: list[str], root: Path | None = None) -> list[int]:
    """T5 tokens of each prompt as IF encodes it (preprocessed, with </s>), from the tokenizer
    alone: what --prompt is checked against before any weights load. `root`: the model's
    directory when it has been resolved already."""
    root = root if root is not None else resolve(model, ["text_encoder", "tokenizer"], weights=False)
    if not has_component(root, "tokenizer"):
        return [0] * len(prompts)  # no tokenizer here: the encoder's own check says what is missing
    key = str((root / "tokenizer").resolve())
    if key not in _TOKENIZERS:
        from transformers import AutoTokenizer
        quiet_hf_logging()
        try:
            _TOKENIZERS[key] = AutoTokenizer.from_pretrained(key)
        except (OSError, ValueError) as e:
            raise DfeditError(f"could not load the T5 tokenizer from {key}: {str(e).splitlines()[0]}") from None
    tok = _TOKENIZERS[key]
    return [len(tok(T5PromptEncoder.preprocess(p), add_special_tokens=True).input_ids) for p in prompts]


# ---- IF UNets as denoisers --------------------------------------------------------------------

class IFDenoiser:
    """IF stage I (x_t) or stage II (cat[x_t, noised upsampled low-res], class label = noise level)."""

    default_cfg = 7.0  # IFPipeline's default and the course's scale

    def __init__(self, unet, schedule: NoiseSchedule, name: str, prompt_encoder: T5PromptEncoder,
                 device: torch.device, dtype: torch.dtype, noising_schedule: NoiseSchedule | None = None):
        cfg = unet.config
        self.unet, self.schedule, self.name = unet, schedule, name
        self.prompt_encoder, self.device, self.dtype = prompt_encoder, device, dtype
        self.sample_size = int(cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0])
        self.is_upscaler = cfg.class_embed_type == "timestep" or noising_schedule is not None
        self.channels = int(cfg.in_channels // 2 if self.is_upscaler else cfg.in_channels)
        self.learned_variance = int(cfg.out_channels) == 2 * self.channels
        self.noising_schedule = noising_schedule

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, t: int, cond: Cond):
        inp = x if cond.image is None else torch.cat([x, cond.image], dim=1)
        out = self.unet(inp, t, encoder_hidden_states=cond.text, class_labels=cond.noise_level,
                        return_dict=False)[0]
        if self.learned_variance:
            eps, var = out.split(self.channels, dim=1)
        else:
            eps, var = out, None
        return self.schedule.model_output_to_eps(eps, x, t), var


def configure_unet(unet, device: torch.device, channels_last: bool | None = None):
    """The fast path for an IF UNet (benchmarks/bench_sampler.py and bench_if.py measure it).

    - channels_last weights (None: on CUDA only): cuDNN's fp16 tensor-core convolutions want NHWC
      and activations follow the weights' layout. On CPU three runs of the tiny IF UNet measured
      0.98-1.02x, no gain, so CPU keeps diffusers' contiguous layout (and bit-for-bit parity).
    - attention: diffusers picks its SDPA processors (`AttnAddedKVProcessor2_0` for IF) when torch
      has scaled_dot_product_attention; we refuse a slower fallback rather than run on it silently.
    """
    slow = sorted({type(p).__name__ for p in unet.attn_processors.values()} - SDPA_PROCESSORS)
    if slow:
        raise DfeditError(f"the UNet uses attention processors {', '.join(slow)}, not torch's "
                          "scaled_dot_product_attention: upgrade torch/diffusers")
    if channels_last if channels_last is not None else device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
    return unet


SDPA_PROCESSORS = {"AttnProcessor2_0", "AttnAddedKVProcessor2_0"}


def load_if(model: str, device: torch.device, dtype: torch.dtype, *, text_encoder_model: str | None = None,
            offload: bool = False, cache_dir=None, quiet: bool = True, upscaler: bool = False,
            snapshot: Snapshot | None = None, prompt_encoder: "T5PromptEncoder | None" = None) -> IFDenoiser:
    """Stage I (upscaler=False) or stage II from a Hub id or a local directory.

    `text_encoder_model` names where T5 comes from (stage II gets stage I's, see below), or
    `prompt_encoder` is that encoder itself; `snapshot`: the model's resolved directories.
    """
    from diffusers import UNet2DConditionModel

    fp16 = dtype == torch.float16
    comps = ["unet", "scheduler"] + (["image_noising_scheduler"] if upscaler else [])
    snapshot = snapshot if snapshot is not None else Snapshot(model, param="stage2" if upscaler else "model")
    own_t5 = prompt_encoder is None and text_encoder_model in (None, model)
    # A model that is its own T5 source fetches T5 in the same look-up as its UNet.
    root = snapshot.root(comps, fp16=fp16, also=("text_encoder", "tokenizer") if own_t5 else ())
    unet_cfg = read_json(root / "unet" / "config.json", "unet/config.json")
    if upscaler != (unet_cfg.get("class_embed_type") == "timestep"):
        want = "a stage II (super-resolution)" if upscaler else "a stage I"
        raise DfeditError(f"{model} is not {want} IF checkpoint (its UNet config says otherwise)")
    sched_cfg = read_json(root / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json")
    schedule = NoiseSchedule.from_config(sched_cfg)
    noising = None
    if upscaler:
        ncfg_path = root / "image_noising_scheduler" / "scheduler_config.json"
        noising = NoiseSchedule.from_config(read_json(ncfg_path, "image_noising_scheduler/scheduler_config.json"))
    quiet_hf_logging()
    variant = "fp16" if fp16 and list((root / "unet").glob("*fp16*.safetensors")) else None
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", dtype=dtype, variant=variant,
                                                    use_safetensors=True)
    except (OSError, ValueError) as e:
        raise DfeditError(f"could not load the UNet from {root}/unet: {str(e).splitlines()[0]}") from None
    unet = configure_unet(unet.eval().requires_grad_(False), device)
    if offload and device.type != "cpu":
        from accelerate import cpu_offload
        cpu_offload(unet, execution_device=device)
    else:
        unet.to(device)
    # All IF stages use the same T5-XXL: prefer the one named by the caller (stage I's), so both
    # stages share cache entries and IF-II's copy of T5 is never downloaded or loaded.
    if prompt_encoder is None:
        te_model = text_encoder_model or model
        prompt_encoder = T5PromptEncoder(te_model, device, dtype, cache_dir=cache_dir, offload=offload, quiet=quiet,
                                         snapshot=snapshot if te_model == model else None)
    return IFDenoiser(unet, schedule, model, prompt_encoder, device, dtype, noising_schedule=noising)


STAGE2_EMOJI = ("emoji models are stage I models with no super-resolution stage; {stage2} takes an IF "
                "stage II model (a Hub id such as DeepFloyd/IF-II-L-v1.0 or a diffusers directory), and an emoji "
                "model goes in {model}")


def check_stage2(model: str, steps: int, noise_level: int, hint: str = OFFLINE_HINT,
                 snapshot: Snapshot | None = None) -> None:
    """Validate stage II from its configs alone, so a bad --stage2 / --noise-level / --stage2-steps
    is reported before stage I spends minutes on a GPU."""
    if model in BUILTIN_MODELS or dfedit_train_layout(Path(model).expanduser()) is not None:
        raise model_error("stage2", f"{model}: {STAGE2_EMOJI}")
    snapshot = snapshot if snapshot is not None else Snapshot(model, param="stage2", hint=hint)
    root = snapshot.root(["unet", "scheduler", "image_noising_scheduler"], weights=False)
    unet_cfg = read_json(root / "unet" / "config.json", "unet/config.json")
    if unet_cfg.get("class_embed_type") != "timestep":
        raise model_error("stage2", f"{model} is not a stage II (super-resolution) IF checkpoint")
    sched = read_json(root / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json")
    NoiseSchedule.from_config(sched).leading_timesteps(steps)
    noising = read_json(root / "image_noising_scheduler" / "scheduler_config.json",
                        "image_noising_scheduler/scheduler_config.json")
    NoiseSchedule.from_config(noising).check_t(noise_level, "noise_level")


def load_configs(model: str, snapshot: Snapshot | None = None) -> tuple[dict, NoiseSchedule]:
    """UNet config and schedule only (a few KB, no weights): for commands that never run the UNet.
    With a `snapshot`, the tokenizer's and T5's configs come in the same look-up."""
    root = (snapshot.root(["unet", "scheduler"], weights=False, also=("text_encoder", "tokenizer"))
            if snapshot is not None else resolve(model, ["unet", "scheduler"], weights=False))
    unet_cfg = read_json(root / "unet" / "config.json", "unet/config.json")
    sched = read_json(root / "scheduler" / "scheduler_config.json", "scheduler/scheduler_config.json")
    return unet_cfg, NoiseSchedule.from_config(sched)


# ---- the backend ---------------------------------------------------------------------------------

IF_DEFAULT_PROMPT = "a high quality photo"  # the course's prompt for edits of photos
IF_DEFAULT_CFG = 7.0  # IFPipeline's default and the course's scale


class DeepFloyd:
    name = "deepfloyd"
    builtin = True

    def probe(self, model: str) -> ModelInfo:
        """Claims every model string (it is asked last): a Hub id or a diffusers directory, or one
        sentence saying what the string is not."""
        snapshot = Snapshot(model)
        cfg, schedule = load_configs(model, snapshot)
        problem = None
        if cfg.get("class_embed_type") == "timestep":
            problem = f"{model} is a stage II (super-resolution) checkpoint: pass a stage I model"
        s = cfg.get("sample_size")
        return ModelInfo(name=model, backend=self, schedule=schedule, sample_size=int(s if isinstance(s, int) else s[0]),
                         default_cfg=IF_DEFAULT_CFG, default_prompt=IF_DEFAULT_PROMPT, upscales=True,
                         prompt_limit=IF_MAX_TOKENS, text_encoder="IF's T5 text encoder", source=snapshot,
                         problem=problem)

    def describe(self, den) -> ModelInfo:
        """The ModelInfo of an IF stage I denoiser built in memory (benchmarks: random full-size
        UNets), for a DFEdit handed that denoiser instead of a model to load."""
        return ModelInfo(name=den.name, backend=self, schedule=den.schedule, sample_size=den.sample_size,
                         default_cfg=IF_DEFAULT_CFG, default_prompt=IF_DEFAULT_PROMPT, upscales=True,
                         prompt_limit=IF_MAX_TOKENS, text_encoder="IF's T5 text encoder", source=Snapshot(den.name))

    def count_tokens(self, info: ModelInfo, prompts: list[str]) -> list[int]:
        root = info.source.root(["unet", "scheduler"], weights=False, also=("text_encoder", "tokenizer"))
        return count_t5_tokens(info.name, prompts, root=root)

    def load(self, info, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        return load_if(info.name, device, dtype, offload=offload, cache_dir=cache_dir, quiet=quiet,
                       snapshot=info.source)

    def prompt_encoder(self, info, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        return T5PromptEncoder(info.name, device, dtype, cache_dir=cache_dir, offload=offload, quiet=quiet,
                               snapshot=info.source)

    def upscaler(self, info, model, device, dtype, *, offload=False, cache_dir=None, quiet=True):
        # All IF stages use the same T5-XXL: stage II takes stage I's (its cache entries too).
        return IFUpscaler(model, device, dtype, offload=offload, cache_dir=cache_dir, quiet=quiet,
                          text_encoder_model=info.name)


class IFUpscaler:
    """IF stage II behind the `Upscaler` protocol: x_T at the upscaler's size, conditioned on the
    upsampled, noised low-res image, in the draw order of IFSuperResolutionPipeline."""

    def __init__(self, model: str, device, dtype, *, offload=False, cache_dir=None, quiet=True,
                 text_encoder_model: str | None = None, hint: str = OFFLINE_HINT):
        """`text_encoder_model`: the stage I model whose T5 it shares (None: its own T5)."""
        self.model, self.device, self.dtype = model, device, dtype
        self.offload, self.cache_dir, self.quiet, self.hint = offload, cache_dir, quiet, hint
        self.text_encoder_model = text_encoder_model
        self.snapshot = Snapshot(model, param="stage2", hint=hint)
        self._checked: set[tuple[int, int]] = set()

    def check(self, steps: int, noise_level: int) -> None:
        if (steps, noise_level) not in self._checked:
            check_stage2(self.model, steps, noise_level, hint=self.hint, snapshot=self.snapshot)
            self._checked.add((steps, noise_level))

    def load(self, prompt_encoder=None):
        shared = prompt_encoder if self.text_encoder_model is not None else None
        return load_if(self.model, self.device, self.dtype, text_encoder_model=self.text_encoder_model,
                       offload=self.offload, cache_dir=self.cache_dir, quiet=self.quiet, upscaler=True,
                       snapshot=self.snapshot, prompt_encoder=shared)

    def timesteps(self, den, steps: int, sampler: str, eta: float) -> list[int]:
        """`steps` model calls in diffusers' leading spacing (50 -> 980, 960, ..., 0)."""
        from ..samplers import check_sampler
        return den.schedule.leading_timesteps(check_sampler(sampler, eta).timesteps_for_calls(steps))

    def condition(self, den, low_res: torch.Tensor, gen: torch.Generator, noise_level: int, conds, uncond):
        from ..sampler import randn
        n, size = low_res.shape[0], den.sample_size
        noise_level = den.noising_schedule.check_t(noise_level, "noise_level")
        # Draw order as IFSuperResolutionPipeline: x_T first, then the conditioning-image noise.
        x = randn((n, den.channels, size, size), gen, den.device, den.dtype)
        up = F.interpolate(low_res.to(den.device, den.dtype), (size, size), mode="bilinear", align_corners=True)
        levels = torch.tensor([noise_level] * n, device=up.device)
        up = den.noising_schedule.add_noise(up, randn(up.shape, gen, up.device, up.dtype), levels)
        return x, [c.with_image(up, levels) for c in conds], uncond.with_image(up, levels)
