"""unsync: KVM 2.6.28 out-of-sync shadow pages (Marcelo Tosatti, commit 4731d4c7a077).

"Instead of emulating write accesses to guest pagetables, or unshadowing them, we un-write-protect
the page table and allow the guest to modify it at will. We rely on invlpg executions to
synchronize individual ptes, and will synchronize the entire pagetable on tlb flushes."
(commit text; domain.md 3.4, kvm-source-notes.md Q7/Q8.)

Mechanism (MMUConfig): invlpg is intercepted (from 2.6.28) and drops the one leaf spte; a cr3
load resynchronises every unsync page reachable from the new root (kvm_mmu_sync_roots); the
executor's kvm_mmu_get_page syncs an unsync page it meets; kvm_sync_page zaps a page that
sync_page left with no present spte (``if (vcpu->arch.mmu.sync_page(vcpu, sp))
kvm_mmu_zap_page(...)``, FNAME(sync_page) returning ``!nr_present``). Decision: in 2.6.28 ``mmu_set_spte``
passes ``can_unsync = true`` to ``set_spte`` for every install (demand faults, write or not, and
the speculative ones of update_pte), so ``unsync_on_map`` always answers True and the executor
applies kvm_unsync_page's conditions (leaf pages only, not shadowed in more than one role,
K28 mmu.c:1396-1419; the single-role rule read in ~2.6.32 copies, Q8). A write fault that still
reaches ``on_write_fault`` is answered UNSYNC when ``WriteFault.can_unsync`` and EMULATE
otherwise. Emulated writes (page directories, tables shadowed in two roles, e.g. both halves of
a non-PAE table) keep the per-vCPU flood detector, which 2.6.28 kept unchanged from 2.6.27
(commit 1b7fcd3263 included): this class is flood-count with ``variant`` fixed at 2.6.27.

``tlb_like``: like a TLB, an out-of-sync spte may let the guest run without its walk setting A
or D (the conformance check masks them).
"""

from __future__ import annotations


from mypy_extensions import mypyc_attr

from bench.policy import Decision, MMUConfig, WriteFault
from policies.flood_count import FloodCount


@mypyc_attr(allow_interpreted_subclasses=True)
class Unsync(FloodCount):
    """KVM 2.6.28 out-of-sync leaf shadow pages (commit 4731d4c7a077): leaf tables go writable on
    a write fault, invlpg drops one spte, cr3 loads resync; other writes: flood-count 2.6.27."""

    name = "unsync"
    summary = ("KVM 2.6.28 out-of-sync leaf tables: unsync on write, invlpg drops the spte, cr3 "
               "resyncs (commit 4731d4c7a077); else flood-count 2.6.27")
    params = {"threshold": FloodCount.params["threshold"]}
    variant = "2.6.27"  # fixed: the flood detector 2.6.28 kept (not a parameter here)
    tlb_like = True

    def mmu_config(self, pae: bool) -> MMUConfig:
        return MMUConfig(intercept_invlpg=True, invlpg_drops_spte=True, sync_on_cr3=True,
                         sync_zaps_empty=True)

    def unsync_on_map(self, cpu: int, gfn: int, write_fault: bool) -> bool:
        return True

    def on_write_fault(self, fault: WriteFault) -> Decision:
        return Decision.UNSYNC if fault.can_unsync else Decision.EMULATE


POLICY = Unsync
