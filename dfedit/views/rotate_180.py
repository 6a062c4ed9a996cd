"""rotate_180: a half turn."""

from __future__ import annotations

from . import Rotate, register_view

register_view("rotate_180", lambda size, seed: Rotate(size, seed, k=2, name="rotate_180"))
