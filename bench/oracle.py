"""The offline optimum of the emulate-or-unshadow decisions, from a policy-independent record.

A run is recorded once, natively (``Recorder`` is a NativeMachine that also notes, for every
access, the leaf page table its walk used, and for every write whether it hit a page table in
use). Per leaf page table (gfn) the record is a sequence of *use bursts* (translations through
the table's ptes, with no write to the table between them) and *intervals* (the writes to the
table between two bursts, or after the last one). Knowing the future, the cheapest way through
each interval is either to emulate every write, or to unshadow at the first write and pay the
rebuild at the next burst. The proof that no policy of the shadow MMU beats the sum of these
minima on the costs it covers, and the exact definitions, are in docs/oracle.md.

Unit costs (cycles, from a bench.costs.CostProfile):
  E = exit_roundtrip + ptwrite_emulate        one emulated write (one exit)
  U = exit_roundtrip + ptwrite_unshadow       one unshadow exit
  Z = shadow_page_zap,  C = shadow_page_create,  H = exit_roundtrip + hidden_fault

  interval with w writes, then a burst needing x refaults:   min(w*E, min(U, E) + Z + C + x*H)
  interval with w writes and no later use (the run ended):   min(w*E, min(U, E) + Z)
  optimum = creates*C + faults*H + the sum over intervals

``creates`` and ``faults`` are the shadow pages and hidden faults every shadow-paging policy
pays whatever it decides (first uses, and ptes the guest itself left without P or A). ``x``
counts the ptes first used in the burst that would not have faulted had the table stayed
shadowed. A policy's cost on the same terms is ``decision_cycles`` (from its counters).

API for the harness: ``record(run)`` (consumes the run: build a fresh one for the policy),
``optimum_cycles(record, profile)``, ``decision_cycles(counters, profile)``,
``escapes_model(counters, tdp)``, ``opt_ratio(...)``; the oracle policy replays ``trace(run)``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from bench.costs import CostProfile
from bench.errors import BenchError
from bench.machine.memory import GuestMemory
from bench.machine.native import NativeMachine
from bench.machine.paging import ADDR_MASK_PAE, Mode
from bench.workload import GuestRun

RECORD_VERSION = 1

DECISION_CAUSES: tuple[str, ...] = (
    "emulated_pte_writes", "extra_emulation", "hidden_faults", "unshadow", "rebuild",
)
"""The bench.costs causes a policy's decisions move: decision_cycles is their sum."""


class Interval(NamedTuple):
    """The writes to one page table between two use bursts (or after the last burst).

    ``writes`` >= 1; ``extra`` the ptes whose first use in the next burst is a hidden fault only
    if the table was unshadowed; ``rebuilt`` False when no burst follows (the run ended)."""

    writes: int
    extra: int
    rebuilt: bool


@dataclass
class Trace:
    """The per-table record of one run (what the oracle policy replays)."""

    creates: int = 0
    faults: int = 0
    violations: int = 0
    tables: dict[int, list[Interval]] = field(default_factory=dict)


class UnitCosts(NamedTuple):
    emulate: int
    unshadow: int
    zap: int
    create: int
    fault: int


def unit_costs(profile: CostProfile) -> UnitCosts:
    rt = profile.exit_roundtrip
    return UnitCosts(rt + profile.ptwrite_emulate, rt + profile.ptwrite_unshadow,
                     profile.shadow_page_zap, profile.shadow_page_create, rt + profile.hidden_fault)


def emulate_cost(u: UnitCosts, writes: int) -> int:
    return writes * u.emulate


def unshadow_cost(u: UnitCosts, extra: int, rebuilt: bool) -> int:
    """The cheapest way to stop write-protecting at the first write (an unshadow exit whose write
    then runs natively, or an emulation that zaps), plus the rebuild if a use follows."""
    cost = min(u.unshadow, u.emulate) + u.zap
    if rebuilt:
        cost += u.create + extra * u.fault
    return cost


def interval_cycles(u: UnitCosts, iv: Interval) -> int:
    return min(emulate_cost(u, iv.writes), unshadow_cost(u, iv.extra, iv.rebuilt))


def unshadow_is_optimal(u: UnitCosts, iv: Interval) -> bool:
    """The oracle's choice for one interval (ties emulate)."""
    return unshadow_cost(u, iv.extra, iv.rebuilt) < emulate_cost(u, iv.writes)


