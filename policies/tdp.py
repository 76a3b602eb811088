"""tdp: hardware two-dimensional paging (Intel EPT, AMD NPT/RVI), the road history took.

No page is write-protected, so no policy decision ever arises: guest page-table writes, invlpg
and cr3 loads run natively. The cost moves to TLB misses, each a two-dimensional walk through
the guest tables and the EPT (docs/costs.md 5). Runs on bench.machine.tdp.TdpMachine; the model and
its simplifications are in docs/tdp.md.
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from bench.params import Param
from bench.policy import MMUConfig, Policy


@mypyc_attr(allow_interpreted_subclasses=True)
class Tdp(Policy):
    name = "tdp"
    summary = ("two-dimensional paging (EPT/NPT): no write traps, every TLB miss walks guest "
               "tables and EPT (docs/costs.md 5; docs/tdp.md)")
    params = {
        "tlb_entries": Param(
            int, 64,
            "per-vCPU TLB entries, LRU; 64 = Nehalem's first-level DTLB for 4-KiB pages (Tom's "
            "Hardware, 'Intel Core i7 (Nehalem)', 2008-10-14); its 512-entry STLB is not modelled",
            minimum=1),
    }
    tlb_like = True
    """A TLB hit translates without a walk, so a guest accessed bit the guest cleared (kscand's
    test_and_clear_young) stays clear while the entry lives, where a walk on every access (the
    native reference) would set it again; the same holds for D when a store hits an entry that
    was loaded dirty after the guest cleaned the pte without invlpg."""

    tlb_entries: int

    def mmu_config(self, pae: bool) -> MMUConfig:
        return MMUConfig(tdp=True, tlb_entries=self.tlb_entries)


POLICY = Tdp
