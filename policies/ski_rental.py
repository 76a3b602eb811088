"""ski-rental: emulate writes to a page table until their cost would reach the unshadow cost.

The per-table ski-rental rule (bench.ski_rental; the issue's "online bounds"): rent = one
emulated write, buy = unshadow with Decision.UNSHADOW and rebuild at the next use, both priced
from a cost profile. The k-th trapping write to a table since its last use unshadows it,
k = ceil(buy / rent); that is less than twice the offline optimum in the abstract problem
(docs/oracle.md, "Online bounds").

What counts as a use (all the hypervisor can see, docs/oracle.md): a shadow page fault whose
walk passes through the table's level-1 shadow page (on_shadow_walk), or an access through an
spte that an emulated write to the table installed speculatively, found by its shadow accessed
bit at the table's next trapping write (KVM 2.6.25's last_pte_updated check, commit 12b7d28fc1,
applied per table). Uses that hit other sptes cause no exit and are invisible.
"""

from __future__ import annotations

from typing import Any

from mypy_extensions import mypyc_attr

from bench.costs import DEFAULT_PROFILE, profile, profile_problem
from bench.params import Param
from bench.policy import Decision, Policy, PteWrite, WriteFault
from bench.ski_rental import buy_cost, rent_cost, threshold


@mypyc_attr(allow_interpreted_subclasses=True)
class SkiRental(Policy):
    name = "ski-rental"
    summary = ("unshadow a page table at its ceil(buy/rent)-th trapping write since its last use "
               "(deterministic ski rental, Karlin et al. 1988; 2-competitive)")
    params = {
        "cost_profile": Param(str, DEFAULT_PROFILE, "cost profile the rent and buy costs come "
                              "from (a built-in profile's name or a PATH.toml file)",
                              check=profile_problem),
    }

    cost_profile: str

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        costs = profile(self.cost_profile)
        self.rent = rent_cost(costs)
        self.buy = buy_cost(costs)
        self._writes: dict[int, int] = {}  # trapping writes since the table's last use
        self._threshold: dict[int, int] = {}
        self._speculative: dict[int, list[Any]] = {}  # sptes installed by writes to the table
        self._written_gfn = -1

    def interval_threshold(self, gfn: int) -> int:
        """The threshold for the interval that starts now on table ``gfn``."""
        return threshold(self.buy, self.rent)

    def _used(self, gfn: int) -> None:
        self._writes.pop(gfn, None)
        self._threshold.pop(gfn, None)
        self._speculative.pop(gfn, None)

    def on_write_fault(self, fault: WriteFault) -> Decision:
        gfn = fault.gfn
        refs = self._speculative.get(gfn)
        if refs and any(self.mmu.spte_accessed(ref) for ref in refs):
            self._used(gfn)
        writes = self._writes.get(gfn, 0) + 1
        if writes == 1:
            self._threshold[gfn] = self.interval_threshold(gfn)
        if writes >= self._threshold[gfn]:
            self._used(gfn)  # the next trapping write follows a rebuild, hence a use
            return Decision.UNSHADOW
        self._writes[gfn] = writes
        return Decision.EMULATE

    def on_pte_write(self, write: PteWrite) -> bool:
        self._written_gfn = write.gfn
        return False

    def on_spte_set(self, cpu: int, ref: Any, speculative: bool, ptwrite: bool) -> None:
        if speculative and self._written_gfn in self._writes:
            self._speculative.setdefault(self._written_gfn, []).append(ref)

    def on_shadow_walk(self, cpu: int, level: int, gfn: int) -> None:
        if level == 1 and gfn in self._writes:
            self._used(gfn)


POLICY = SkiRental
