"""The text-conditional U-Net: the Flax seeds' architecture, in PyTorch and configurable.

conv stem -> per level: ResNet blocks (+ self/cross attention) -> strided-conv downsample
          -> middle: ResNet, attention, ResNet
          -> per level, mirrored: concat skip -> ResNet blocks (+ attention) -> nearest upsample + conv
          -> GroupNorm, SiLU, conv to 3 channels.
Blocks are norm-first; the time embedding enters every ResNet block as a per-channel scale and
shift after the first norm (ADM's FiLM, which conditions more strongly than the seeds' plain add).
Output layers of every residual branch start at zero so a fresh network is the identity plus a
zero noise estimate, which keeps the first steps of training stable without a tuned init.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


def groups(ch: int) -> int:
    return 32 if ch % 32 == 0 and ch >= 64 else 8


def zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoids of the integer timestep (DDPM): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(tdim, 2 * cout)
        self.norm2, self.conv2 = nn.GroupNorm(groups(cout), cout), zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Pre-norm multi-head attention over pixels; keys/values from the pixels or from the text."""

    def __init__(self, ch: int, head_dim: int, ctx_dim: int | None = None):
        super().__init__()
        self.heads = ch // head_dim
        self.norm = nn.GroupNorm(groups(ch), ch)
        self.q = nn.Linear(ch, ch)
        self.kv = nn.Linear(ctx_dim or ch, 2 * ch)
        self.out = zero(nn.Linear(ch, ch))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        b, c, hgt, wid = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        src = h if ctx is None else ctx
        q = self.q(h).view(b, -1, self.heads, c // self.heads).transpose(1, 2)
        k, v = self.kv(src).view(b, src.shape[1], 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L) bool, True = attend
        if q.device.type == "cpu" and q.dtype != torch.float32:
            # PyTorch's CPU flash-attention kernels are 1.5-5x slower in bf16 than in fp32 at these
            # sizes (forward + backward, L = 24..256, head 32; benchmarks/bench_train.py), so on CPU
            # attention runs in fp32 even under autocast. GPUs keep the low-precision kernel.
            with torch.autocast("cpu", enabled=False):
                o = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask).to(q.dtype)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        o = self.out(o.transpose(1, 2).reshape(b, hgt * wid, c))
        return x + o.transpose(1, 2).reshape(b, c, hgt, wid)


class Level(nn.Module):
    """ResNet blocks, each followed by the level's optional self- then cross-attention."""

    def __init__(self, cins: list[int], cout: int, tdim: int, ctx_dim: int, sa: bool, ca: bool, cfg: ModelConfig):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(ci, cout, tdim, cfg.dropout) for ci in cins)
        self.sa = nn.ModuleList(Attention(cout, cfg.head_dim) for _ in cins) if sa else None
        self.ca = nn.ModuleList(Attention(cout, cfg.head_dim, ctx_dim) for _ in cins) if ca else None

    def block(self, i: int, h, temb, ctx, mask):
        h = self.res[i](h, temb)
        if self.sa is not None:
            h = self.sa[i](h)
        if self.ca is not None:
            h = self.ca[i](h, ctx, mask)
        return h


class UNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        ch = list(cfg.channels)
        c0, nrbs = ch[0], cfg.res_blocks()
        self.tfeat = c0
        tdim = cfg.time_dim or 4 * c0
        ctx = ch[-1]  # text is projected once to the widest level's width
        self.time_mlp = nn.Sequential(nn.Linear(c0, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.text_norm, self.text_proj = nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, ctx)
        # The learned null conditioning for CFG: one token that replaces an empty (all-masked) prompt.
        self.null_token = nn.Parameter(torch.randn(ctx) * 0.02)
        if cfg.pooled_text:
            # Pooled caption -> time embedding. Cross-attention has to *find* the caption in the tokens
            # at a few resolutions; this path hands one vector to every ResNet block, which makes the
            # "caption -> this exact drawing" lookup far easier to learn (GLIDE, Imagen).
            self.pool_mlp = nn.Sequential(nn.Linear(cfg.text_dim, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
            self.null_pooled = nn.Parameter(torch.zeros(tdim))  # the null prompt's pooled vector
        if cfg.styles:
            # Drawing set -> time embedding (row 0: "any style"). Starts at zero: a new model, or one
            # warm-started from a model without styles, begins by ignoring the style.
            self.style_emb = nn.Embedding(len(cfg.styles) + 1, tdim)
            nn.init.zeros_(self.style_emb.weight)
        self.patch = cfg.patch
        self.stem = nn.Conv2d(3 * cfg.patch ** 2, c0, 3, padding=1)

        self.down, self.downsample, skips, cur = nn.ModuleList(), nn.ModuleList(), [c0], c0
        for i, c in enumerate(ch):
            nrb = nrbs[i]
            self.down.append(Level([cur] + [c] * (nrb - 1), c, tdim, ctx, cfg.self_attn[i], cfg.cross_attn[i], cfg))
            skips += [c] * nrb
            cur = c
            last = i == len(ch) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            if not last:
                skips.append(c)
        self.mid = Level([cur, cur], cur, tdim, ctx, True, True, cfg)

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, c in reversed(list(enumerate(ch))):
            cins = []
            for _ in range(nrbs[i] + 1):
                cins.append(cur + skips.pop())
                cur = c
            # Each decoder block takes (h ++ skip), so its input width is per block.
            self.up.append(Level(cins, c, tdim, ctx, cfg.self_attn[i], cfg.cross_attn[i], cfg))
            self.upsample.append(nn.Conv2d(c, c, 3, padding=1) if i > 0 else nn.Identity())
        self.out_norm, self.out_conv = nn.GroupNorm(groups(c0), c0), zero(nn.Conv2d(c0, 3 * cfg.patch ** 2, 3, padding=1))

    def context(self, text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project token states; rows with an empty mask (the null prompt) become the null token."""
        ctx = self.text_proj(self.text_norm(text.to(self.text_proj.weight.dtype)))
        mask = mask.bool()
        null = ~mask.any(dim=1)  # (B,)
        null_ctx = torch.zeros_like(ctx)
        null_ctx[:, 0] = self.null_token.to(ctx.dtype)
        null_mask = torch.zeros_like(mask)
        null_mask[:, 0] = True
        ctx = torch.where(null[:, None, None], null_ctx, ctx)
        mask = torch.where(null[:, None], null_mask, mask)
        return ctx, mask

    def pooled(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean of the normalised token states through an MLP; the null prompt gets its own vector."""
        h = self.text_norm(text.to(self.text_norm.weight.dtype))
        w = mask.bool().to(h.dtype)[..., None]
        p = self.pool_mlp((h * w).sum(1) / w.sum(1).clamp(min=1))
        null = ~mask.bool().any(dim=1)
        return torch.where(null[:, None], self.null_pooled.to(p.dtype).expand_as(p), p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor,
                style: torch.Tensor | None = None) -> torch.Tensor:
        """style: (B,) indices into ModelConfig.styles, 1-based; 0 or None = any style."""
        temb = self.time_mlp(timestep_features(t, self.tfeat).to(x.dtype))
        if self.cfg.pooled_text:
            temb = temb + self.pooled(text, mask).to(temb.dtype)
        if self.cfg.styles:
            if style is None:
                style = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            temb = temb + self.style_emb(style.to(x.device).expand(x.shape[0])).to(temb.dtype)
        ctx, mask = self.context(text, mask)
        h = self.stem(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x)
        skips = [h]
        for lvl, down in zip(self.down, self.downsample):
            for i in range(len(lvl.res)):
                h = lvl.block(i, h, temb, ctx, mask)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                skips.append(h)
        h = self.mid.block(0, h, temb, ctx, mask)
        h = self.mid.block(1, h, temb, ctx, mask)
        for lvl, up in zip(self.up, self.upsample):
            for i in range(len(lvl.res)):
                h = lvl.block(i, torch.cat([h, skips.pop()], dim=1), temb, ctx, mask)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.out_conv(F.silu(self.out_norm(h)))
        return F.pixel_shuffle(h, self.patch) if self.patch > 1 else h
