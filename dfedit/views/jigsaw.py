"""jigsaw: 4 x 4 square pieces, moved and turned (seeded), so they must be turned as well as moved."""

from __future__ import annotations

from . import patch_permute, register_view

register_view("jigsaw", lambda size, seed: patch_permute(size, seed, max(1, size // 4), "jigsaw", rotate=True))
