"""The Python API: what every CLI command calls, returning tensors and PIL images.

    from dfedit import DFEdit
    df = DFEdit(model="DeepFloyd/IF-I-XL-v1.0")
    result = df.sample("an oil painting of a snowy village", seed=777)
    result.pil()[0].save("village.png")

Every generating command is an `Edit` (dfedit.edits: which prompts it encodes, how it builds its
start state, its noise-estimate function and its per-step hook for a given denoiser) run against
a `Plan` (dfedit.plan: every option, checked once before any weights load). `DFEdit.generate`
runs an Edit through stage I and, when the plan says so, the same Edit through stage II (views,
frequency splits and the inpainting projection are rebuilt at the upscaler's size). The model string is resolved once
into a `ModelInfo` by its backend (dfedit.backends), and stage II is that backend's `Upscaler`, so
nothing here knows which model family runs. Models load lazily; with keep_loaded=False (what the
CLI uses) each is freed when the command is done with its stage (`holding`: a sweep loads each
stage once), so T5, stage I and stage II never share the GPU.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from PIL import Image

from . import edits
from .backends import ModelInfo, Upscaler
from .backends import resolve as resolve_model
from .constants import DEFAULT_SAMPLER, DEFAULT_STAGE1, DEFAULT_STAGE2, NOISE_LEVEL, STAGE2_CFG, STAGE2_STEPS
from .denoiser import Cond, Denoiser, EpsFn
from .devices import free_memory, pick_device, pick_dtype
from .edits import Edit
from .errors import ParamError
from .filters import gaussian_blur
from .images import open_image, to_pil
from .plan import Plan, Stage2Plan, check_numbers, check_prompts, encoded
from .plan import make_generator, make_plan
from .progress import progress_bar
from .sampler import StepCallback, cfg as cfg_fn, denoise_loop, randn
from .samplers import SAMPLERS, check_sampler, sampler_meta


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
        from .outputs import png_metadata, save_png
        return save_png(self.pil()[index], path, png_metadata(self.meta))


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
        self.check_prompts(prompts)
        self._text_encoder().encode(self.encoded(prompts))

    def _text_encoder(self):
        if self._s1 is not None:
            return self._s1.prompt_encoder
        if self._encoder is None:
            self._encoder = self.info.backend.prompt_encoder(self.info, self.device, self.dtype, offload=self.offload,
                                                             cache_dir=self.cache_dir, quiet=self.quiet)
        return self._encoder

    def plan(self, prompts: list[str], **options) -> Plan:
        """Every option of a generating run checked from configs and tokenizers only (no weights),
        as a `Plan` (see dfedit.plan.make_plan for the keywords). The CLI makes one per command
        before anything loads; the API methods make one when they are not handed one."""
        return make_plan(self.info, prompts, stage2=self.stage2_model, style=self.style, offload=self.offload,
                         upscaler=self.upscaler if self._s2 is None else None, prompts_checked=self.check_prompts,
                         **options)

    def check_prompts(self, prompts: list[str]) -> None:
        """Every prompt is text and fits the text encoder (see dfedit.plan.check_prompts)."""
        check_prompts(self.info, prompts)

    def encoded(self, prompts: list[str]) -> list[str]:
        """What the text encoder is given for each prompt (see dfedit.plan.encoded)."""
        return encoded(self.info, prompts)

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
        enc = den.prompt_encoder.encode(self.encoded(list(prompts) + [negative])).to(den.device, den.dtype)
        k = len(prompts)
        return [enc[i:i + 1].repeat_interleave(n) for i in range(k)], enc[k:k + 1].repeat_interleave(n)

    def run(self, den: Denoiser, eps_fn: EpsFn, x: torch.Tensor, timesteps: list[int], generator,
            description: str, hook=None, callback: StepCallback | None = None,
            sampler: str = DEFAULT_SAMPLER, eta: float = 0.0) -> torch.Tensor:
        with progress_bar(len(timesteps), description, not self.quiet) as bar:
            return denoise_loop(eps_fn, x, timesteps, den.schedule, generator, hook=hook, callback=callback,
                                progress=bar, eta=eta, sampler=sampler)

    def generate(self, edit: Edit, plan: Plan | None = None, *, callback: StepCallback | None = None,
                 generator: torch.Generator | None = None, **options) -> Result:
        """Run `edit` through stage I (and stage II) against `plan`, or a plan made from `options`
        (the keywords of `plan`: seed, cfg, stride or steps, num_samples, sampler, eta, upscale,
        stage2_steps, stage2_cfg, noise_level, negative_prompt, record_every)."""
        return self.generate_all([edit], plan, callback=callback, generator=generator, **options)[0]

    def generate_all(self, edits_: list[Edit], plan: Plan | None = None, *, callback: StepCallback | None = None,
                     generator: torch.Generator | None = None, **options) -> list[Result]:
        """Several edits on one plan in one model lifetime: every stage I run on one load of stage I,
        which is then freed, and every stage II run on one load of stage II. Each edit draws from
        its own generator seeded alike (or all from `generator`)."""
        if plan is None:
            plan = self.plan([p for e in edits_ for p in e.prompts], resampling=any(e.resamples for e in edits_),
                             **options)
        elif options:
            raise TypeError(f"give a plan or its options, not both (got {sorted(options)[0]!r})")
        firsts = []
        with self.holding("_s1"):
            for edit in edits_:
                gen = generator or plan.generator()
                firsts.append((self._stage1(edit, plan, gen, callback), gen))
        if plan.stage2 is None:
            return [res for res, _ in firsts]
        with self.holding("_s2"):
            return [self._stage2(edit, res, plan, gen) for edit, (res, gen) in zip(edits_, firsts)]

    def _stage1(self, edit: Edit, plan: Plan, gen: torch.Generator, callback: StepCallback | None) -> Result:
        s1 = self.stage1()
        x = None
        for _ in range(edit.repeat):
            frames: list[torch.Tensor] = []  # a repeat keeps the frames of its last pass
            conds, uncond = self.conds(s1, edit.prompts, plan.negative_prompt, plan.num_samples)
            ts = list(plan.timesteps)
            if edit.start is not None:
                x, ts = edit.start(s1, ts, gen, plan.num_samples, x)
            else:
                x = randn((plan.num_samples, s1.channels, s1.sample_size, s1.sample_size), gen, s1.device, s1.dtype)
            if edit.timestep_transform is not None:
                ts = edit.timestep_transform(ts)
            hook = edit.hook(s1, gen) if edit.hook else None
            x = self.run(s1, edit.eps(s1, conds, uncond, plan.cfg), x, ts, gen, f"{edit.name} (stage I)", hook,
                         _recorder(frames, plan.record_every, callback), sampler=plan.sampler, eta=plan.eta)
        pm = plan.meta()
        meta = {"command": edit.name, **self.prompt_meta(edit.prompts), "negative_prompt": plan.negative_prompt,
                "seed": plan.seed, "cfg": plan.cfg, "stride": pm["stride"],
                "steps": SAMPLERS[plan.sampler].model_calls(ts), "timesteps": len(ts),
                "model": s1.name, "num_samples": plan.num_samples, **sampler_meta(plan.sampler, plan.eta),
                **edit.meta, **({"style": plan.style} if plan.style is not None else {})}
        self._done_with("_s1")
        return Result(x, x, meta, frames)

    def _stage2(self, edit: Edit, res: Result, plan: Plan, gen: torch.Generator) -> Result:
        """Stage II through the backend's `Upscaler` (IF stage II: x_T at its size, conditioned on the
        noised, upsampled low-res image; `steps` model calls in diffusers' leading spacing), any sampler."""
        s2p = plan.stage2
        up, s2 = self.upscaler(), self.stage2()
        ts = up.timesteps(s2, s2p.steps, plan.sampler, plan.eta)
        if edit.timestep_transform is not None:
            ts = edit.timestep_transform(ts)
        low_res = res.stage1
        conds, uncond = self.conds(s2, edit.prompts, plan.negative_prompt, low_res.shape[0])
        x, conds, uncond = up.condition(s2, low_res, gen, s2p.noise_level, conds, uncond)
        hook = edit.hook(s2, gen) if edit.hook else None
        out = self.run(s2, edit.eps(s2, conds, uncond, s2p.cfg), x, ts, gen, f"{edit.name} (stage II)", hook,
                       _recorder(res.frames, plan.record_every, None), sampler=plan.sampler, eta=plan.eta)
        self._done_with("_s2")
        return Result(out, low_res, {**res.meta, **s2p.meta()}, res.frames)

    # ---- commands ----------------------------------------------------------------------------
    def sample(self, prompt: str, **kw) -> Result:
        """Text -> image. Keywords as `generate` (seed, cfg, stride, num_samples, upscale, ...)."""
        return self.generate(edits.sample(prompt), **kw)

    def upscale(self, low_res: torch.Tensor, prompt: str, *, seed: int = 0, steps: int = STAGE2_STEPS,
                cfg: float = STAGE2_CFG, noise_level: int = NOISE_LEVEL, negative_prompt: str = "",
                record_every: int = 0, sampler: str = DEFAULT_SAMPLER, eta: float = 0.0,
                generator: torch.Generator | None = None) -> Result:
        """Stage II alone, on stage-I-sized images `low_res` in [-1, 1]: a Result whose `stage1` is
        the input and whose `frames` hold the x0 estimates every `record_every` steps (0: none)."""
        check_numbers(seed=seed, stage2_cfg=cfg, eta=eta)
        check_sampler(sampler, eta)
        plan = Plan(prompts=(prompt,), negative_prompt=negative_prompt, seed=seed, num_samples=low_res.shape[0],
                    cfg=cfg, sampler=sampler, eta=eta, stride=None, steps=None, timesteps=(),
                    stage2=Stage2Plan(self.stage2_model, steps, cfg, noise_level), record_every=record_every)
        res = Result(low_res, low_res, {}, [])
        with self.holding("_s2"):
            up = self._stage2(edits.Edit("upscale", [prompt]), res, plan, generator or plan.generator())
        meta = {"command": "upscale", "prompt": prompt, "negative_prompt": negative_prompt, "seed": seed,
                **sampler_meta(sampler, eta), **plan.stage2.meta(), "model": self.model}
        return Result(up.images, low_res, meta, up.frames)

    def sdedit(self, image, prompt: str | None = None, *, i_start: int = 5, repeat: int = 1,
               **kw) -> Result:
        """Noise `image` to the strided timestep at index i_start and denoise from there (SDEdit).
        repeat > 1 feeds the stage I result back in, as in SDEdit's paper; stage II runs once.
        prompt None: the model's default (ModelInfo.default_prompt)."""
        return self.sdedit_sweep(image, prompt, [i_start], repeat=repeat, **kw)[0]

    def sdedit_sweep(self, image, prompt: str | None = None, i_starts: list[int] = (5,), *, repeat: int = 1,
                     plan: Plan | None = None, callback: StepCallback | None = None,
                     generator: torch.Generator | None = None, **kw) -> list[Result]:
        """`sdedit` at each of `i_starts` on one plan, in one model lifetime (see `generate_all`).
        The image is decoded once, whatever the number of entries and stages."""
        prompt = self.info.default_prompt if prompt is None else prompt
        plan = plan or self.plan([prompt], **kw)
        src = image if isinstance(image, (torch.Tensor, Image.Image)) else open_image(image)
        entries = [edits.sdedit(src, prompt, i, plan, repeat=repeat) for i in i_starts]
        return self.generate_all(entries, plan, callback=callback, generator=generator)

    def inpaint(self, image, mask, prompt: str | None = None, *, invert_mask: bool = False,
                jump_length: int = 1, jump_n_sample: int = 1, plan: Plan | None = None, **kw) -> Result:
        """RePaint: regenerate where the mask is white, keep the rest exactly (also in stage II).
        Resampling (jump_n_sample > 1) needs a sampler that draws fresh noise (ddpm, or ddim with eta > 0).
        prompt None: the model's default (ModelInfo.default_prompt)."""
        prompt = self.info.default_prompt if prompt is None else prompt
        src = image if isinstance(image, (torch.Tensor, Image.Image)) else open_image(image)
        msrc = mask if isinstance(mask, (torch.Tensor, Image.Image)) else open_image(mask, "mask")
        edit = edits.inpaint(src, msrc, prompt, self.info.sample_size, invert_mask=invert_mask,
                             jump_length=jump_length, jump_n_sample=jump_n_sample)
        return self.generate(edit, plan, **kw)

    def anagram(self, prompts: list[str], views: list[str], *, view_seed: int = 0, plan: Plan | None = None,
                **kw) -> Result:
        """Visual anagram: prompt k is what the image shows under view k (views[0] is usually identity)."""
        edit = edits.anagram(list(prompts), list(views), view_seed, base_size=self.info.sample_size)
        return self.generate(edit, plan, **kw)

    def hybrid(self, prompts: list[str], *, split: str = "gaussian", kernel: int | None = None,
               sigma: float | None = None, plan: Plan | None = None, **kw) -> Result:
        """Hybrid image: low frequencies follow prompts[0], high frequencies prompts[-1] (and the
        middle band prompts[1] with three prompts); split color: grayscale vs colour."""
        edit = edits.hybrid(list(prompts), self.info.sample_size, split, kernel, sigma)
        return self.generate(edit, plan, **kw)

    def noise(self, image: torch.Tensor, ts: list[int], seed: int = 0) -> list[torch.Tensor]:
        """Forward process x_t = sqrt(abar) x0 + sqrt(1 - abar) eps at each t (one draw per t)."""
        schedule = self.info.schedule
        gen = make_generator(seed)
        out = []
        for t in ts:
            t = schedule.check_t(t)
            out.append(schedule.add_noise(image, randn(image.shape, gen, image.device, image.dtype), t))
        return out

    def denoise(self, image: torch.Tensor, ts: list[int], *, prompt: str | None = None, plan: Plan | None = None,
                blur_kernel: int = 5, blur_sigma: float = 2.0, **kw) -> list[dict]:
        """The course's comparison at each t: noisy, Gaussian blur, one-step and iterative denoising
        (row["frames"]: the iterative run's x0 estimates every `record_every` steps, when > 0). The
        iterative run goes from t down the plan's grid (--stride or --steps) with its sampler.
        Keywords: the plan's (seed, cfg, stride, steps, sampler, eta, record_every).
        prompt None: the model's default (ModelInfo.default_prompt)."""
        prompt = self.info.default_prompt if prompt is None else prompt
        plan = plan or self.plan([prompt], upscale=False, **kw)
        s1 = self.stage1()
        sched = s1.schedule
        ts = [sched.check_t(t) for t in ts]
        gen = plan.generator()
        (cond,), uncond = self.conds(s1, [prompt], "", 1)
        eps_fn = cfg_fn(s1, cond, uncond, plan.cfg)
        x0 = image.to(s1.device, s1.dtype)
        rows = []
        for t in ts:
            x_t = sched.add_noise(x0, randn(x0.shape, gen, x0.device, x0.dtype), t)
            eps, _ = eps_fn(x_t, t)
            one_step = sched.eps_to_x0(x_t, eps, t).clamp(-1, 1)
            # Iterative: from t down the plan's grid (t itself need not be on it).
            chain = [t] + [s for s in plan.timesteps if s < t]
            frames: list[torch.Tensor] = []
            iterative = self.run(s1, eps_fn, x_t, chain, gen, f"denoise t={t}",
                                 callback=_recorder(frames, plan.record_every, None), sampler=plan.sampler,
                                 eta=plan.eta)
            rows.append({"t": t, "cfg": plan.cfg, "frames": frames, "noisy": x_t, "blur": gaussian_blur(x_t, blur_kernel, blur_sigma),
                         "one_step": one_step, "iterative": iterative})
        return rows


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
