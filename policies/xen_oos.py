"""xen-oos: Xen 3.3 out-of-sync L1 shadows (2008), with early unshadow for what it emulates.

Sources (domain.md 4): Xen 3.3.1 xen/arch/x86/mm/shadow/multi.c ``sh_page_fault``: "Always unsync
when writing to L1 page tables": ``if ( sh_mfn_is_a_page_table(gmfn) && ft == ft_demand_write )
sh_unsync(v, gmfn);``; common.c ``sh_unsync`` refuses pages shadowed as anything but L1 or with
more than one shadow (the executor's kvm_unsync_page conditions are the same: leaf only, one
role); ``oos_hash_add`` (common.c; read in a stored copy, index id 189130811, the ``mfn_valid``
form) keeps SHADOW_OOS_PAGES = 3 out-of-sync pages per vCPU in a tiny hash:

    idx = mfn_x(gmfn) % SHADOW_OOS_PAGES;
    if ( mfn_valid(oos[idx]) && (mfn_x(oos[idx]) % SHADOW_OOS_PAGES) == idx ) {
        /* Punt the current occupant into the next slot */
        SWAP(oos[idx], gmfn); ... idx = (idx + 1) % SHADOW_OOS_PAGES;
    }
    if ( mfn_valid(oos[idx]) ) { /* Crush the current occupant. */ _sh_resync(v, oos[idx], ...); }
    oos[idx] = gmfn;

So the page evicted is not the oldest but the occupant of the slot the new page (or the punted
home occupant) lands in; this is modelled exactly, with ``limit`` as SHADOW_OOS_PAGES (with
``limit=1`` there is no other slot to punt into, so the occupant is simply evicted).
``sh_update_cr3`` resyncs the vCPU's OOS pages (shadow_resync_current_vcpu) and updates the
shadows of the other vCPUs' (shadow_sync_other_vcpus) on every cr3 write, Xen's TLB flush.
``sh_invlpg`` on an OOS L1 drops the one entry. L2 and higher tables are always emulated, and
emulated writes go through early unshadow (xen-early-unshadow, which this class extends).

Modelling choices: the unsync happens in ``unsync_on_map`` for write faults only (Xen: only
``ft_demand_write``), which the executor calls while installing the writable spte; a cr3 load
resyncs the vCPU's pages and, because the policy interface can only resync (revalidate and
write-protect), also the other vCPUs' pages, where Xen would only revalidate them and leave them
out of sync (so later writes to those tables cost one more unsync exit here). MMUConfig asks for
invlpg interception that drops the leaf spte whether or not its table is out of sync (Xen drops
it only for OOS L1s). The 2 writable-mapping fixups per page (SHADOW_OOS_FIXUPS) are not
modelled. A gfn leaves the per-vCPU table when its shadow is zapped (oos_hash_remove); a page the
executor resyncs by itself (kvm_mmu_get_page meeting it) keeps its slot until evicted or flushed,
and evicting it is then a no-op.
"""

from __future__ import annotations

from typing import Any

from mypy_extensions import mypyc_attr

from bench.params import Param
from bench.policy import XEN_3_3, MMUConfig
from policies.xen_early_unshadow import XenEarlyUnshadow, version_param


@mypyc_attr(allow_interpreted_subclasses=True)
class XenOOS(XenEarlyUnshadow):
    """Xen 3.3 out-of-sync L1s: unsync an L1 on a guest write fault, at most ``limit`` per vCPU in
    Xen's oos hash (common.c oos_hash_add, SHADOW_OOS_PAGES = 3), resync on cr3 write; other
    writes emulated with early unshadow (X331 multi.c:2909-2936)."""

    name = "xen-oos"
    summary = ("Xen 3.3 out-of-sync L1s: unsync on write, <= `limit` per vCPU (oos_hash_add), "
               "resync on cr3; else emulate + early unshadow")
    params = {
        "limit": Param(int, 3, "out-of-sync pages per vCPU (Xen SHADOW_OOS_PAGES = 3)",
                       minimum=1),
        "version": version_param(),
    }
    tlb_like = True

    limit: int

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._oos: dict[int, list[int | None]] = {}

    def mmu_config(self, pae: bool) -> MMUConfig:
        return MMUConfig(intercept_invlpg=True, invlpg_drops_spte=True,
                         user_write_unshadow=XEN_3_3.user_write_unshadow,
                         bypass_guest_pf=XEN_3_3.bypass_guest_pf)

    def _table(self, cpu: int) -> list[int | None]:
        table = self._oos.get(cpu)
        if table is None:
            table = self._oos[cpu] = [None] * self.limit
        return table

    def _forget(self, gfn: int) -> None:
        for table in self._oos.values():
            for i, entry in enumerate(table):
                if entry == gfn:
                    table[i] = None

    def unsync_on_map(self, cpu: int, gfn: int, write_fault: bool) -> bool:
        if not write_fault:
            return False  # Xen unsyncs only on ft_demand_write
        self._forget(gfn)
        oos = self._table(cpu)
        n = self.limit
        idx = gfn % n
        home = oos[idx]
        if n > 1 and home is not None and home % n == idx:
            oos[idx], gfn = gfn, home  # punt the home occupant into the next slot
            idx = (idx + 1) % n
        victim = oos[idx]
        oos[idx] = gfn
        if victim is not None:
            self.mmu.resync_gfn(victim)  # crush the current occupant (_sh_resync)
        return True

    def on_cr3(self, cpu: int, cr3: int) -> None:
        tables = [t for c, t in sorted(self._oos.items()) if c != cpu]
        mine = self._oos.get(cpu)
        if mine is not None:
            tables.insert(0, mine)
        for table in tables:
            for i, gfn in enumerate(table):
                if gfn is not None:
                    table[i] = None
                    self.mmu.resync_gfn(gfn)

    def on_zap(self, gfn: int, level: int) -> None:
        if level == 1:
            self._forget(gfn)


POLICY = XenOOS
