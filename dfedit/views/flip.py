"""flip: the image upside down (a flip of the rows), not a mirror."""

from __future__ import annotations

from . import View, register_view

class Flip(View):
    name = "flip"  # upside down (a flip of H), not a mirror

    def apply(self, x):
        return x.flip(-2)

    inverse = apply


register_view("flip", Flip)
