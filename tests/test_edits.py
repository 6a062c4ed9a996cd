"""Edits as compositions around the one loop, checked with oracle denoisers that know the answer."""

import pytest
import torch

from helpers import OracleDenoiser
from dfedit import edits
from dfedit.denoiser import Cond
from dfedit.errors import DfeditError
from dfedit.sampler import conditioned, denoise_loop
from dfedit.splits import SPLITS, hybrid_kernel
from dfedit.views import VIEWS, View, check_view, make_view

TS = list(range(990, -1, -30))


def _img(seed=3, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g) * 1.8 - 0.9


def _cond(n=1, k=1):
    return [Cond(text=torch.zeros(n, 4, 8)) for _ in range(k)]


# ---- SDEdit --------------------------------------------------------------------------------------

@pytest.mark.parametrize("i_start", [0, 1, 5, 10, 20, 33])
def test_sdedit_from_any_start_returns_the_clean_image(i_start, if_schedule):
    x0 = _img()
    g = torch.Generator().manual_seed(0)
    x, ts = edits.sdedit_start(x0, TS, i_start, if_schedule, g)
    assert ts[0] == TS[i_start] and len(ts) == len(TS) - i_start
    out = denoise_loop(conditioned(OracleDenoiser(x0, if_schedule), None), x, ts, if_schedule, g)
    assert (out - x0).abs().max() < 1e-5


def test_sdedit_start_is_the_forward_process(if_schedule):
    x0 = _img()
    x, _ = edits.sdedit_start(x0, TS, 10, if_schedule, torch.Generator().manual_seed(4))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    a = if_schedule.alphas_cumprod[690]
    assert torch.allclose(x, a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-6)
    with pytest.raises(DfeditError, match="^i_start must be between 0 and"):
        edits.sdedit_start(x0, TS, 34, if_schedule, None)


# ---- inpainting ----------------------------------------------------------------------------------

def _mask(size=16):
    m = torch.zeros(1, 1, size, size)
    m[..., 4:12, 5:13] = 1
    return m


@pytest.mark.parametrize("jump_length,jump_n_sample", [(1, 1), (3, 3), (5, 2)])
def test_inpainting_returns_target_in_hole_and_original_outside(jump_length, jump_n_sample, if_schedule):
    original, target, m = _img(1), _img(2), _mask()
    oracle = OracleDenoiser(target, if_schedule)  # the model "wants" the target everywhere
    g = torch.Generator().manual_seed(0)
    ts = edits.repaint_timesteps(TS, jump_length, jump_n_sample)
    hook = edits.inpaint_hook(original, m, if_schedule, g)
    out = denoise_loop(conditioned(oracle, None), torch.randn(1, 3, 16, 16, generator=g), ts, if_schedule, g,
                       hook=hook)
    assert torch.equal(out * (1 - m), original * (1 - m))  # exactly the input outside the mask
    assert ((out - target) * m).abs().max() < 1e-5


def test_inpainting_with_flipped_mask_polarity_fails(if_schedule):
    """Planted bug: a hook that keeps the wrong region must not pass the oracle check above."""
    original, target, m = _img(1), _img(2), _mask()
    g = torch.Generator().manual_seed(0)
    hook = edits.inpaint_hook(original, 1 - m, if_schedule, g)
    out = denoise_loop(conditioned(OracleDenoiser(target, if_schedule), None), torch.randn(1, 3, 16, 16,
                       generator=g), TS, if_schedule, g, hook=hook)
    assert not torch.equal(out * (1 - m), original * (1 - m))


def test_repaint_schedule_shape():
    assert edits.repaint_timesteps(TS, 1, 1) == TS
    ts = edits.repaint_timesteps(TS, 5, 3)
    assert ts[0] == 990 and ts[-1] == 0
    ups = [(a, b) for a, b in zip(ts, ts[1:]) if b > a]
    assert ups and all(b - a == 5 * 30 for a, b in ups)
    downs = sum(1 for a, b in zip(ts, ts[1:]) if b < a)
    assert downs == (len(TS) - 1) + len(ups) * 5  # each jump re-denoises jump_length strides
    assert len(ups) == 2 * 6  # jump points every 5 strides from the clean end, 2 extra passes each


# ---- views and anagrams --------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(VIEWS))
@pytest.mark.parametrize("size", [16, 64, 256])
def test_every_view_is_exactly_invertible_and_norm_preserving(name, size):
    v = make_view(name, size, seed=7)
    x = torch.randn(2, 6, size, size)
    assert torch.equal(v.inverse(v.apply(x)), x)
    assert torch.allclose(v.apply(x).norm(), x.norm())


