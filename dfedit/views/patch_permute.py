"""patch_permute: square tiles shuffled (8 x 8 tiles at any size), seeded."""

from __future__ import annotations

from . import patch_permute, register_view

register_view("patch_permute", lambda size, seed: patch_permute(size, seed, max(1, size // 8)))
