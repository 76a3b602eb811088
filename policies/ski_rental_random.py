"""ski-rental-random: the randomized ski-rental rule, e/(e-1)-competitive in expectation.

As ski-rental (same rent and buy costs, same notion of a use), but the threshold of every
interval is drawn from Karlin, Manasse, McGeoch and Owicki's distribution (SODA 1990): t in
[0, buy] with density e^(t/buy) / (buy*(e-1)), unshadow at the first trapping write that takes
the emulation cost past t (bench.ski_rental.draw_threshold). Draws come from a private
random.Random(seed), in the order the intervals start, so a run repeats exactly.
"""

from __future__ import annotations

import random
from typing import Any

from mypy_extensions import mypyc_attr

from bench.params import Param
from bench.ski_rental import draw_threshold
from policies.ski_rental import SkiRental


@mypyc_attr(allow_interpreted_subclasses=True)
class SkiRentalRandom(SkiRental):
    name = "ski-rental-random"
    summary = ("unshadow a page table at a random threshold drawn per interval from Karlin et "
               "al.'s distribution (SODA 1990; e/(e-1)-competitive in expectation)")
    params = {
        **SkiRental.params,
        "seed": Param(int, 0, "seed of the policy's own random.Random"),
    }

    seed: int

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.rng = random.Random(self.seed)

    def interval_threshold(self, gfn: int) -> int:
        return draw_threshold(self.rng, self.buy, self.rent)


POLICY = SkiRentalRandom