@pytest.mark.parametrize("name", sorted(VIEWS))
@pytest.mark.parametrize("base, size", [(16, 32), (64, 256), (32, 128)])
def test_every_view_at_a_stage_two_size_moves_the_upsampled_image_as_stage_one(name, base, size):
    """view_II(up(x)) == up(view_I(x)) exactly, up = nearest (each pixel a block): what stage II
    sharpens is the picture stage I made, under every view."""
    from dfedit.views import upsample
    small, big = make_view(name, base, seed=7), make_view(name, size, seed=7, base=base)
    x = torch.randn(2, 3, base, base, generator=torch.Generator().manual_seed(0))
    assert torch.equal(big.apply(upsample(x, size // base)), upsample(small.apply(x), size // base))
    assert torch.equal(big.inverse(big.apply(upsample(x, size // base))), upsample(x, size // base))


def test_an_unlifted_permutation_fails_the_stage_check_and_an_unfixable_view_is_refused():
    from dfedit.views import VIEWS as registry, check_stage, register_view
    with pytest.raises(DfeditError, match="does not move the upsampled image"):
        check_stage(registry["pixel_permute"](256, 0), registry["pixel_permute"](64, 0))  # stage II's own draw

    class Roll(View):  # a one-pixel roll: exact at any size, but one pixel is not one block
        name = "roll"

        def apply(self, x):
            return torch.roll(x, 1, dims=-1)

        def inverse(self, x):
            return torch.roll(x, -1, dims=-1)

    register_view("roll", Roll)
    try:
        make_view("roll", 64)  # fine at one size
        with pytest.raises(DfeditError, match="^view roll at 256 px does not move the upsampled image"):
            make_view("roll", 256, base=64)
    finally:
        registry.pop("roll")


@pytest.mark.parametrize("name", ["inner_circle", "square_hinge"])
def test_the_inner_circle_and_the_hinged_squares_move_what_they_say(name):
    n = 32
    v = make_view(name, n)
    x = torch.arange(n * n, dtype=torch.float32).view(1, 1, n, n)
    y = v.apply(x)[0, 0]
    moved = y != x[0, 0]
    if name == "inner_circle":
        assert not moved[0].any() and not moved[:, 0].any()  # the rim stays
        assert torch.equal(y[8:24, 8:24], torch.rot90(x[0, 0], -1)[8:24, 8:24])  # the middle turns clockwise
    else:
        side, o = n // 3, (n - 3 * (n // 3)) // 2
        sq = slice(o, o + side)
        assert torch.equal(y[sq, sq], torch.rot90(x[0, 0, sq, sq], 1))  # top-left: +90
        sq2 = slice(o + side, o + 2 * side)
        assert torch.equal(y[sq, sq2], torch.rot90(x[0, 0, sq, sq2], -1))  # its neighbour: -90
        assert not moved[-1].any()  # the row left over at 32 px stays


def test_permutation_views_are_seeded():
    a, b, c = (make_view("pixel_permute", 16, s).apply(_img()) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_blur_is_rejected_as_a_view():
    class Blur(View):
        name = "blur"

        def apply(self, x):
            return torch.nn.functional.avg_pool2d(x, 3, 1, 1)

    with pytest.raises(DfeditError, match="not exactly invertible"):
        check_view(Blur(16), 16)


def test_unknown_view_name():
    with pytest.raises(DfeditError, match="^view 'mirror' is unknown"):
        make_view("mirror", 16)


def test_negate_inverts_noise_but_not_variance():
    v = make_view("negate", 8)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(v.inverse(x), -x) and torch.equal(v.inverse_variance(x), x)


def _symmetric(view_name):
    """An x0 invariant under the view: constant per channel (zero for negate)."""
    if view_name == "negate":
        return torch.zeros(1, 3, 16, 16)
    return torch.tensor([0.5, -0.3, 0.1]).view(1, 3, 1, 1).expand(1, 3, 16, 16).clone()


@pytest.mark.parametrize("view_name", sorted(VIEWS))
def test_anagram_of_an_invariant_image_returns_it(view_name, if_schedule):
    x0 = _symmetric(view_name)
    oracle = OracleDenoiser(x0, if_schedule)
    views = [make_view("identity", 16), make_view(view_name, 16, seed=3)]
    eps_fn = edits.multi_guided(oracle, _cond(k=2), _cond()[0], 7.0, views)
    g = torch.Generator().manual_seed(0)
    out = denoise_loop(eps_fn, torch.randn(1, 3, 16, 16, generator=g), TS, if_schedule, g)
    assert (out - x0).abs().max() < 1e-5


def test_flip_invariant_photo_like_image(if_schedule):
    x0 = _img()
    x0 = (x0 + x0.flip(-2)) / 2  # symmetric under upside-down flip
    oracle = OracleDenoiser(x0, if_schedule)
    eps_fn = edits.multi_guided(oracle, _cond(k=2), _cond()[0], 7.0, [View(16), make_view("flip", 16)])
    g = torch.Generator().manual_seed(0)
    out = denoise_loop(eps_fn, torch.randn(1, 3, 16, 16, generator=g), TS, if_schedule, g)
    assert (out - x0).abs().max() < 1e-5


def test_anagram_without_inverse_view_fails(if_schedule, monkeypatch):
    """Planted bug: skipping the inverse view on the estimate must break the invariant-image check."""
    x0 = _img()
    x0 = (x0 + x0.flip(-2)) / 2
    flip = make_view("flip", 16)
    monkeypatch.setattr(flip, "inverse", lambda x: x.roll(1, -1))
    eps_fn = edits.multi_guided(OracleDenoiser(x0, if_schedule), _cond(k=2), _cond()[0], 7.0, [View(16), flip])
    g = torch.Generator().manual_seed(0)
    out = denoise_loop(eps_fn, torch.randn(1, 3, 16, 16, generator=g), TS, if_schedule, g)
    assert (out - x0).abs().max() > 1e-2


def test_all_views_and_both_branches_go_in_one_call(if_schedule):
    oracle = OracleDenoiser(_img(), if_schedule)
    views = [make_view(n, 16, 1) for n in ("identity", "flip", "negate")]
    eps_fn = edits.multi_guided(oracle, _cond(n=2, k=3), _cond(n=2)[0], 7.0, views)
    eps_fn(torch.randn(2, 3, 16, 16), 500)
    assert oracle.calls == [(500, 2 * 3 * 2)]  # one call: 2 samples x 3 views x {uncond, cond}


def test_fewer_prompts_than_views_is_an_error(if_schedule):
    with pytest.raises(DfeditError, match="3 views need 3 prompts"):
        edits.multi_guided(OracleDenoiser(_img(), if_schedule), _cond(k=2), _cond()[0], 7.0,
                           [make_view(n, 16) for n in ("identity", "flip", "negate")])


# ---- hybrids -------------------------------------------------------------------------------------

@pytest.mark.parametrize("split,n", [("gaussian", 2), ("gaussian", 3), ("color", 2)])
@pytest.mark.parametrize("size", [16, 64])
def test_frequency_bands_of_one_estimate_sum_to_the_identity(split, n, size):
    e = torch.randn(2, 3, size, size)
    combine = edits.frequency_split(split, size, n)
    assert torch.allclose(combine([e] * n), e, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SPLITS))
@pytest.mark.parametrize("size", [32, 64, 256])
def test_every_splits_components_sum_to_the_image(name, size):
    """c_1(x) + ... + c_K(x) = x for every registered split, and each component does something
    (a split whose first component were the identity would pass the sum)."""
    split = SPLITS[name]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    for n in split.prompts:
        parts = split.components(size, n, None, None)
        assert torch.allclose(sum(c(x) for c in parts), x, atol=1e-5)
        assert not torch.allclose(parts[0](x), x, atol=1e-2)


def test_motion_blur_streaks_along_rows_and_scaling_is_a_projection():
    from dfedit.splits.motion_blur import motion_blur
    from dfedit.splits.scaling import down_up
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4, 4] = 1.0
    y = motion_blur(x, 3)
    assert torch.equal(y[0, 0, 4, 3:6], torch.full((3,), 1 / 3)) and y[0, 0, 3].abs().sum() == 0  # one row only
    z = torch.randn(1, 3, 16, 16)
    assert torch.allclose(down_up(down_up(z, 4), 4), down_up(z, 4), atol=1e-6)  # applying it twice changes nothing


def test_a_split_refuses_what_it_does_not_use():
    from dfedit.errors import ParamError
    with pytest.raises(ParamError, match="^sigma does not apply to split motion_blur"):
        edits.hybrid(["a", "b"], 64, "motion_blur", None, 2.0)
    with pytest.raises(ParamError, match="^kernel and sigma shape the Gaussian split; split scaling"):
        edits.hybrid(["a", "b"], 64, "scaling", 5, None)
    with pytest.raises(ParamError, match="^split scaling takes exactly two prompts, got 3"):
        edits.hybrid(["a", "b", "c"], 64, "scaling")
    with pytest.raises(ParamError, match="^split 'box' is unknown: use gaussian, color"):
        edits.hybrid(["a", "b"], 64, "box")


def test_lowpass_is_a_real_lowpass():
    """The low band of white noise loses most of its energy; the high band keeps most of it."""
    e = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    zero = torch.zeros_like(e)
    low = edits.frequency_split("gaussian", 64, 2)([e, zero])
    high = edits.frequency_split("gaussian", 64, 2)([zero, e])
    assert low.std() < 0.2 * e.std() and high.std() > 0.9 * e.std()


def test_hybrid_kernel_scales_with_size():
    assert hybrid_kernel(64) == (33, 2.0)
    assert hybrid_kernel(256) == (133, 8.0)
    k, s = hybrid_kernel(16)
    assert k % 2 == 1 and s == 0.5


def test_hybrid_with_one_answer_returns_it_and_shares_the_uncond(if_schedule):
    x0 = _img()
    oracle = OracleDenoiser(x0, if_schedule)
    eps_fn = edits.multi_guided(oracle, _cond(k=2), _cond()[0], 7.0,
                                combine=edits.frequency_split("gaussian", 16, 2))
    g = torch.Generator().manual_seed(0)
    out = denoise_loop(eps_fn, torch.randn(1, 3, 16, 16, generator=g), TS, if_schedule, g)
    assert (out - x0).abs().max() < 1e-4
    assert oracle.calls[0] == (990, 3)  # uncond + 2 prompts in one batch