# ---------------------------------------------------------------------------------- recording
class _Table:
    __slots__ = ("burst", "cold", "writes", "seen", "extra", "touched", "cleared")

    def __init__(self) -> None:
        self.burst = True  # created at its first use
        self.cold = True
        self.writes = 0
        self.seen: set[int] = set()  # ptes used in the current burst
        self.extra = 0
        self.touched: set[int] = set()  # ptes used or written since the table's first use
        self.cleared: set[int] = set()  # ptes left without P or A by a write, unused since


class Recorder(NativeMachine):
    """The native executor (same guest memory, same counters) that also records the trace.

    A *use* of a leaf page table is a successful walk through one of its ptes. A *write* is a
    write operation whose target frame is a leaf page table already used. An access is
    *eligible* unless it writes a frame the shadow MMU may write-protect: only an eligible
    access that finds no spte is sure to be counted as a hidden fault (a write to a protected
    frame is a page-table-write exit instead).
    """

    def __init__(self, mem: GuestMemory, mode: Mode, cr3s: list[int]) -> None:
        super().__init__(mem, mode, cr3s)
        self.trace = Trace()
        self._tables: dict[int, _Table] = {}
        self._directories: set[int] = set()
        self._roots: set[tuple[int, int]] = set()
        self._direct_pages: set[int] = set()
        self._direct_frames: set[int] = set()
        for cr3 in cr3s:
            self._note_roots(cr3)

    # -- what the shadow MMU may write-protect -------------------------------------------------
    def _protectable(self, gfn: int) -> bool:
        return gfn in self.mem.tables or gfn in self._tables or gfn in self._directories

    def _note_roots(self, cr3: int) -> None:
        """mmu_alloc_roots: four level-2 pages of the page directory (non-PAE), or one per
        present PDPTE (PAE); each distinct root is created at least once."""
        if self.mode.pae:
            keys = []
            for i in range(4):
                pdpte = self.mem.read_entry((cr3 & 0xFFFFFFE0) + 8 * i, True)
                if pdpte & 1:
                    keys.append(((pdpte & ADDR_MASK_PAE) >> 12, 0))
        else:
            keys = [(cr3 >> 12, q) for q in range(4)]
        for key in keys:
            self._directories.add(key[0])
            if key[0] in self._tables:
                self.trace.violations += 1
            if key not in self._roots:
                self._roots.add(key)
                self.trace.creates += 1

    # -- observation (NativeMachine's hooks) -------------------------------------------------
    def _loaded_cr3(self, cr3: int) -> None:
        self._note_roots(cr3)

    def _walked(self, w, write: bool, user: bool) -> None:
        trace = self.trace
        if w.pd_gfn in self._tables:
            trace.violations += 1  # a frame used both as a leaf table and a directory
        self._directories.add(w.pd_gfn)
        gfn = w.pt_gfn
        t = None if gfn is None else self._tables.get(gfn)
        if gfn is not None and t is None:
            if gfn in self._directories:
                trace.violations += 1
            t = self._tables[gfn] = _Table()  # first use: its shadow page is created
            trace.creates += 1
        protectable = self._protectable(w.gfn)
        if user and protectable:
            trace.violations += 1  # a page table mapped into user space (set_spte unshadows it)
        eligible = not (write and protectable)
        if t is None:  # a large page: a direct shadow page, never zapped
            region = w.gfn >> 9
            if region not in self._direct_pages:
                self._direct_pages.add(region)
                trace.creates += 1
            if w.gfn not in self._direct_frames:
                self._direct_frames.add(w.gfn)
                if eligible:
                    trace.faults += 1
            return
        if not t.burst:
            t.burst = True
            t.cold = False
            t.seen = set()
            t.extra = 0
        index = (w.leaf_gpa & 0xFFF) // self.mode.entry_size
        if index not in t.seen:
            t.seen.add(index)
            if eligible:
                if t.cold or index in t.cleared or index not in t.touched:
                    trace.faults += 1  # no spte even if the table stayed shadowed
                else:
                    t.extra += 1
            t.touched.add(index)
            t.cleared.discard(index)  # the use installs its spte

    def _written(self, gpa: int) -> None:
        t = self._tables.get(gpa >> 12)
        if t is None:
            return  # not a page table in use: nothing write-protects it
        if t.burst:
            if not t.cold:
                self.trace.tables.setdefault(gpa >> 12, []).append(
                    Interval(t.writes, t.extra, True))
            t.burst = False
            t.writes = 0
        t.writes += 1
        size = self.mode.entry_size
        gpte = self.mem.read_entry(gpa & ~(size - 1), self.mode.pae)
        index = (gpa & 0xFFF) // size
        t.touched.add(index)
        if gpte & 0x21 != 0x21:
            t.cleared.add(index)  # update_pte installs no spte: its next use faults anyway
        else:
            t.cleared.discard(index)

    def finish(self) -> Trace:
        """Close the open bursts and intervals; the trace of the whole run."""
        for gfn, t in self._tables.items():
            if t.burst:
                if not t.cold:
                    self.trace.tables.setdefault(gfn, []).append(Interval(t.writes, t.extra, True))
            else:
                self.trace.tables.setdefault(gfn, []).append(Interval(t.writes, 0, False))
            t.burst, t.cold = True, True
        return self.trace


