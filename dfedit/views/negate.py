"""negate: every pixel's sign flipped (the photographic negative in IF's [-1, 1] range)."""

from __future__ import annotations

from . import View, register_view

class Negate(View):
    name, negates = "negate", True

    def apply(self, x):
        return -x

    inverse = apply


register_view("negate", Negate)
