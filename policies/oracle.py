"""oracle: replay the offline optimum's decisions, computed from a record of the same run.

The optimum (bench.oracle, docs/oracle.md) knows each page table's future: for every interval
of writes between two uses it emulates all of them, or unshadows at the first write and pays the
rebuild. As a runnable policy it replays those choices: the harness records the run natively
first (bench.oracle.trace on a fresh build of the same workload and seed; the recording consumes
its run) and hands the trace over with ``use_trace`` before the shadow machine attaches it.

Replay is exact without seeing uses: the policy counts trapping writes per table. While it
emulates an interval, every one of the interval's writes traps (the table stays shadowed), so
the count says where the interval ends; when it unshadows at an interval's first write, no
other write of the interval traps, and the next trapping write is the next interval's first
(the table is shadowed again only by a use). The unshadow mechanism is the cheaper of an
unshadow exit whose write runs natively (Decision.UNSHADOW_NATIVE) and an emulation that zaps
the table (on_pte_write returning True), as the optimum assumes. Writes to tables the record
does not cover (page directories) are emulated.
"""

from __future__ import annotations

from typing import Any

from mypy_extensions import mypyc_attr

from bench.costs import DEFAULT_PROFILE, profile, profile_problem
from bench.errors import BenchError
from bench.oracle import Trace, unit_costs, unshadow_is_optimal
from bench.params import Param
from bench.policy import Decision, MMUView, Policy, PteWrite, WriteFault


@mypyc_attr(allow_interpreted_subclasses=True)
class Oracle(Policy):
    name = "oracle"
    summary = ("replay the offline optimum: per page table and interval between uses, emulate "
               "every write or unshadow at the first (needs the run's record; docs/oracle.md)")
    params = {
        "cost_profile": Param(str, DEFAULT_PROFILE, "cost profile the optimum is computed for "
                              "(a built-in profile's name or a PATH.toml file)",
                              check=profile_problem),
    }
    needs_trace = True
    """The harness must call use_trace(bench.oracle.trace(<fresh run>)) before running it."""

    cost_profile: str

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.costs = unit_costs(profile(self.cost_profile))
        self._plan: dict[int, list[tuple[int, bool]]] = {}
        self._traced = False
        self._next: dict[int, int] = {}  # index of the current interval per table
        self._count: dict[int, int] = {}  # its writes emulated so far
        self._zap_gfn = -1

    def use_trace(self, trace: Trace) -> None:
        if trace.violations:
            raise BenchError(f"the oracle cannot replay this run: the record breaks the model's "
                             f"assumptions {trace.violations} times (docs/oracle.md)")
        self._plan = {gfn: [(iv.writes, unshadow_is_optimal(self.costs, iv)) for iv in intervals]
                      for gfn, intervals in trace.tables.items()}
        self._traced = True

    def attach(self, mmu: MMUView) -> None:
        if not self._traced:
            raise BenchError("policy oracle replays a recorded run: call "
                             "use_trace(bench.oracle.trace(run)) on a fresh build of the run first")
        super().attach(mmu)

    def on_write_fault(self, fault: WriteFault) -> Decision:
        gfn = fault.gfn
        plan = self._plan.get(gfn)
        if plan is None:
            return Decision.EMULATE
        i = self._next.get(gfn, 0)
        if i >= len(plan):
            raise BenchError(f"oracle replay diverged from the record at gfn {gfn:#x}")
        writes, unshadow = plan[i]
        count = self._count.get(gfn, 0)
        if count == 0 and unshadow:
            self._next[gfn] = i + 1
            if self.costs.unshadow <= self.costs.emulate:
                return Decision.UNSHADOW_NATIVE
            self._zap_gfn = gfn
            return Decision.EMULATE
        count += 1
        if count == writes:
            self._next[gfn] = i + 1
            count = 0
        self._count[gfn] = count
        return Decision.EMULATE

    def on_pte_write(self, write: PteWrite) -> bool:
        if write.gfn == self._zap_gfn and not write.walker:
            self._zap_gfn = -1
            return True
        return False


POLICY = Oracle