def trace(run: GuestRun) -> Trace:
    """Run ``run`` natively (consuming its operations and mutating its guest) and record it."""
    recorder = Recorder(run.guest.mem, run.guest.mode, run.cr3s)
    recorder.run(run.ops)
    return recorder.finish()


def compact(tr: Trace) -> dict:
    """The JSON-serialisable record: intervals merged across tables as [writes, extra, count]
    (a following rebuild) and [writes, count] (no later use), sorted."""
    rebuilt: Counter[tuple[int, int]] = Counter()
    trailing: Counter[int] = Counter()
    for intervals in tr.tables.values():
        for iv in intervals:
            if iv.rebuilt:
                rebuilt[(iv.writes, iv.extra)] += 1
            else:
                trailing[iv.writes] += 1
    return {
        "version": RECORD_VERSION,
        "creates": tr.creates,
        "faults": tr.faults,
        "violations": tr.violations,
        "tables": len(tr.tables),
        "intervals": [[w, x, n] for (w, x), n in sorted(rebuilt.items())],
        "trailing": [[w, n] for w, n in sorted(trailing.items())],
    }


def record(run: GuestRun) -> dict:
    """The compact record of ``run`` (consumes it)."""
    return compact(trace(run))


# ---------------------------------------------------------------------------------- pricing
def optimum_cycles(rec: dict, profile: CostProfile) -> int:
    """A lower bound on what any covered shadow-paging policy pays on the covered terms."""
    if rec.get("version") != RECORD_VERSION:
        raise BenchError(f"oracle record version {rec.get('version')!r}, expected {RECORD_VERSION}")
    u = unit_costs(profile)
    total = rec["creates"] * u.create + rec["faults"] * u.fault
    for w, x, n in rec["intervals"]:
        total += n * interval_cycles(u, Interval(w, x, True))
    for w, n in rec["trailing"]:
        total += n * interval_cycles(u, Interval(w, 0, False))
    return total


def decision_cycles(counters: dict, profile: CostProfile) -> int:
    """A policy's cost on the same terms: emulated writes, extra emulation, hidden faults,
    unshadow exits and zaps, and shadow pages created (bench.costs causes DECISION_CAUSES)."""
    by_cause = profile.virtualization_cycles(counters)
    return sum(by_cause[cause] for cause in DECISION_CAUSES)


def escapes_model(counters: dict, tdp: bool = False) -> str | None:
    """Why a run is outside the optimum's model (its ratio may legitimately be below 1), or None."""
    if tdp:
        return "two-dimensional paging write-protects nothing"
    if counters.get("mmu_unsync", 0) or counters.get("exit_ptwrite_unsync", 0):
        return "out-of-sync pages let the guest write page tables without a trap"
    if counters.get("insn_emulation_extra", 0):
        return "batched emulation handles writes and accesses without an exit of their own"
    return None


def opt_ratio(counters: dict, rec: dict, profile: CostProfile, tdp: bool = False) -> float | None:
    """decision_cycles / optimum_cycles; None when the run escapes the model, the record breaks
    its assumptions, or the optimum is zero."""
    if escapes_model(counters, tdp) or rec.get("violations"):
        return None
    opt = optimum_cycles(rec, profile)
    if opt == 0:
        return None
    return decision_cycles(counters, profile) / opt

