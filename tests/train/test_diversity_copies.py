"""Diversity and copying, the functions themselves, on synthetic "models" whose answer is known:
a perfect-but-diverse model (every seed a fresh drawing, as different from the others as the real
styles are from each other), a copying model, a model with one picture per prompt, a blank one."""

import math

import numpy as np
import pytest
import torch

from dfedit_train import recognise as rec
from dfedit_train.data import images_to_tensor

P, STYLES, SEEDS, SIGMA = 12, 3, 8, 40.0  # prompts, real drawing sets, seeds; a drawing's own variation


def world(seed=0):
    """Each emoji a design (a smooth random picture) that every drawing (a real style or a sample)
    varies by its own smooth perturbation of the same size."""
    g = np.random.default_rng(seed)

    def smooth(n):  # 8x8 random fields upsampled to 64 px: structure at the scale a 32 px judge sees
        small = torch.from_numpy(g.normal(size=(n, 3, 8, 8))).float()
        return torch.nn.functional.interpolate(small, size=64, mode="bilinear", align_corners=False)

    design = 128 + 60 * smooth(P)

    def drawings(n):  # (P, n, 64, 64, 3) uint8
        x = design[:, None] + SIGMA * smooth(P * n).view(P, n, 3, 64, 64)
        return x.clamp(0, 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()

    keys = [f"1F6{i:02X}" for i in range(P)]
    real = drawings(STYLES)
    sets = {f"style{s}": (real[:, s], keys) for s in range(STYLES)}
    bank = images_to_tensor(real.reshape(-1, 64, 64, 3), 64)  # every training image of every set
    return sets, keys, bank, drawings


def as_samples(u8):  # (P, S, 64, 64, 3) uint8 -> (P, S, 3, 64, 64) in [-1, 1]
    return images_to_tensor(u8.reshape(-1, 64, 64, 3), 64).view(u8.shape[0], u8.shape[1], 3, 64, 64)


@pytest.fixture(scope="module")
def w():
    return world()


def score(samples, sets, keys, bank, recognised=None):
    rec_mask = torch.ones(samples.shape[:2], dtype=torch.bool) if recognised is None else recognised
    div = rec.diversity(samples, rec_mask, keys, rec.real_spread(sets, 32), 32)
    return div, rec.copy_rate(samples.flatten(0, 1), bank, 32)


def test_perfect_diverse_model_is_as_varied_as_the_real_drawings_and_copies_nothing(w):
    sets, keys, bank, drawings = w
    div, cp = score(as_samples(drawings(SEEDS)), sets, keys, bank)
    assert div["n_prompts"] == P and div["n_seeds"] == SEEDS and div["recognised"] == 1.0
    assert div["diversity"] == pytest.approx(1.0, abs=0.15)
    assert cp["n"] == P * SEEDS and cp["gu"] == 0.0 and cp["near"] == 0.0 and cp["copy"] == 0.0


def test_copying_model_copies_everything(w):
    sets, keys, bank, _ = w
    real = np.stack([sets[f"style{s % STYLES}"][0] for s in range(SEEDS)], 1)  # seed s copies style s % 3
    div, cp = score(as_samples(real), sets, keys, bank)
    assert cp["gu"] == 1.0 and cp["near"] == 1.0 and cp["copy"] == 1.0 and cp["nn_rmse_median"] < 1e-6
    # it copies several drawings, so it varies (counts 3, 3, 2 over 8 seeds: 21 of 28 pairs differ)...
    assert div["diversity"] == pytest.approx(21 / 28, abs=0.1)
    one = as_samples(np.repeat(sets["style0"][0][:, None], SEEDS, 1))  # ...copying one: no diversity
    div, cp = score(one, sets, keys, bank)
    assert div["diversity"] == 0.0 and cp["copy"] == 1.0


def test_a_near_copy_is_a_copy(w):
    sets, keys, bank, _ = w
    x = bank[:10] + 0.02 * torch.randn(bank[:10].shape, generator=torch.Generator().manual_seed(0))  # ~1% RMSE
    f = rec.copy_flags(x, bank, 32)
    assert f["near"].all() and f["copy"].all()


def test_one_picture_per_prompt_and_blank_have_no_diversity_and_copy_nothing(w):
    sets, keys, bank, drawings = w
    fixed = np.repeat(drawings(1), SEEDS, 1)  # a new drawing, the same for every seed
    div, cp = score(as_samples(fixed), sets, keys, bank)
    assert div["diversity"] == 0.0 and cp["copy"] == 0.0
    blank = torch.ones(P, SEEDS, 3, 64, 64)
    div, cp = score(blank, sets, keys, bank)  # even if a judge called it recognisable
    assert div["diversity"] == 0.0 and cp["copy"] == 0.0
    div, _ = score(blank, sets, keys, bank, torch.zeros(P, SEEDS, dtype=torch.bool))
    assert div["diversity"] == 0.0 and div["recognised"] == 0.0


def test_only_recognised_samples_count(w):
    sets, keys, bank, drawings = w
    x = as_samples(drawings(SEEDS))
    mask = torch.zeros(P, SEEDS, dtype=torch.bool)
    mask[:, :2] = True  # two recognised per prompt: their spread only
    div, _ = score(x, sets, keys, bank, mask)
    want = np.mean([rec.pairwise_rmse(x[p, :2]) / rec.real_spread(sets)[k] for p, k in enumerate(keys)])
    assert div["diversity"] == pytest.approx(want)
    mask[:, 1] = False  # one recognised sample cannot vary
    assert score(x, sets, keys, bank, mask)[0]["diversity"] == 0.0


def test_gu_criterion_is_one_third_of_the_second_nearest_different_image():
    bank = torch.zeros(3, 3, 1, 1) - 1
    bank[1, 0] += 0.3
    bank[2, 1] += 0.3  # 0.3 apart from the first along two axes
    near = bank[:1].clone()
    near[0, 0] += 0.09  # 0.09 from the first, 0.21 from the second: 0.09 > 0.21 / 3
    nearer = bank[:1].clone()
    nearer[0, 0] += 0.06  # 0.06 < 0.24 / 3
    assert not rec.copy_flags(near, bank, 1)["gu"].item()
    assert rec.copy_flags(nearer, bank, 1)["gu"].item()
    # An exact duplicate is not a different image: with the first twice, the second nearest
    # *different* image is still the second one, and a copy of the first stays a copy.
    dup = torch.cat([bank[:1], bank])
    assert rec.copy_flags(bank[:1], dup, 1)["gu"].item()
    assert rec.copy_flags(nearer, dup, 1)["gu"].item()


def test_pairwise_rmse_and_real_spread():
    a, b = torch.full((1, 3, 32, 32), -1.0), torch.full((1, 3, 32, 32), 1.0)
    assert rec.pairwise_rmse(torch.cat([a, b])) == pytest.approx(1.0)  # white vs black: RMSE 1
    assert rec.pairwise_rmse(torch.cat([a, a, b])) == pytest.approx(2 / 3)
    assert math.isnan(rec.pairwise_rmse(a))
    white, black = np.full((1, 64, 64, 3), 255, np.uint8), np.zeros((1, 64, 64, 3), np.uint8)
    spread = rec.real_spread({"x": (white, ["A"]), "y": (black, ["A"]), "z": (white[:0], [])})
    assert spread == {"A": pytest.approx(1.0)}
    assert rec.real_spread({"x": (white, ["A"])}) == {}  # one drawing has no spread
