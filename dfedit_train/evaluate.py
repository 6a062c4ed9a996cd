"""Offline evaluation: no Inception or CLIP weights can be downloaded here, so measure what needs none.

1. Held-out denoising loss per noise band with *fixed* (t, noise) per image: comparable across
   checkpoints of a run, unlike the noisy training loss; the same on a train subset shows the gap.
2. Memorisation: RMSE from each sample to its nearest training image, next to the same distance
   for real held-out images (a model that copies training data lands far below that baseline).
3. A sample grid (samples on top, their nearest training images below) with its parameters in the PNG.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dfedit.cache import cache_root

from dfedit.files import atomic_write
from dfedit.emoji import checkpoint as ckpt
from dfedit.emoji.text import TextEncoder
from dfedit.errors import DfeditError

from . import data as datamod
from .data import images_to_tensor
from .config import data_config
from .sample import sample, save_grid, to_uint8

BANDS = ((0, 100), (100, 300), (300, 600), (600, 1000))


def _images(d, idx, size):
    return images_to_tensor(d.images[idx], size)


@torch.no_grad()
def band_losses(den, x, text, mask, seed: int, batch: int = 64, bar=None) -> dict[str, float]:
    """Mean eps-MSE per timestep band, t and noise fixed by the seed (identical for every checkpoint).
    bar: a dfedit progress bar advanced once per batch."""
    diff, out = den.diffusion, {}
    T = diff.T
    for lo, hi in BANDS:
        hi = min(hi, T)
        g = torch.Generator().manual_seed(seed * 1000 + lo)
        t = torch.randint(lo, hi, (x.shape[0],), generator=g)
        noise = torch.randn(x.shape, generator=g)
        total = 0.0
        for i in range(0, x.shape[0], batch):
            sl = slice(i, i + batch)
            tt, nz, x0 = t[sl].to(den.device), noise[sl].to(den.device), x[sl].to(den.device)
            x_t = diff.noised(x0, tt, nz)
            raw = diff.predict(den.net, x_t.to(den.dtype), tt, text[sl].to(den.device, den.dtype), mask[sl].to(den.device))
            eps = diff.to_eps(raw.float(), x_t, tt)
            total += ((eps - nz) ** 2).mean(dim=(1, 2, 3)).sum().item()
            if bar is not None:
                bar.advance()
        out[f"{lo}-{hi}"] = total / x.shape[0]
    return out


def nearest(queries: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSE (in [0, 1] pixel units) to, and index of, the nearest image in `bank`."""
    q = (queries.flatten(1) + 1) / 2
    b = (bank.flatten(1) + 1) / 2
    d2 = torch.cdist(q.double(), b.double()).pow(2) / q.shape[1]
    best, idx = d2.min(dim=1)
    return best.sqrt().float(), idx


def _load_run(path, device, weights: str):
    """A checkpoint (or run, or the built-in model) with its denoiser, data options and data set."""
    ck, cfg = ckpt.load(path)
    den = ckpt.load_denoiser(ck, device=device, weights=weights)
    dac = data_config(cfg["data"])
    return ck, cfg, den, dac, datamod.load(dac.source, dac.vendor, dac.base_only, dac.val_fraction)


