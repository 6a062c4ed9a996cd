"""The Python API: what every CLI command calls, returning tensors and PIL images.

    from dfedit import DFEdit
    df = DFEdit(model="DeepFloyd/IF-I-XL-v1.0")
    result = df.sample("an oil painting of a snowy village", seed=777)
    result.pil()[0].save("village.png")

Every generating command is an `Edit`: which prompts it encodes, how it builds its start state,
its noise-estimate function and its per-step hook for a given denoiser. `DFEdit.generate` runs an
Edit through stage I and, optionally, the same Edit through stage II (views, frequency splits and
the inpainting projection are rebuilt at the upscaler's size). The model string is resolved once
into a `ModelInfo` by its backend (dfedit.backends), and stage II is that backend's `Upscaler`, so
nothing here knows which model family runs. Models load lazily; with keep_loaded=False (what the
CLI uses) each is freed when the command is done with its stage (`holding`: a sweep loads each
stage once), so T5, stage I and stage II never share the GPU.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import edits
from .denoiser import Cond, Denoiser, EpsFn
from .errors import DfeditError, ParamError
from .filters import gaussian_blur
from .images import center_square, open_image, pil_to_tensor, to_pil
from .backends import ModelInfo, Upscaler
from .backends import resolve as resolve_model
from .constants import DEFAULT_STAGE1, DEFAULT_STAGE2
from .devices import free_memory, pick_device, pick_dtype
from .progress import note, progress_bar
from .sampler import (DEFAULT_SAMPLER, DEFAULT_STRIDE, SAMPLERS, StepCallback, StepHook, cfg as cfg_fn,
                      check_sampler, denoise_loop, plan_timesteps, randn, sampler_meta)
from .views import check_views, make_view


def make_generator(seed: int) -> torch.Generator:
    """All draws come from one CPU generator in diffusers' order, whatever the device."""
    return torch.Generator("cpu").manual_seed(check_seed(seed))


def image_at(image, size: int) -> torch.Tensor:
    """(1, 3, size, size) in [-1, 1] from a path, a PIL image or a tensor in [-1, 1]."""
    if isinstance(image, torch.Tensor):
        x = image if image.ndim == 4 else image.unsqueeze(0)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x.float(), (size, size), mode="bicubic", antialias=True, align_corners=False)
        return x.float().clamp(-1, 1)
    img = image if isinstance(image, Image.Image) else open_image(image)
    return pil_to_tensor(center_square(img.convert("RGB"), size))


def mask_at(mask, size: int, invert: bool = False) -> torch.Tensor:
    """(1, 1, size, size) of {0, 1}: 1 (white) = regenerate, 0 (black) = keep. Nearest resize, so
    the mask stays binary; centre-cropped like the image so the two line up."""
    if isinstance(mask, torch.Tensor):
        m = mask.float().reshape(1, 1, *mask.shape[-2:])
        m = F.interpolate(m, (size, size), mode="nearest")
        m = (m > 0.5).float()
    else:
        img = mask if isinstance(mask, Image.Image) else open_image(mask)
        img = center_square(img.convert("L"), size, resample=Image.Resampling.NEAREST)
        m = (torch.from_numpy(np.asarray(img).copy()).float() > 127).float()[None, None]
    return 1 - m if invert else m


