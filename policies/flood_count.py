"""flood-count: KVM's per-vCPU write-flood detector, as each of three kernels implements it.

Sources (docs/kvm-source-notes.md, domain.md 3.3):

- 2.6.20 (M20 drivers/kvm/mmu.c ``kvm_mmu_pre_write`` ~L700-760): per vCPU ``last_pt_write_gfn``
  and ``last_pt_write_count``; a write to the same gfn as the previous emulated page-table write
  increments the count, another gfn restarts it at 1; ``count >= 3`` is "flooded". Misaligned:
  ``(offset ^ (offset + bytes - 1)) & ~(pte_size - 1)``. Flooded or misaligned zaps every shadow
  page of the gfn. 2.6.20 does not rebuild the spte on an emulated write (``kvm_mmu_post_write``
  is empty, Q4), sets D with a plain store (no kvm_mmu_pre_write, Q1), and has neither the
  demand-fault reset nor ``last_pte_updated``.
- 2.6.23 (commit a25f7e1f8c; T25 paging_tmpl.h ``FNAME(page_fault)``): ``last_pt_write_count = 0``
  when a fault is reflected to the guest, and after fetch when the fault is not a page-table
  write ("reset fork detector").
- 2.6.25/2.6.26 (commit 12b7d28fc1; M26 mmu.c:1700-1709): the count only grows while the spte
  last installed (``last_pte_updated``) has not been accessed; the "new gfn" branch clears
  ``last_pte_updated``. ``mmu_set_spte`` ends with ``if (!ptwrite || !*ptwrite)
  vcpu->arch.last_pte_updated = shadow_pte`` (every install that is not a ptwrite, including
  the speculative ones from update_pte, whose ptwrite is NULL). ``kvm_mmu_zap_page`` calls
  ``kvm_mmu_reset_last_pte_updated`` (all vCPUs). 2.6.26 adds ``misaligned |= bytes < 4``.
- 2.6.27 (commit 1b7fcd3263, "Fix false flooding when a pte points to page table", naming
  kscand on 2.4 HIGHMEM guests; read in later copies, Q2b): ``last_pte_updated`` and
  ``last_pte_gfn`` are recorded only for speculative sptes; at the top of kvm_mmu_pte_write,
  ``kvm_mmu_access_page`` sets the accessed bit of that spte if ``last_pte_gfn == gfn``.

Modelling notes: ``last_pte_updated`` is the spte slot (the executor's ``ref``), as in KVM a
pointer to the slot: whatever the slot holds when the next write is checked is what counts. The
walker's dirty-bit update reaches kvm_mmu_pte_write in 2.6.21-2.6.30 (T25, verified for 2.6.25,
inferred for 2.6.26/27) and so goes through this detector; 2.6.20 has no such call. The flood
check of later kernels is skipped for non-guest-initiated writes (``guest_initiated``, seen in
~2.6.32 copies); whether 2.6.27 had that is not verified, so it is not modelled. The machine's
mechanism is K26's; the 2.6.20 variant switches off the in-place spte update and the walker's
kvm_mmu_pte_write call, and has no quadrant filter, unshadows on a user-mode fault
(mmu_set_spte's ``if (user_fault)`` branch, removed in 2.6.26 by 6bf6a9532f) and has no
bypass_guest_pf (c7addb9020, 2.6.25): ``bench.policy.KVM_2_6_20``. 2.6.26 and 2.6.27 run the
default mechanism (``MMUConfig()``: K26 on VMX, guest not-present faults bypassing KVM).
"""

from __future__ import annotations

from typing import Any

from mypy_extensions import mypyc_attr

from bench.params import Param
from bench.policy import KVM_2_6_20, MMUConfig, Policy, PteWrite

VARIANTS = ("2.6.20", "2.6.26", "2.6.27")


