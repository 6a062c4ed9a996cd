"""rotate_ccw: a quarter turn counter-clockwise."""

from __future__ import annotations

from . import Rotate, register_view

register_view("rotate_ccw", lambda size, seed: Rotate(size, seed, k=1, name="rotate_ccw"))