@dataclass
class Edit:
    """What an edit contributes to the one loop. Each builder receives the denoiser of the stage
    it runs in (stage I, or stage II when upscaling), so sizes always come from that model."""

    name: str
    prompts: list[str]
    # (denoiser, per-prompt conds, uncond, scale) -> eps_fn; default: CFG on the first prompt
    eps: Callable[[Denoiser, list[Cond], Cond, float], EpsFn] = (
        lambda den, conds, uncond, scale: cfg_fn(den, conds[0], uncond, scale))
    # stage I start state: (denoiser, timesteps, generator, n) -> (x, timesteps); None = pure noise
    start: Callable | None = None
    # per-step hook factory (denoiser, generator) -> hook, applied in both stages (inpainting)
    hook: Callable[[Denoiser, torch.Generator], StepHook] | None = None
    # timestep list transform (RePaint's resampling), both stages
    schedule: Callable[[list[int]], list[int]] | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Result:
    """What every generating method returns (sample, sdedit, inpaint, anagram, hybrid, generate)."""

    images: torch.Tensor  # final images in [-1, 1], (N, 3, H, W)
    stage1: torch.Tensor  # stage I output (equal to images without stage II)
    meta: dict = field(default_factory=dict)
    frames: list[torch.Tensor] = field(default_factory=list)  # x0 estimates, when recorded

    def pil(self) -> list[Image.Image]:
        return to_pil(self.images)

    def save(self, path, index: int = 0):
        """Write image `index` at its native size as a PNG carrying the metadata the CLI writes
        (every parameter as a text chunk, all of it as JSON under `dfedit`; the CLI adds only the
        command line). Atomic; returns the path written."""
        from .images import save_png
        return save_png(self.pil()[index], path, png_metadata(self.meta))


def png_metadata(meta: dict, command_line: str | None = None) -> dict:
    """The metadata of an output PNG: the run's parameters, the command line (CLI only) and the
    dfedit version. One function, so the CLI's files and `Result.save`'s say the same."""
    from . import __version__
    return {**meta, **({"command_line": command_line} if command_line is not None else {}),
            "dfedit_version": __version__}