@mypyc_attr(allow_interpreted_subclasses=True)
class FloodCount(Policy):
    """KVM's per-vCPU flood detector (last_pt_write_gfn / last_pt_write_count).

    Variants: 2.6.20 (K20 mmu.c kvm_mmu_pre_write), 2.6.26 (K26 mmu.c:1700-1709 with the 2.6.23
    demand-fault reset of commit a25f7e1f8c and the 2.6.25 last_pte_updated check of commit
    12b7d28fc1), 2.6.27 (commit 1b7fcd3263: last_pte_updated/last_pte_gfn for speculative sptes
    only, kvm_mmu_access_page). Every trapping write is emulated; ``on_pte_write`` answers
    ``flooded`` (2.6.26 and later: ``|| bytes < 4``); the MMU adds ``|| misaligned``.
    """

    name = "flood-count"
    summary = ("KVM per-vCPU flood detector: zap after `threshold` emulated writes to one table "
               "(K20 kvm_mmu_pre_write; K26 mmu.c:1700-1709; 2.6.27 commit 1b7fcd3263)")
    params = {
        "variant": Param(str, "2.6.26", "kernel whose detector and MMU mechanism to model",
                         choices=VARIANTS),
        "threshold": Param(int, 3, "emulated writes to the same table that count as a flood "
                           "(KVM: 3)", minimum=1),
    }

    variant: str
    threshold: int

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        variant = self.variant
        self._v20 = variant == "2.6.20"
        self._v27 = variant == "2.6.27"
        # per vCPU (KVM keeps these in struct kvm_vcpu_arch); zero-initialised like kzalloc
        self._last_gfn: dict[int, int] = {}
        self._count: dict[int, int] = {}
        self._last_pte: dict[int, Any] = {}  # last_pte_updated: an spte slot, or absent (NULL)
        self._last_pte_gfn: dict[int, int] = {}

    def mmu_config(self, pae: bool) -> MMUConfig:
        if self._v20:
            return KVM_2_6_20
        return MMUConfig()

    # -- decisions ------------------------------------------------------------------------------

    def on_pte_write(self, write: PteWrite) -> bool:
        cpu, gfn = write.cpu, write.gfn
        last_pte = self._last_pte.get(cpu)
        if self._v27 and last_pte is not None and self._last_pte_gfn.get(cpu) == gfn:
            self.mmu.mark_spte_accessed(last_pte)  # kvm_mmu_access_page (K27 mmu.c:1216)
        # 2.6.20 never records last_pte_updated (on_spte_set), so ``accessed`` stays false there
        accessed = last_pte is not None and self.mmu.spte_accessed(last_pte)
        flooded = False
        if gfn == self._last_gfn.get(cpu, 0) and not accessed:
            count = self._count.get(cpu, 0) + 1
            self._count[cpu] = count
            flooded = count >= self.threshold
        else:
            self._last_gfn[cpu] = gfn
            self._count[cpu] = 1
            self._last_pte.pop(cpu, None)
        # the misaligned rule of every version is the MMU's (ShadowMachine._mmu_pte_write);
        # 2.6.26 adds bytes < 4
        return flooded or (not self._v20 and write.bytes < 4)

    # -- notifications --------------------------------------------------------------------------
    def on_spte_set(self, cpu: int, ref: Any, speculative: bool, ptwrite: bool) -> None:
        if self._v20:
            return
        if self._v27:
            if speculative:  # 1b7fcd3263: if (speculative) { last_pte_updated; last_pte_gfn }
                self._last_pte[cpu] = ref
                self._last_pte_gfn[cpu] = self.mmu.gfn_of(ref)
        elif not ptwrite:  # K26: if (!ptwrite || !*ptwrite) last_pte_updated = shadow_pte
            self._last_pte[cpu] = ref

    def on_shadow_fault(self, cpu: int, ptwrite: bool) -> None:
        if not self._v20 and not ptwrite:
            self._count[cpu] = 0  # a25f7e1f8c: "reset fork detector" after fetch

    def on_guest_fault(self, cpu: int) -> None:
        if not self._v20:
            self._count[cpu] = 0  # a25f7e1f8c: reset when the fault is reflected

    def on_zap(self, gfn: int, level: int) -> None:
        if not self._v20:
            self._last_pte.clear()  # kvm_mmu_reset_last_pte_updated: every vCPU


POLICY = FloodCount
