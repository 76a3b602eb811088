"""The unshadow-policy interface: typed, optional hooks at the shadow MMU's decision points.

A policy sees a decision point and what it needs to decide (gfn, old and new gpte, width,
instruction class, vCPU) and returns a decision; it never reaches into the MMU's internals, only
through the small ``MMUView`` it is given. Every hook has a safe default, so a policy overrides
only what it needs. The executor skips notification hooks a policy does not override.

A policy may change only what a run costs, never what the guest sees: the conformance test runs
every registered policy against native execution.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from bench.machine.events import PteWrite as PteWrite  # (re-exported: the policy interface)
from bench.machine.events import WriteFault as WriteFault
from bench.params import Param, resolve

class Decision(enum.IntEnum):
    """What to do with a guest write that trapped on a write-protected gfn (domain.md 3.2)."""

    EMULATE = 0
    """Emulate the instruction: guest memory is updated and kvm_mmu_pte_write runs (the spte is
    rebuilt from the new gpte, or dropped when P or A is clear). The page stays shadowed unless
    ``on_pte_write`` asks for a zap (KVM's flood and misaligned rules)."""
    UNSHADOW = 1
    """kvm_mmu_unprotect_page_virt (commit a436036baf): zap every shadow page of the gfn and
    re-execute; the read-only spte the write went through faults once more, which installs a
    writable spte, and the write then runs natively."""
    UNSHADOW_NATIVE = 2
    """Andrea Arcangeli's proposal (seed discussion): zap every shadow page of the gfn, make the
    spte the write went through writable in the same exit, and return to run it natively."""
    UNSYNC = 3
    """Out-of-sync (KVM 2.6.28 commit 4731d4c7a077 / Xen 3.3 OOS): mark the gfn's leaf shadow
    pages unsync, make the spte writable in the same exit, and run the write natively. Only
    possible when ``WriteFault.can_unsync``; otherwise the executor emulates."""


@dataclass(frozen=True, slots=True)
class MMUConfig:
    """Hypervisor mechanism that differs between versions (not a per-write decision).

    The defaults are KVM 2.6.26's mechanism on VMX without EPT (K26); each field names the
    release that changed it (docs/kvm-source-notes.md, docs/model.md).

    ``update_spte_on_write``: rebuild the spte from the new gpte on an emulated write (commit
    0028425f64, "update shadow pte on write to guest pte"); 2.6.20 only zaps it.
    ``dirty_bit_pte_write``: the walker's dirty-bit update runs kvm_mmu_pte_write (2.6.21-2.6.30
    paging_tmpl.h walk_addr; 2.6.20 sets D with a plain store; see docs/kvm-source-notes.md).
    ``quadrant_filter``: kvm_mmu_pte_write updates only the shadow page whose quadrant holds the
    written gpte of a non-PAE guest, and both 2 MiB halves of a 4 MiB pde (K26 ``npte = 2``);
    2.6.20 computes ``page_offset <<= 1; page_offset &= ~PAGE_MASK`` and zaps that one entry in
    every shadow page of the gfn, whatever its quadrant (M20 kvm_mmu_pre_write).
    ``user_fault_unshadow``: mmu_set_spte's ``if (user_fault) { mmu_unshadow(); goto unshadowed; }``:
    a user-mode fault that maps a shadowed gfn writable unshadows it (2.6.20 to 2.6.25; removed
    in 2.6.26 by commit 6bf6a9532f, "Fix oops on guest userspace access to guest pagetable",
    after which such a write traps and is emulated like any other).
    ``user_write_unshadow``: Xen 3.3 sh_page_fault ("We do not emulate user writes"): a user-mode
    write that traps on a page table removes its shadows and is re-executed.
    ``bypass_guest_pf``: VMX ``bypass_guest_pf=1`` (commit c7addb9020, 2.6.25): a shadow entry
    whose guest entry is not present is installed as ``shadow_notrap_nonpresent_pte`` (by
    prefetch_page when the shadow page is created, by update_pte after an emulated write, by
    sync_page), and a fault on it goes to the guest without an exit (the page-fault error-code
    mask and match), so it is lost to fault tracking (12b7d28fc1) and resets no detector.
    2.6.20 has no such entries; Xen 3.3 exits on every shadow fault.
    ``intercept_invlpg``: invlpg exits (KVM 2.6.28 with out-of-sync pages; 2.6.27 VMX did not
    intercept it). ``invlpg_drops_spte``: the invlpg handler drops the leaf spte (2.6.28).
    ``sync_on_cr3``: a cr3 load resynchronises the unsync pages reachable from the new root
    (kvm_mmu_sync_roots, 2.6.28). ``sync_zaps_empty``: kvm_sync_page zaps a page that
    ``sync_page`` left with no present spte (2.6.28: ``if (vcpu->arch.mmu.sync_page(vcpu, sp))
    kvm_mmu_zap_page(...)``, FNAME(sync_page) returning ``!nr_present``).
    ``tdp``: two-dimensional paging (EPT/NPT): no shadow pages at all.
    ``tlb_entries``: the per-vCPU TLB size modelled under ``tdp``.
    """

    update_spte_on_write: bool = True
    dirty_bit_pte_write: bool = True
    quadrant_filter: bool = True
    user_fault_unshadow: bool = False
    user_write_unshadow: bool = False
    bypass_guest_pf: bool = True
    intercept_invlpg: bool = False
    invlpg_drops_spte: bool = False
    sync_on_cr3: bool = False
    sync_zaps_empty: bool = False
    tdp: bool = False
    tlb_entries: int = 64


KVM_2_6_20 = MMUConfig(update_spte_on_write=False, dirty_bit_pte_write=False,
                       quadrant_filter=False, user_fault_unshadow=True, bypass_guest_pf=False)
"""KVM 2.6.20's mechanism (M20 drivers/kvm/mmu.c, T20 paging_tmpl.h)."""

XEN_3_3 = MMUConfig(user_write_unshadow=True, bypass_guest_pf=False)
"""Xen 3.3's shadow mechanism as far as it differs here (X331 multi.c sh_page_fault)."""


class ShadowPageView(Protocol):
    """What a policy sees of one shadow page (K36 struct kvm_mmu_page, reduced)."""

    gfn: int
    level: int
    quadrant: int
    write_flooding_count: int


class MMUView(Protocol):
    """What a policy may ask of, or ask from, the shadow MMU."""

    def spte_accessed(self, ref: Any) -> bool:
        """Whether the spte named by ``ref`` (as passed to ``on_spte_set``) is present with its
        shadow accessed bit set."""

    def mark_spte_accessed(self, ref: Any) -> None:
        """Set the shadow accessed bit of that spte if it is present (kvm_mmu_access_page)."""

    def gfn_of(self, ref: Any) -> int:
        """The gfn the spte named by ``ref`` maps."""

    def resync_gfn(self, gfn: int) -> None:
        """Resynchronise the unsync shadow pages of ``gfn`` now (and write-protect it again)."""

    def shadow_levels(self, gfn: int) -> tuple[int, ...]:
        """The levels of the (indirect) shadow pages that ``gfn`` currently has."""


class Policy:
    """Base class of every unshadow policy. Subclasses set the class attributes and override hooks.

    ``name`` is the registry name, ``summary`` one line on the rule and its source, ``params``
    the validated parameters (passed to ``__init__`` as keyword arguments after validation).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    tlb_like: bool = False
    """True for policies that, like a TLB, may leave a guest accessed/dirty bit unset where a
    walk on every access would set it (out-of-sync pages, tdp); the conformance check compares
    their guest memory with A and D masked in page-table entries (docs/model.md). A composed
    policy sets it on the instance, from its fallback."""
    mmu: MMUView
    """The MMU this policy decides for (set by ``attach``, before the run)."""

    def __init__(self, **params: Any) -> None:
        """Validate ``params`` against the class's ``params`` (defaults filled in) and set them
        as attributes."""
        for key, value in resolve(f"policy {self.name}", type(self).params, params).items():
            setattr(self, key, value)

    def mmu_config(self, pae: bool) -> MMUConfig:
        """The hypervisor mechanism this policy runs on."""
        return MMUConfig()

    def attach(self, mmu: MMUView) -> None:
        """Called once before the run, with the MMU this policy decides for."""
        self.mmu = mmu

    # -- decisions -------------------------------------------------------------------------------
    def on_write_fault(self, fault: WriteFault) -> Decision:
        """A guest write hit a write-protected gfn: emulate, unshadow or unsync it."""
        return Decision.EMULATE

    def on_pte_write(self, write: PteWrite) -> bool:
        """An emulated write reached kvm_mmu_pte_write: True zaps every shadow page of the gfn
        (KVM's ``misaligned || flooded``) instead of updating the spte."""
        return False

    def on_pte_write_page(self, write: PteWrite, page: ShadowPageView) -> bool:
        """The same write, asked once per shadow page of the gfn (before the quadrant filter, as
        KVM 3.x's detect_write_flooding(sp)): True zaps just that page. The page carries its
        ``write_flooding_count``, which the MMU clears whenever a fault's walk passes through the
        page or kvm_mmu_get_page finds it (K36 mmu.c); the policy counts. Not called unless a
        policy overrides it."""
        return False

    def extra_emulation(self, write: PteWrite) -> int:
        """After an exit that emulated a page-table write: how many following instructions of the
        same vCPU to emulate in the same exit (Xen's PAE second-half emulation), stopping after
        the next page-table write."""
        return 0

    def unsync_on_map(self, cpu: int, gfn: int, write_fault: bool) -> bool:
        """A writable spte is being installed for a leaf page-table gfn that could go out of sync
        (KVM 2.6.28 mmu_need_write_protect): True marks it unsync instead of write-protecting."""
        return False

    # -- notifications ---------------------------------------------------------------------------
    def on_spte_set(self, cpu: int, ref: Any, speculative: bool, ptwrite: bool) -> None:
        """mmu_set_spte installed a leaf spte; ``speculative`` when from an emulated write."""

    def on_shadow_walk(self, cpu: int, level: int, gfn: int) -> None:
        """A shadow page fault's walk passed through the shadow page (gfn, level)."""

    def on_shadow_fault(self, cpu: int, ptwrite: bool) -> None:
        """A shadow page fault was fixed; ``ptwrite`` when it ends in a write-protection decision."""

    def on_guest_fault(self, cpu: int) -> None:
        """A page fault was reflected into the guest."""

    def on_invlpg(self, cpu: int, vaddr: int) -> None:
        """The guest executed invlpg (seen only when intercepted)."""

    def on_cr3(self, cpu: int, cr3: int) -> None:
        """The guest loaded cr3 (after the MMU switched roots and synced)."""

    def on_zap(self, gfn: int, level: int) -> None:
        """A shadow page of (gfn, level) was zapped."""


DECISION_HOOKS: tuple[str, ...] = (
    "on_write_fault", "on_pte_write", "on_pte_write_page", "extra_emulation", "unsync_on_map",
)
NOTIFICATION_HOOKS: tuple[str, ...] = (
    "on_spte_set", "on_shadow_walk", "on_shadow_fault", "on_guest_fault", "on_invlpg", "on_cr3",
    "on_zap",
)


def overridden(policy: Policy, hook: str) -> bool:
    """Whether ``policy`` answers ``hook`` with anything but the base class's default (so the
    executor must call it). Asked of the instance: a composed policy binds its fallback's
    methods on itself (policies/_compose.py), and a fallback's default is still a default."""
    method = getattr(policy, hook)
    return getattr(method, "__func__", method) is not getattr(Policy, hook)