def evaluate(path: str | Path, device="cpu", weights: str = "ema", n_samples: int = 16, stride: int = 20,
             guidance: float = 3.0, seed: int = 0, max_images: int = 256, out: Path | None = None,
             progress: bool = True) -> dict:
    ck, cfg, den, dac, d = _load_run(path, device, weights)
    size = cfg["model"]["image_size"]
    tr, va = np.flatnonzero(~d.val), np.flatnonzero(d.val)
    g = np.random.default_rng(seed)
    va_sub = np.sort(g.permutation(va)[:max_images])
    tr_sub = np.sort(g.permutation(tr)[:max_images])
    enc = TextEncoder(dac.text_encoder, dac.max_length)
    if progress:
        import sys
        print(f"embedding {len(d.captions)} captions (cached after the first run)", file=sys.stderr)
    states, mask = enc.embed(d.captions)

    x_tr = _images(d, tr, size)
    result = {"checkpoint": str(ck), "weights": weights, "step": cfg["state"]["step"], "epoch": cfg["state"]["epoch"],
              "n_val": int(len(va)), "bands": [f"{lo}-{min(hi, den.diffusion.T)}" for lo, hi in BANDS]}
    from dfedit.progress import progress_bar
    n_batches = len(BANDS) * sum(-(-len(sub) // 64) for sub in (va_sub, tr_sub))
    with progress_bar(n_batches, "loss per noise band", enabled=progress) as bar:
        if len(va):
            result["val_loss"] = band_losses(den, _images(d, va_sub, size), states[va_sub].float(), mask[va_sub],
                                             seed, bar=bar)
        result["train_loss"] = band_losses(den, _images(d, tr_sub, size), states[tr_sub].float(), mask[tr_sub],
                                           seed, bar=bar)

    # Samples for held-out captions (fall back to train captions when there is no val split).
    pool = va if len(va) else tr
    pick = np.sort(g.permutation(pool)[:n_samples])
    prompts = [d.captions[i] for i in pick]
    from dfedit.denoiser import Cond
    cond = Cond(text=states[pick].float().to(den.device, den.dtype), text_mask=mask[pick].to(den.device))
    xs = sample(den, prompts, seed=seed, stride=stride, guidance=guidance, progress=progress, cond=cond)
    nn_s, nn_idx = nearest(xs, x_tr)
    real = _images(d, pick, size)
    result["nn_rmse_samples_median"] = float(nn_s.median())
    # Baseline: how far real held-out images are from the training set (none without a val split).
    result["nn_rmse_heldout_real_median"] = float(nearest(real, x_tr)[0].median()) if len(va) else None
    result["near_copies"] = int((nn_s < 0.02).sum())  # <2% RMSE: visually a copy at this size
    result["samples"] = [{"prompt": p, "nn_rmse": float(r), "nearest_train": d.captions[tr[j]]}
                         for p, r, j in zip(prompts, nn_s.tolist(), nn_idx.tolist())]

    out = Path(out) if out is not None else _default_eval_dir(ck)
    out.mkdir(parents=True, exist_ok=True)
    params = {"checkpoint": str(ck), "weights": weights, "prompts": prompts, "seed": seed, "stride": stride,
              "guidance": guidance, "rows": "samples / nearest training image / real image"}
    grid = np.concatenate([to_uint8(xs), to_uint8(x_tr[nn_idx]), to_uint8(real)])
    result["grid"] = str(save_grid(grid, out / "samples.png", params, ncol=len(prompts), scale=max(1, 64 // size)))
    prev = json.loads((out / "eval.json").read_text()) if (out / "eval.json").exists() else {}
    atomic_write(out / "eval.json", json.dumps({**result, **({"recognise": prev["recognise"]} if "recognise" in prev
                                                             else {})}, indent=1).encode())
    return result


def recognise(path: str | Path, device="cpu", weights: str = "ema", n_train: int = 200, n_heldout: int = 200,
              stride: int = 20, guidance: float | None = None, seed: int = 0, out: Path | None = None,
              progress: bool = True, log=print, sampler: str | None = None, steps: int | None = None,
              n_diversity: int = 50, n_seeds: int = 8) -> dict:
    """The recognisability metric (dfedit_train/recognise.py) of a checkpoint, run or the built-in
    model: a table in `eval.json`'s "recognise" entry and a labelled grid of the samples."""
    from dfedit.images import to_pil
    from dfedit.outputs import grid, save_png

    from . import recognise as recmod

    ck, cfg, den, dac, d = _load_run(path, device, weights)
    train_mask = ~d.val
    if dac.subset:
        train_mask &= datamod.subset_mask(d, dac.subset)
    path_, layout = datamod.resolve_source(dac.source, dac.vendor)
    cats = recmod.categories(path_) if layout.name == "npm" and path_.is_file() else {}
    real_sets, ceiling_sets = metric_sets(dac, d)
    r = recmod.recognisability(den, d, train_mask, cats, n_train=n_train, n_heldout=n_heldout, seed=seed,
                               stride=stride, guidance=guidance, progress=progress, log=log, sampler=sampler,
                               steps=steps, real_sets=real_sets, ceiling_sets=ceiling_sets, n_diversity=n_diversity,
                               n_seeds=n_seeds)
    xs, prompts, dx = r.pop("_images"), r.pop("_prompts"), r.pop("_diversity_images", None)
    r.update({"checkpoint": str(ck), "weights": weights, "step": cfg.get("state", {}).get("step"),
              "images_seen": cfg.get("state", {}).get("images_seen")})
    out = Path(out) if out is not None else _default_eval_dir(ck)
    out.mkdir(parents=True, exist_ok=True)
    # A sheet people can read: up to 12 samples per split, each over its caption and, below, the
    # Google image it was asked for; "+" when the judge's top-5 holds the right emoji, "-" when not.
    rows, labels = [], []
    ims = to_pil(xs)
    for split in recmod.SPLITS:
        sel = [i for i, p in enumerate(prompts) if p.split == split]
        sel = sel[::max(1, len(sel) // 12)][:12]  # spread over the set, which is sorted by category
        if not sel:
            continue
        rows.append([ims[i] for i in sel])
        labels.append([("+ " if r["samples"][i]["rank"] < 5 else "- ") + prompts[i].caption for i in sel])
        rows.append([to_pil(_images(d, [prompts[i].row], den.sample_size))[0] for i in sel])
        labels.append([f"{split}: {dac.vendor}" for _ in sel])
    if dx is not None:  # diversity: every seed of the first three diversity captions, one row each
        for p in range(min(3, len(dx))):
            rows.append(to_pil(dx[p]))
            labels.append([r["diversity"]["captions"][p] if s == 0 else f"seed {s + 1}" for s in range(len(dx[p]))])
    sheet = grid(rows, labels)
    r["grid"] = str(save_png(sheet, out / "recognise.png", {
        "checkpoint": str(ck), "weights": weights, "seed": seed, "sampler": r["sampler"], "stride": r["stride"],
        "steps": steps, "guidance": r["guidance"],
        "rows": f"samples (+ top-5 hit, - miss) over the real {dac.vendor} image, per split; then every seed "
                "of three diversity captions"}))
    prev = json.loads((out / "eval.json").read_text()) if (out / "eval.json").exists() else {}
    prev["recognise"] = r
    atomic_write(out / "eval.json", json.dumps(prev, indent=1).encode())
    return r


def metric_sets(dac, d) -> tuple[dict, dict]:
    """(real_sets, ceiling_sets) for the recognisability metric: the model's own drawing set, by
    vendor; the ceiling and the real spread across styles add the other sets models are trained on
    (recognise.TRAINING_SETS) when the model's data is the npm download (fetched as needed), and
    only the model's own set for local data (a test's tiny package)."""
    from . import recognise as recmod

    real = {dac.vendor: recmod.real_set(d)}
    ceil = dict(real)
    if dac.source in ("", "npm"):
        for v in recmod.TRAINING_SETS:
            if v not in ceil:
                ceil[v] = recmod.real_set(datamod.load("npm", v))
    return real, ceil


def _default_eval_dir(ck: Path) -> Path:
    """CKPT/eval for a run; the built-in model lives inside the installed package, so its results go
    to the user cache instead."""
    if ck.resolve() == ckpt.BUILTIN["emoji"].resolve():
        return cache_root() / "eval" / "builtin-emoji"
    return ck / "eval"


def generalisation(path: str | Path, device="cpu", weights: str = "ema", prompts_of: str | Path | None = None,
                   n_train: int = 100, n_pairs: int = 100, n_unseen: int = 100, n_diversity: int = 50,
                   n_seeds: int = 8, stride: int = 30, guidance: float | None = None, seed: int = 0,
                   out: Path | None = None, progress: bool = True, log=print, sampler: str | None = None,
                   steps: int | None = None) -> dict:
    """The generalisation table (dfedit_train/generalise.py) of a model trained on several drawing
    sets, or of any model on the prompts of one (`prompts_of`: a run or model whose data config
    names the sets and the split: a one-set model is judged on a several-sets model's prompts so). The
    table goes to eval.json's "generalise" entry, with a labelled sheet of the samples."""
    from dfedit.images import to_pil
    from dfedit.outputs import grid, save_png

    from . import generalise, sets as setsmod

    ck, cfg = ckpt.load(path)
    ref_ck, ref_cfg = (ck, cfg) if prompts_of is None else ckpt.load(prompts_of)
    dac = data_config(ref_cfg["data"])
    if not dac.sets:
        raise DfeditError(f"{ref_ck} was not trained on several drawing sets (no data.sets): judge it with "
                          "prompts_of a model that was")
    den = ckpt.load_denoiser(ck, device=device, weights=weights)
    ms = setsmod.load_sets(tuple(dac.sets), dac.base_only)
    split = setsmod.run_split(ms, dac)
    r = generalise.evaluate(den, ms, split, n_train=n_train, n_pairs=n_pairs, n_unseen=n_unseen,
                            n_diversity=n_diversity, n_seeds=n_seeds, seed=seed, stride=stride, sampler=sampler,
                            steps=steps, guidance=guidance, progress=progress, log=log)
    xs, prompts, dx = r.pop("_images"), r.pop("_prompts"), r.pop("_diversity_images", None)
    r.update({"checkpoint": str(ck), "weights": weights, "prompts_of": str(ref_ck),
              "step": cfg.get("state", {}).get("step"), "images_seen": cfg.get("state", {}).get("images_seen")})
    out = Path(out) if out is not None else _default_eval_dir(ck)
    out.mkdir(parents=True, exist_ok=True)
    # The sheet: up to 10 samples of each row of the table over the real drawing each asks for
    # ("+": the judge's top-5 holds it), then every seed of three diversity captions.
    rows, labels = [], []
    ims = to_pil(xs)
    rows_of = [generalise.row_name(p) for p in prompts]
    for name in dict.fromkeys(rows_of):
        sel = [i for i, n in enumerate(rows_of) if n == name]
        sel = sel[::max(1, len(sel) // 10)][:10]
        rows.append([ims[i] for i in sel])
        labels.append([("+ " if r["samples"][i]["rank"] < 5 else "- ") + prompts[i].caption[:28] for i in sel])
        rows.append([to_pil(_images(ms, [prompts[i].row], den.sample_size))[0] for i in sel])
        labels.append([f"{name}: {ms.styles[prompts[i].row]}" for i in sel])
    if dx is not None:
        for p in range(min(3, len(dx))):
            rows.append(to_pil(dx[p]))
            cap = r["diversity"]["captions"][p]
            labels.append([cap[:28] if s == 0 else f"seed {s + 1}" for s in range(len(dx[p]))])
    r["grid"] = str(save_png(grid(rows, labels), out / "generalise.png", {
        "checkpoint": str(ck), "prompts_of": str(ref_ck), "seed": seed, "sampler": r["sampler"],
        "stride": r["stride"], "steps": steps, "guidance": r["guidance"],
        "rows": "samples (+ top-5 hit, - miss) over the real drawing asked for, per row of the table; then "
                "every seed of three diversity captions"}))
    prev = json.loads((out / "eval.json").read_text()) if (out / "eval.json").exists() else {}
    prev["generalise"] = r
    atomic_write(out / "eval.json", json.dumps(prev, indent=1).encode())
    return r
