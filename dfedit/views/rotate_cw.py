"""rotate_cw: a quarter turn clockwise."""

from __future__ import annotations

from . import Rotate, register_view

register_view("rotate_cw", lambda size, seed: Rotate(size, seed, k=-1, name="rotate_cw"))
