"""always-emulate: emulate every trapping page-table write and never unshadow.

The pure write-protection mechanism of domain.md 3.2 with no flood detection (KVM 2.6.26's
kvm_mmu_pte_write with the flood check and 2.6.26's ``bytes < 4`` rule taken out): every guest
write to a shadowed page table is one exit and one emulation, and the spte is rebuilt from the
new gpte. A write spanning two gptes still zaps the table: that is the mechanism's own
coherence rule (KVM rebuilds only the one spte a write falls in), not a policy choice.
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from bench.policy import Policy


@mypyc_attr(allow_interpreted_subclasses=True)
class AlwaysEmulate(Policy):
    name = "always-emulate"
    summary = "emulate every write to a shadowed page table, never unshadow (K26 mechanism, no flood check)"
    # every hook keeps the base class's default: on_write_fault emulates, on_pte_write never zaps


POLICY = AlwaysEmulate
