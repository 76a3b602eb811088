"""Ski rental for one page table between two uses: rent = emulate a write, buy = unshadow.

Pure functions on write counts, shared by the ski-rental policies and their bound tests. In the
abstract problem every trapping write to a shadowed table costs ``rent`` cycles (one emulated
write) and unshadowing costs ``buy`` cycles in all (the unshadow exit, its refault, the zap,
and the rebuild when the table is next used). An online rule picks a threshold j: the j-th
trapping write since the table's last use unshadows it, the ones before are emulated.

- Deterministic (Karlin, Manasse, Rudolph, Sleator, "Competitive snoopy caching",
  Algorithmica 1988): j = ceil(buy / rent); cost < 2 x the offline optimum min(w*rent, buy).
- Randomized (Karlin, Manasse, McGeoch, Owicki, "Competitive randomized algorithms for
  nonuniform problems", SODA 1990 / Algorithmica 1994): draw t in [0, buy] with density
  e^(t/buy) / (buy*(e-1)) and unshadow at the first write whose emulation would take the
  rent paid past t, j = floor(t/rent) + 1; expected cost <= e/(e-1) x the optimum.
See docs/oracle.md ("Online bounds") for the proofs.
"""

from __future__ import annotations

import math
import random

from bench.costs import CostProfile

E_RATIO = math.e / (math.e - 1)


def rent_cost(profile: CostProfile) -> int:
    """One emulated write: an exit and the emulation (bench.costs cause emulated_pte_writes)."""
    return profile.exit_roundtrip + profile.ptwrite_emulate


def buy_cost(profile: CostProfile) -> int:
    """Unshadowing with Decision.UNSHADOW and rebuilding: the unshadow exit, the refault of the
    mapping the write went through, one shadow page zapped, one created at the next use, and the
    one hidden fault of that use (a rebuild faults once per distinct pte used; one is the least)."""
    rt = profile.exit_roundtrip
    fault = rt + profile.hidden_fault
    return (rt + profile.ptwrite_unshadow + fault + profile.shadow_page_zap
            + profile.shadow_page_create + fault)


def threshold(buy: int, rent: int) -> int:
    """The deterministic rule: the ceil(buy/rent)-th write unshadows (at least the first)."""
    return max(1, -(-buy // rent))


def online_cost(j: int, writes: int, rent: int, buy: int) -> int:
    """What threshold j pays for an interval of ``writes`` trapping writes ended by a use."""
    return writes * rent if writes < j else (j - 1) * rent + buy


def offline_cost(writes: int, rent: int, buy: int) -> int:
    return min(writes * rent, buy)


def _karlin_cdf(t: float, buy: int) -> float:
    return (math.exp(t / buy) - 1) / (math.e - 1)


def karlin_probabilities(buy: int, rent: int) -> list[float]:
    """P(threshold = j) for j = 1..ceil(buy/rent), from Karlin et al.'s distribution of t."""
    last = threshold(buy, rent)
    return [_karlin_cdf(min(j * rent, buy), buy) - _karlin_cdf((j - 1) * rent, buy)
            for j in range(1, last + 1)]


def draw_threshold(rng: random.Random, buy: int, rent: int) -> int:
    """One threshold from Karlin et al.'s distribution (inverse CDF of t)."""
    t = buy * math.log(1 + rng.random() * (math.e - 1))
    return min(int(t // rent) + 1, threshold(buy, rent))


def expected_online_cost(probabilities: list[float], writes: int, rent: int, buy: int) -> float:
    return sum(p * online_cost(j, writes, rent, buy) for j, p in enumerate(probabilities, 1))
