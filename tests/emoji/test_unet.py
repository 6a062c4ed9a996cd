"""dfedit/emoji/unet.py: shapes, zero-initialised outputs, the learned null token, text and pooled-caption
conditioning, attention in bf16, per-level blocks (the objectives and preconditioning: tests/train/test_objective.py)."""

from dataclasses import replace

import pytest
import torch

from dfedit.errors import DfeditError
from dfedit_train.config import ModelConfig, preset
from dfedit.emoji.unet import UNet


def tiny_net(**kw):
    mc = replace(preset("tiny")[0], text_dim=32, **kw)
    torch.manual_seed(0)
    return UNet(mc), mc


def inputs(b=2, size=16, L=6, d=32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 3, size, size, generator=g)
    t = torch.tensor([10, 900][:b])
    text = torch.randn(b, L, d, generator=g)
    mask = torch.ones(b, L, dtype=torch.bool)
    mask[:, 4:] = False
    return x, t, text, mask


def perturb(net):
    with torch.no_grad():  # the zero-initialised output layers hide everything at init
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)


def test_shapes_and_zero_init_output():
    net, mc = tiny_net()
    x, t, text, mask = inputs()
    out = net(x, t, text, mask)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised head: a fresh model predicts eps = 0


@pytest.mark.parametrize("levels", [1, 3])
def test_other_level_counts(levels):
    chans = (16, 32, 32)[:levels]
    flags = (False, True, True)[:levels]
    net, _ = tiny_net(channels=chans, self_attn=flags, cross_attn=flags)
    x, t, text, mask = inputs()
    assert net(x, t, text, mask).shape == x.shape


def test_empty_mask_is_the_learned_null_token():
    net, _ = tiny_net()
    perturb(net)
    x, t, text, mask = inputs()
    empty = torch.zeros_like(mask)
    a = net(x, t, torch.zeros_like(text), empty)
    b = net(x, t, text * 5, empty)  # token states are ignored when the mask is empty
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    c = net(x, t, text, mask)
    assert not torch.allclose(a, c)
    with torch.no_grad():
        net.null_token.add_(1.0)
    assert not torch.allclose(net(x, t, text, empty), a)


def test_text_changes_output_and_padding_does_not():
    net, _ = tiny_net()
    perturb(net)
    x, t, text, mask = inputs()
    text2 = text.clone()
    text2[:, 5] += 10  # a padded position
    assert torch.allclose(net(x, t, text, mask), net(x, t, text2, mask), atol=1e-6)
    text3 = text.clone()
    text3[:, 1] += 1
    assert not torch.allclose(net(x, t, text, mask), net(x, t, text3, mask))


def test_bad_model_config():
    with pytest.raises(DfeditError):
        ModelConfig(image_size=20, channels=(16, 32, 64), self_attn=(0, 0, 0), cross_attn=(0, 0, 0)).validate()
    with pytest.raises(DfeditError):
        ModelConfig(channels=(16, 32), self_attn=(False,), cross_attn=(False, False)).validate()


def test_cpu_bf16_attention_runs_in_fp32_and_matches(monkeypatch):
    """Under CPU bf16 autocast the attention math is done in fp32 (PyTorch's bf16 CPU kernels are
    slower), and the block agrees with an all-fp32 forward to bf16 precision."""
    from dfedit.emoji.unet import Attention

    torch.manual_seed(0)
    attn = Attention(64, 32, ctx_dim=48)
    torch.nn.init.normal_(attn.out.weight, std=0.2)  # zero-initialised: would hide the attention path
    x, ctx = torch.randn(2, 64, 8, 8), torch.randn(2, 5, 48)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    ref = attn(x, ctx, mask)
    seen, real_sdpa = [], torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *a, **k: seen.append(q.dtype) or real_sdpa(q, *a, **k))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x, ctx, mask)
    assert seen == [torch.float32]
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.02)


def test_pooled_caption_reaches_the_network_without_cross_attention():
    # With cross-attention switched off everywhere (the middle block's silenced: it always attends),
    # text can only enter through the pooled path.
    off = (False, False)
    plain, _ = tiny_net(self_attn=off, cross_attn=off)
    pooled, _ = tiny_net(self_attn=off, cross_attn=off, pooled_text=True)
    x, t, text, mask = inputs()
    text2 = text.clone()
    text2[:, 1] = torch.randn(text.shape[-1], generator=torch.Generator().manual_seed(5))  # another word
    for net in (plain, pooled):
        perturb(net)
        with torch.no_grad():
            for ca in net.mid.ca:
                ca.out.weight.zero_()
                ca.out.bias.zero_()
    assert torch.equal(plain(x, t, text, mask), plain(x, t, text2, mask))  # text has no way in
    a, b = pooled(x, t, text, mask), pooled(x, t, text2, mask)
    assert (a - b).abs().max() > 1e-3  # the pooled caption changes the prediction
    text3 = text.clone()
    text3[:, 5] += 10  # padding is outside the masked mean
    assert torch.allclose(a, pooled(x, t, text3, mask), atol=1e-6)
    # The null prompt gets its own learned pooled vector, whatever the (masked-out) states hold.
    empty = torch.zeros_like(mask)
    n1 = pooled(x, t, text, empty)
    assert torch.equal(n1, pooled(x, t, text2 * 3, empty))
    with torch.no_grad():
        pooled.null_pooled.add_(1.0)
    assert not torch.allclose(n1, pooled(x, t, text, empty))


def test_per_level_res_blocks_and_patch():
    net1, _ = tiny_net(num_res_blocks=(1, 1))
    net2, _ = tiny_net(num_res_blocks=(1, 3))
    assert len(net2.down[1].res) == 3 and len(net2.up[0].res) == 4 and len(net2.up[1].res) == 2
    assert sum(p.numel() for p in net2.parameters()) > sum(p.numel() for p in net1.parameters())
    x, t, text, mask = inputs()
    assert net2(x, t, text, mask).shape == x.shape
    net3, mc = tiny_net(patch=2, channels=(32, 32))
    assert net3.stem.in_channels == 12
    perturb(net3)
    out = net3(x, t, text, mask)
    assert out.shape == x.shape and torch.isfinite(out).all()
    replace(mc, patch=8).validate()  # 16 px / 8 = 2 px, halved once for the second level: fine
    with pytest.raises(DfeditError):  # 16 px / 16 = 1 px: nothing left to halve
        replace(mc, patch=16).validate()
    with pytest.raises(DfeditError):
        replace(mc, num_res_blocks=(1, 1, 1)).validate()