class DFEdit:
    """`model` (and `stage2`) are resolved once, on first use, into a `ModelInfo` through the
    backend registry (dfedit.backends); `info` may hand in one already resolved."""

    def __init__(self, model: str = DEFAULT_STAGE1, stage2: str = DEFAULT_STAGE2, device: str = "auto",
                 dtype: str = "auto", offload: bool = False, cache_dir: str | None = None,
                 quiet: bool = False, keep_loaded: bool = True, info: ModelInfo | None = None,
                 style: str | None = None):
        self.model, self.stage2_model = model, stage2
        self.style = style or None  # a drawing set of a model that has styles (ModelInfo.styles)
        self._info = info
        self._upscaler: Upscaler | None = None
        self._encoder = None  # stage I's prompt encoder, shared with stage II
        self._hold = 0  # > 0: a command runs several entries on the loaded models (see `holding`)
        self._checked: dict[tuple, bool] = {}  # options `check` has passed -> whether stage II runs
        self._checked_prompts: set[str] = set()
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        if offload and self.device.type == "cpu":
            raise ParamError("offload", "streams weights from CPU RAM to a GPU, and this run is on the CPU "
                             "(no GPU, or {device} cpu): leave out {offload}", also=("device",))
        self.offload, self.cache_dir, self.quiet, self.keep_loaded = offload, cache_dir, quiet, keep_loaded
        self._s1: Denoiser | None = None
        self._s2: Denoiser | None = None

    # ---- models ------------------------------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        """The stage I model as its configs describe it, resolved once."""
        if self._info is None:
            self._info = resolve_model(self.model)
        return self._info

    def upscaler(self) -> Upscaler:
        if self._upscaler is None:
            self._upscaler = self.info.backend.upscaler(
                self.info, self.stage2_model, self.device, self.dtype, offload=self.offload, cache_dir=self.cache_dir,
                quiet=self.quiet)
        return self._upscaler

    def stage1(self) -> Denoiser:
        if self._s1 is None:
            # Loaded without a check first (API callers may): the loader says what is wrong with it.
            info = self._info if self._info is not None else resolve_model(self.model, strict=False)
            self._s1 = info.backend.load(info, self.device, self.dtype, offload=self.offload,
                                         cache_dir=self.cache_dir, quiet=self.quiet)
            if self._encoder is None:
                self._encoder = self._s1.prompt_encoder
            if self.style is not None or hasattr(self._s1, "set_style"):
                if not hasattr(self._s1, "set_style"):
                    raise ParamError("style", f"asks for a drawing set, and {self.model} has none: leave out {{style}}")
                self._s1.set_style(self.style)
        return self._s1

    def stage2(self) -> Denoiser:
        if self._s2 is None:
            self._s2 = self.upscaler().load(self._encoder)
        return self._s2

    def _done_with(self, which: str) -> None:
        if not self.keep_loaded and not self._hold:
            setattr(self, which, None)
            free_memory()

    @contextmanager
    def holding(self, which: str):
        """Keep the model of one stage ("_s1" or "_s2") loaded for every call inside, then free it
        (without keep_loaded): a sweep or --repeat loads each model once, and the stages still
        never share the GPU."""
        self._hold += 1
        try:
            yield
        finally:
            self._hold -= 1
            self._done_with(which)

    def embed(self, prompts: list[str]) -> None:
        """Fill the embedding cache (no UNet weights are loaded for this)."""
        check_text(prompts)
        self._text_encoder().encode(self.encoded(prompts))

    def _text_encoder(self):
        if self._s1 is not None:
            return self._s1.prompt_encoder
        if self._encoder is None:
            self._encoder = self.info.backend.prompt_encoder(self.info, self.device, self.dtype, offload=self.offload,
                                                             cache_dir=self.cache_dir, quiet=self.quiet)
        return self._encoder

    def check(self, *, stride: int | None = None, steps: int | None = None, sampler: str = DEFAULT_SAMPLER,
              eta: float = 0.0, upscale: bool | None = None, stage2_steps: int = 50,
              noise_level: int = 250, prompts: list[str] | None = None) -> bool:
        """Validate options from configs and tokenizers only (no weights): sampler, stride or steps
        for stage I, that every prompt fits the text encoder, and stage II's directory, steps and
        noise level when upscaling. Returns whether stage II will run.

        The plan step: the CLI calls it before anything loads and `generate` (for API callers)
        again with the same options; what has passed once is not checked again."""
        if prompts:
            self.check_prompts(prompts)
        key = (stride, steps, sampler, eta, upscale, stage2_steps, noise_level, self._s2 is None)
        if key not in self._checked:
            self._checked[key] = self._check(stride, steps, sampler, eta, upscale, stage2_steps, noise_level)
        return self._checked[key]

    def _check(self, stride, steps, sampler, eta, upscale, stage2_steps, noise_level) -> bool:
        info = self.info
        if self.style is not None:
            from .emoji.denoiser import check_style
            check_style(info.styles, self.style, info.name)
        check_sampler(sampler, eta)
        plan_timesteps(info.schedule, sampler, stride, steps)
        if self.offload and not info.offloads:
            raise ParamError("offload", f"is for models too large for the GPU's memory; {info.name} is small enough to "
                             "load whole: leave out {offload}")
        if upscale is None:
            upscale = info.upscales  # the backend's default: IF pairs with stage II, emoji models do not
        if upscale and self._s2 is None:  # a loaded stage II was checked when it loaded
            self.upscaler().check(stage2_steps, noise_level)
        return upscale

    def check_prompts(self, prompts: list[str]) -> None:
        """Every prompt must be text (valid UTF-8) and fit the text encoder's token limit: a longer
        one would be cut silently."""
        check_text(prompts)
        prompts = [p for p in dict.fromkeys(prompts) if p and p not in self._checked_prompts]
        if not prompts or self._s1 is not None:  # a loaded model's prompts were checked before it loaded
            return
        info = self.info
        if info.prompt_limit is None:
            return
        limit, what = info.prompt_limit, info.text_encoder
        counts = info.backend.count_tokens(info, self.encoded(prompts))
        for p, n in zip(prompts, counts):
            if n > limit:
                short = p if len(p) <= 40 else p[:37] + "..."
                raise DfeditError(f"the prompt {short!r} is {n} tokens long and {what} reads at most {limit} "
                                  "(the rest would be cut off silently): shorten it")
        self._checked_prompts.update(prompts)

    def default_prompt(self) -> str:
        return self.info.default_prompt

    def encoded(self, prompts: list[str]) -> list[str]:
        """What the text encoder is given for each prompt: the prompt itself, or the backend's
        reading of it (an emoji model reads emoji as their names: "🔥" -> "fire"), said once."""
        read = self.info.prompt_text
        return list(prompts) if read is None else [read(p, say=note) if p else p for p in prompts]

    def prompt_meta(self, prompts: list[str]) -> dict:
        """The prompts as typed and, when the backend reads them differently, what was encoded."""
        meta = {"prompts": list(prompts), "prompt": " | ".join(prompts)}
        if self.info.prompt_text is not None:
            meta["encoded_prompts"] = self.encoded(prompts)
        return meta

    # ---- the shared path ---------------------------------------------------------------------
    def conds(self, den: Denoiser, prompts: list[str], negative: str, n: int) -> tuple[list[Cond], Cond]:
        """Per-prompt conds and the uncond, each repeated n times; one encode call, so a cold
        cache loads the text encoder once."""
        check_text(list(prompts) + [negative])
        enc = den.prompt_encoder.encode(self.encoded(list(prompts) + [negative])).to(den.device, den.dtype)
        k = len(prompts)
        return [enc[i:i + 1].repeat_interleave(n) for i in range(k)], enc[k:k + 1].repeat_interleave(n)

    def run(self, den: Denoiser, eps_fn: EpsFn, x: torch.Tensor, timesteps: list[int], generator,
            description: str, hook=None, callback: StepCallback | None = None,
            sampler: str = DEFAULT_SAMPLER, eta: float = 0.0) -> torch.Tensor:
        with progress_bar(len(timesteps), description, not self.quiet) as bar:
            return denoise_loop(eps_fn, x, timesteps, den.schedule, generator, hook=hook, callback=callback,
                                progress=bar, eta=eta, sampler=sampler)

    def generate(self, edit: Edit, *, seed: int = 0, cfg: float | None = None, stride: int | None = None,
                 steps: int | None = None, num_samples: int = 1,
                 upscale: bool | None = None, stage2_steps: int = 50, stage2_cfg: float = 4.0,
                 noise_level: int = 250, negative_prompt: str = "", record_every: int = 0,
                 sampler: str = DEFAULT_SAMPLER, eta: float = 0.0,
                 callback: StepCallback | None = None, generator: torch.Generator | None = None) -> Result:
        """Run `edit` through stage I (and stage II) with a registered sampler (dfedit.sampler.SAMPLERS:
        ddpm, the default; ddim with `eta`; dpmpp-2m; euler; heun). Stage I runs `--stride` (default
        30: t = 990, 960, ..., 0) or `--steps` model calls; stage II runs `stage2_steps` model calls
        (diffusers' leading spacing) with the same sampler."""
        res, pending = self._generate_stage1(
            edit, seed=seed, cfg=cfg, stride=stride, steps=steps, num_samples=num_samples, upscale=upscale,
            stage2_steps=stage2_steps, stage2_cfg=stage2_cfg, noise_level=noise_level,
            negative_prompt=negative_prompt, record_every=record_every, sampler=sampler, eta=eta, callback=callback,
            generator=generator)
        return res if pending is None else self._generate_stage2(res, pending)

    def _generate_stage1(self, edit: Edit, *, seed, cfg, stride, steps, num_samples, upscale, stage2_steps,
                         stage2_cfg, noise_level, negative_prompt, record_every, sampler, eta, callback,
                         generator) -> tuple[Result, dict | None]:
        """`generate` up to the end of stage I: (the stage I Result, what stage II needs, or None)."""
        check_options(seed=seed, cfg=cfg, stage2_cfg=stage2_cfg, eta=eta, num_samples=num_samples)
        upscale = self.check(stride=stride, steps=steps, sampler=sampler, eta=eta, upscale=upscale,
                             stage2_steps=stage2_steps, noise_level=noise_level,
                             prompts=list(edit.prompts) + [negative_prompt])
        spec = SAMPLERS[sampler]  # checked, with eta, by `check`
        gen = generator or make_generator(seed)
        s1 = self.stage1()
        if cfg is None:
            cfg = self.info.default_cfg  # the backend's: IF 7; an emoji model the scale it was validated with
        ts = plan_timesteps(s1.schedule, sampler, stride, steps)
        conds, uncond = self.conds(s1, edit.prompts, negative_prompt, num_samples)
        if edit.start is not None:
            x, ts = edit.start(s1, ts, gen, num_samples)
        else:
            x = randn((num_samples, s1.channels, s1.sample_size, s1.sample_size), gen, s1.device, s1.dtype)
        if edit.schedule is not None:
            ts = edit.schedule(ts)
        frames: list[torch.Tensor] = []
        cb = _recorder(frames, record_every, callback)
        hook = edit.hook(s1, gen) if edit.hook else None
        x = self.run(s1, edit.eps(s1, conds, uncond, cfg), x, ts, gen, f"{edit.name} (stage I)", hook, cb,
                     sampler=sampler, eta=eta)
        meta = {"command": edit.name, **self.prompt_meta(edit.prompts), "negative_prompt": negative_prompt,
                "seed": seed, "cfg": cfg,
                "stride": (stride or DEFAULT_STRIDE) if steps is None else None,
                "steps": spec.model_calls(ts), "timesteps": len(ts),
                "model": s1.name, "num_samples": num_samples, **sampler_meta(sampler, eta), **edit.meta,
                **({"style": self.style} if self.style is not None else {})}
        self._done_with("_s1")
        pending = None if not upscale else dict(
            edit=edit, gen=gen, steps=stage2_steps, cfg=stage2_cfg, noise_level=noise_level, negative=negative_prompt,
            callback=_recorder(frames, record_every, None), sampler=sampler, eta=eta)
        return Result(x, x, meta, frames), pending

    def _generate_stage2(self, res: Result, pending: dict) -> Result:
        p = pending
        up = self._stage2(p["edit"], res.stage1, p["gen"], p["steps"], p["cfg"], p["noise_level"], p["negative"],
                          p["callback"], sampler=p["sampler"], eta=p["eta"])
        res.meta.update(self._stage2_meta(p["steps"], p["cfg"], p["noise_level"]))
        return Result(up, res.stage1, res.meta, res.frames)

    def _stage2_meta(self, steps: int, cfg: float, noise_level: int) -> dict:
        return {"stage2": self.stage2_model, "stage2_steps": steps, "stage2_cfg": cfg, "noise_level": noise_level}

    def _stage2(self, edit: Edit, low_res: torch.Tensor, gen: torch.Generator, steps: int, cfg: float,
                noise_level: int, negative: str, callback=None, sampler: str = DEFAULT_SAMPLER,
                eta: float = 0.0) -> torch.Tensor:
        """Stage II through the backend's `Upscaler` (IF stage II: x_T at its size, conditioned on the
        noised, upsampled low-res image; `steps` model calls in diffusers' leading spacing), any sampler."""
        up, s2 = self.upscaler(), self.stage2()
        ts = up.timesteps(s2, steps, sampler, eta)
        if edit.schedule is not None:
            ts = edit.schedule(ts)
        conds, uncond = self.conds(s2, edit.prompts, negative, low_res.shape[0])
        x, conds, uncond = up.condition(s2, low_res, gen, noise_level, conds, uncond)
        hook = edit.hook(s2, gen) if edit.hook else None
        out = self.run(s2, edit.eps(s2, conds, uncond, cfg), x, ts, gen, f"{edit.name} (stage II)", hook,
                       callback, sampler=sampler, eta=eta)
        self._done_with("_s2")
        return out

    # ---- commands ----------------------------------------------------------------------------
    def sample(self, prompt: str, **kw) -> Result:
        """Text -> image. Keywords as `generate` (seed, cfg, stride, num_samples, upscale, ...)."""
        return self.generate(Edit("sample", [prompt]), **kw)

    def upscale(self, low_res: torch.Tensor, prompt: str, *, seed: int = 0, steps: int = 50, cfg: float = 4.0,
                noise_level: int = 250, negative_prompt: str = "", record_every: int = 0,
                sampler: str = DEFAULT_SAMPLER, eta: float = 0.0, generator: torch.Generator | None = None) -> Result:
        """Stage II alone, on stage-I-sized images `low_res` in [-1, 1]: a Result whose `stage1` is
        the input and whose `frames` hold the x0 estimates every `record_every` steps (0: none)."""
        check_options(seed=seed, stage2_cfg=cfg, eta=eta)
        frames: list[torch.Tensor] = []
        gen = generator or make_generator(seed)
        up = self._stage2(Edit("upscale", [prompt]), low_res, gen, steps, cfg, noise_level, negative_prompt,
                          _recorder(frames, record_every, None), sampler=sampler, eta=eta)
        meta = {"command": "upscale", "prompt": prompt, "negative_prompt": negative_prompt, "seed": seed,
                **sampler_meta(sampler, eta), **self._stage2_meta(steps, cfg, noise_level), "model": self.model}
        return Result(up, low_res, meta, frames)

    def sdedit(self, image, prompt: str | None = None, *, i_start: int = 5, repeat: int = 1,
               **kw) -> Result:
        """Noise `image` to the strided timestep at index i_start and denoise from there (SDEdit).
        repeat > 1 feeds the stage I result back in, as in SDEdit's paper; stage II runs once.
        prompt None: the model's default (see `default_prompt`)."""
        return self.sdedit_sweep(image, prompt, [i_start], repeat=repeat, **kw)[0]

    def sdedit_sweep(self, image, prompt: str | None = None, i_starts: list[int] = (5,), *, repeat: int = 1,
                     **kw) -> list[Result]:
        """`sdedit` at each of `i_starts` (each from its own generator, seeded alike), in one model
        lifetime: every stage I run (all starts, all repeats) on one load of stage I, which is then
        freed, and every stage II run on one load of stage II."""
        prompt = self.default_prompt() if prompt is None else prompt
        if repeat < 1:
            raise ParamError("repeat", f"must be at least 1, got {repeat}")
        upscale = kw.pop("upscale", None)
        given = kw.pop("generator", None)
        firsts = []
        with self.holding("_s1"):
            for i_start in i_starts:
                gen = given or make_generator(kw.get("seed", 0))
                current, pending = image, None
                for r in range(repeat):
                    last = r == repeat - 1

                    def start(den, ts, g, n, src=current, i_start=i_start):
                        x = image_at(src, den.sample_size).to(den.device, den.dtype)
                        x = x.expand(n, -1, -1, -1) if x.shape[0] == 1 else x
                        return edits.sdedit_start(x, ts, i_start, den.schedule, g)

                    edit = Edit("sdedit", [prompt], start=start, meta={"i_start": i_start, "repeat": repeat})
                    res, pending = self._generate_stage1(edit, **self._gen_kw(kw, upscale if last else False, gen))
                    current = res.stage1
                firsts.append((res, pending))
        with self.holding("_s2"):
            return [res if pending is None else self._generate_stage2(res, pending) for res, pending in firsts]

    @staticmethod
    def _gen_kw(kw: dict, upscale, generator) -> dict:
        """`generate`'s keywords, defaults filled in, for `_generate_stage1`."""
        import inspect
        params = inspect.signature(DFEdit.generate).parameters
        out = {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
        unknown = set(kw) - set(out)
        if unknown:
            raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
        return {**out, **kw, "upscale": upscale, "generator": generator}

    def inpaint(self, image, mask, prompt: str | None = None, *, invert_mask: bool = False,
                jump_length: int = 1, jump_n_sample: int = 1, **kw) -> Result:
        """RePaint: regenerate where the mask is white, keep the rest exactly (also in stage II).
        Resampling (jump_n_sample > 1) needs a sampler that draws fresh noise (ddpm, or ddim with eta > 0).
        prompt None: the model's default (see `default_prompt`)."""
        check_sampler(kw.get("sampler", DEFAULT_SAMPLER), kw.get("eta", 0.0), resampling=jump_n_sample > 1)
        prompt = self.default_prompt() if prompt is None else prompt
        src = image if isinstance(image, (torch.Tensor, Image.Image)) else open_image(image)
        msrc = mask if isinstance(mask, (torch.Tensor, Image.Image)) else open_image(mask)
        check_mask(mask_at(msrc, self.info.sample_size, invert_mask), invert_mask)

        def hook(den, g):
            orig = image_at(src, den.sample_size).to(den.device, den.dtype)
            m = mask_at(msrc, den.sample_size, invert_mask).to(den.device, den.dtype)
            return edits.inpaint_hook(orig, m, den.schedule, g)

        edit = Edit("inpaint", [prompt], hook=hook,
                    schedule=lambda ts: edits.repaint_timesteps(ts, jump_length, jump_n_sample),
                    meta={"invert_mask": invert_mask, "jump_length": jump_length, "jump_n_sample": jump_n_sample})
        return self.generate(edit, **kw)

    def anagram(self, prompts: list[str], views: list[str], *, view_seed: int = 0, **kw) -> Result:
        """Visual anagram: prompt k is what the image shows under view k (views[0] is usually identity)."""
        if len(prompts) < 2:
            raise DfeditError("an anagram needs at least two prompts")
        if len(views) != len(prompts):
            raise DfeditError(f"{len(prompts)} prompts need {len(prompts)} views (got {len(views)})")
        check_views(views)

        def eps(den, conds, uncond, scale):
            vs = [make_view(v, den.sample_size, view_seed) for v in views]
            return edits.multi_guided(den, conds, uncond, scale, vs)

        edit = Edit("anagram", list(prompts), eps=eps, meta={"views": views, "view_seed": view_seed})
        return self.generate(edit, **kw)

    def hybrid(self, prompts: list[str], *, split: str = "gaussian", kernel: int | None = None,
               sigma: float | None = None, **kw) -> Result:
        """Hybrid image: low frequencies follow prompts[0], high frequencies prompts[-1] (and the
        middle band prompts[1] with three prompts); --split color: grayscale vs colour."""
        if len(prompts) not in (2, 3):
            raise DfeditError(f"a hybrid takes two or three prompts, got {len(prompts)}")
        # kernel/sigma are given at 64 px and scale with the model size, like the defaults.
        edits.frequency_split(split, 64, len(prompts), kernel, sigma)  # validate before loading

        def eps(den, conds, uncond, scale):
            f = den.sample_size / 64
            k = None if kernel is None else max(1, round(kernel * f)) | 1
            s = None if sigma is None else sigma * f
            combine = edits.frequency_split(split, den.sample_size, len(prompts), k, s)
            return edits.multi_guided(den, conds, uncond, scale, combine=combine)

        edit = Edit("hybrid", list(prompts), eps=eps, meta={"split": split, "kernel": kernel, "sigma": sigma})
        return self.generate(edit, **kw)

    def noise(self, image: torch.Tensor, ts: list[int], seed: int = 0) -> list[torch.Tensor]:
        """Forward process x_t = sqrt(abar) x0 + sqrt(1 - abar) eps at each t (one draw per t)."""
        schedule = self.info.schedule
        gen = make_generator(seed)
        out = []
        for t in ts:
            t = schedule.check_t(t)
            out.append(schedule.add_noise(image, randn(image.shape, gen, image.device, image.dtype), t))
        return out

    def denoise(self, image: torch.Tensor, ts: list[int], *, prompt: str | None = None, seed: int = 0,
                cfg: float | None = None, stride: int | None = None, steps: int | None = None,
                sampler: str = DEFAULT_SAMPLER, eta: float = 0.0, blur_kernel: int = 5,
                blur_sigma: float = 2.0, record_every: int = 0) -> list[dict]:
        """The course's comparison at each t: noisy, Gaussian blur, one-step and iterative denoising
        (row["frames"]: the iterative run's x0 estimates every `record_every` steps, when > 0). The
        iterative run goes from t down the --stride (or --steps) grid with `sampler`.
        prompt None: the model's default (see `default_prompt`)."""
        prompt = self.default_prompt() if prompt is None else prompt
        check_finite(cfg, "cfg")
        check_seed(seed)
        self.check(stride=stride, steps=steps, sampler=sampler, eta=eta, upscale=False, prompts=[prompt])
        s1 = self.stage1()
        if cfg is None:
            cfg = self.info.default_cfg
        sched = s1.schedule
        grid_ts = plan_timesteps(sched, sampler, stride, steps)
        ts = [sched.check_t(t) for t in ts]
        gen = make_generator(seed)
        (cond,), uncond = self.conds(s1, [prompt], "", 1)
        eps_fn = cfg_fn(s1, cond, uncond, cfg)
        x0 = image.to(s1.device, s1.dtype)
        rows = []
        for t in ts:
            x_t = sched.add_noise(x0, randn(x0.shape, gen, x0.device, x0.dtype), t)
            eps, _ = eps_fn(x_t, t)
            one_step = sched.eps_to_x0(x_t, eps, t).clamp(-1, 1)
            # Iterative: from t down the stride grid (t itself need not be on it).
            chain = [t] + [s for s in grid_ts if s < t]
            frames: list[torch.Tensor] = []
            iterative = self.run(s1, eps_fn, x_t, chain, gen, f"denoise t={t}",
                                 callback=_recorder(frames, record_every, None), sampler=sampler, eta=eta)
            rows.append({"t": t, "cfg": cfg, "frames": frames, "noisy": x_t, "blur": gaussian_blur(x_t, blur_kernel, blur_sigma),
                         "one_step": one_step, "iterative": iterative})
        return rows


def default_prompt(model: str) -> str:
    """The prompt of sdedit / inpaint / denoise when none is given: the course's "a high quality
    photo" for IF; for an emoji model the empty prompt, i.e. its unconditional branch (the model
    never saw that photo caption, which pulled every edit towards one blob)."""
    return resolve_model(model).default_prompt


def check_text(prompts: list[str]) -> None:
    """Prompts are text: a command line whose bytes are not UTF-8 reaches Python as lone surrogates,
    which no tokenizer takes."""
    for p in prompts:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            shown = p.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            raise DfeditError(f"the prompt {shown[:60]!r} is not valid UTF-8 text: type it again in UTF-8") from None


def check_finite(value: float | None, param: str) -> None:
    import math
    if value is not None and not math.isfinite(value):
        raise ParamError(param, f"must be a finite number, got {value}")


SEED_MAX = 2**64 - 1


def check_seed(seed: int, param: str = "seed") -> int:
    if not 0 <= int(seed) <= SEED_MAX:
        raise ParamError(param, f"must be between 0 and 2^64 - 1 ({SEED_MAX}), got {seed}")
    return int(seed)


def check_options(*, seed: int = 0, cfg: float | None = None, stage2_cfg: float | None = None, eta: float = 0.0,
                  num_samples: int = 1) -> None:
    """What a generating call can check from its numbers alone, before any config is read: the
    CLI runs it first thing, `generate` (for API callers) at its start."""
    if num_samples < 1:
        raise ParamError("num_samples", f"must be at least 1, got {num_samples}")
    check_seed(seed)
    check_finite(cfg, "cfg")
    check_finite(stage2_cfg, "stage2_cfg")
    check_finite(eta, "eta")


def check_mask(m: torch.Tensor, invert: bool = False) -> None:
    """A mask must mark something to regenerate, at the size the model sees it."""
    if not bool((m > 0.5).any()):
        colour = "white (keep everything, with {invert_mask})" if invert else "black (keep everything)"
        raise ParamError("mask", f"is all {colour} at the model's {m.shape[-1]} px, so there is nothing to "
                                 "inpaint: white marks the part to regenerate", also=("invert_mask",))


def _recorder(frames: list, every: int, callback: StepCallback | None) -> StepCallback | None:
    """Keep the x0 estimate every `every` reverse steps (and the last one) for --trajectory."""
    if every <= 0:
        return callback

    def cb(i, t, t_prev, x, x0):
        if x0 is not None and (i % every == 0 or t_prev == -1):
            frames.append(x0.detach().float().cpu())
        if callback is not None:
            callback(i, t, t_prev, x, x0)

    return cb


def model_info(model: str):
    """(noise schedule, image size) of a stage I model from its config alone, no weights loaded
    (`dfedit.backends.resolve` gives the whole ModelInfo)."""
    info = resolve_model(model)
    return info.schedule, info.sample_size


def model_size(model: str) -> int:
    return model_info(model)[1]


def load_denoiser(model: str, device: torch.device, dtype: torch.dtype, **kw) -> Denoiser:
    """The stage I denoiser of any registered backend (IF, an emoji model, ...)."""
    info = resolve_model(model)
    return info.backend.load(info, device, dtype, **kw)
