"""Event counters, named as KVM names them (arch/x86/kvm/x86.c debugfs_entries[], mid-2008).

Counting is kept apart from pricing: the executors only count; bench.costs turns the counts into
cycles. Besides KVM's own names there are a few the pricing needs, each documented below, and
the exits split by cause (``exit_*``), from which ``exits`` and ``exits_by_reason`` are derived.
"""

from __future__ import annotations

KVM_COUNTERS: tuple[str, ...] = (
    "exits",
    "pf_fixed",
    "pf_guest",
    "invlpg",
    "tlb_flush",
    "insn_emulation",
    "insn_emulation_extra",
    "mmu_pte_write",
    "mmu_pte_updated",
    "mmu_pde_zapped",
    "mmu_flooded",
    "mmu_shadow_zapped",
    "mmu_cache_miss",
    "mmu_unsync",
)
"""KVM's names. ``mmu_unsync`` counts shadow pages that went out of sync (KVM's debugfs value is
instantaneous, which means nothing once a run has ended). ``insn_emulation_extra`` counts
instructions emulated inside an exit that another instruction caused (Xen's
shadow_em_ex_pt + shadow_em_ex_non_pt; the second alone is ``insn_emulation_extra_non_pt``)."""

EXIT_CAUSES: tuple[str, ...] = (
    "exit_ptwrite_emulate",
    "exit_ptwrite_unshadow",
    "exit_ptwrite_unsync",
    "exit_hidden_fault",
    "exit_guest_fault",
    "exit_invlpg",
    "exit_cr3",
)
"""Every exit is counted under exactly one cause:

- exit_ptwrite_emulate: a write to a write-protected gfn, emulated (mmu_pte_write follows);
- exit_ptwrite_unshadow: such a write answered by unshadowing the gfn instead;
- exit_ptwrite_unsync: such a write answered by marking the gfn's shadow pages out of sync;
- exit_hidden_fault: no usable spte (not present, or read-only for a write to a page that is not
  shadowed): the guest walk succeeded and an spte was installed (pf_fixed without ptwrite);
- exit_guest_fault: the guest walk failed, the fault is reflected to the guest (pf_guest);
- exit_invlpg, exit_cr3: intercepted invlpg and cr3 loads.
"""

MMU_EXTRA: tuple[str, ...] = (
    "insn_emulation_extra_non_pt",
    "pf_bypassed",
    "mmu_resync",
    "mmu_resync_gpte",
    "tdp_tlb_miss",
    "tdp_walk_refs",
    "native_walk_refs",
)
"""Pricing inputs KVM does not count: the extra instructions that did not write a page table (Xen
3.3's perf counter shadow_em_ex_non_pt; they are part of ``insn_emulation_extra`` and priced with
it); guest page faults that reached the guest without an exit (VMX bypass_guest_pf, commit
c7addb9020: they cost the hypervisor nothing and KVM never sees them); out-of-sync pages
resynchronised and the guest ptes they re-read; under two-dimensional paging, TLB misses, the memory references of their 2-D walks, and
the references the same misses would have cost natively."""

NATIVE_COUNTERS: tuple[str, ...] = (
    "native_load",
    "native_store",
    "native_locked_rmw",
    "native_invlpg",
    "native_cr3",
    "native_page_fault",
    "native_compute_cycles",
)
"""What the guest does natively, the same under every policy: loads, stores, locked
read-modify-writes, invlpg, cr3 loads, page faults the guest kernel takes, and the cycles of
pure compute operations."""

ALL_COUNTERS: tuple[str, ...] = KVM_COUNTERS + EXIT_CAUSES + MMU_EXTRA + NATIVE_COUNTERS

EXIT_REASON_OF_CAUSE: dict[str, str] = {
    "exit_ptwrite_emulate": "EXCEPTION_NMI",
    "exit_ptwrite_unshadow": "EXCEPTION_NMI",
    "exit_ptwrite_unsync": "EXCEPTION_NMI",
    "exit_hidden_fault": "EXCEPTION_NMI",
    "exit_guest_fault": "EXCEPTION_NMI",
    "exit_invlpg": "INVLPG",
    "exit_cr3": "CR_ACCESS",
}


class Counters:
    """Mutable integer counters, one attribute per name in ALL_COUNTERS (fast to increment).

    The attributes are spelt out (not made from ALL_COUNTERS at run time) so that the compiled
    core (bench._compiled) knows them; tests/test_compiled.py checks the two lists agree."""

    __slots__ = ALL_COUNTERS

    def __init__(self) -> None:
        self.exits: int = 0
        self.pf_fixed: int = 0
        self.pf_guest: int = 0
        self.invlpg: int = 0
        self.tlb_flush: int = 0
        self.insn_emulation: int = 0
        self.insn_emulation_extra: int = 0
        self.mmu_pte_write: int = 0
        self.mmu_pte_updated: int = 0
        self.mmu_pde_zapped: int = 0
        self.mmu_flooded: int = 0
        self.mmu_shadow_zapped: int = 0
        self.mmu_cache_miss: int = 0
        self.mmu_unsync: int = 0
        self.exit_ptwrite_emulate: int = 0
        self.exit_ptwrite_unshadow: int = 0
        self.exit_ptwrite_unsync: int = 0
        self.exit_hidden_fault: int = 0
        self.exit_guest_fault: int = 0
        self.exit_invlpg: int = 0
        self.exit_cr3: int = 0
        self.insn_emulation_extra_non_pt: int = 0
        self.pf_bypassed: int = 0
        self.mmu_resync: int = 0
        self.mmu_resync_gpte: int = 0
        self.tdp_tlb_miss: int = 0
        self.tdp_walk_refs: int = 0
        self.native_walk_refs: int = 0
        self.native_load: int = 0
        self.native_store: int = 0
        self.native_locked_rmw: int = 0
        self.native_invlpg: int = 0
        self.native_cr3: int = 0
        self.native_page_fault: int = 0
        self.native_compute_cycles: int = 0

    def as_dict(self) -> dict[str, int]:
        """Every counter, with ``exits`` derived from the exit causes."""
        out = {name: getattr(self, name) for name in ALL_COUNTERS}
        out["exits"] = sum(out[c] for c in EXIT_CAUSES)
        return out


def exits_by_reason(counts: dict[str, int]) -> dict[str, int]:
    """Exits per VMX exit reason, in a fixed order, omitting reasons with no exits."""
    out: dict[str, int] = {}
    for cause, reason in EXIT_REASON_OF_CAUSE.items():
        if counts.get(cause):
            out[reason] = out.get(reason, 0) + counts[cause]
    return out
