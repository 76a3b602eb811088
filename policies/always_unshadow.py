"""always-unshadow: unshadow the page table on every trapping write.

kvm_mmu_unprotect_page_virt (commit a436036baf, K26 x86.c:2141-2167) applied to every write:
zap every shadow page of the gfn and re-execute; the read-only spte the write went through
faults once more and becomes writable, and the write runs natively. The table is shadowed again
(mmu_cache_miss) the next time a guest walk needs it.
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from bench.policy import Decision, Policy, WriteFault


@mypyc_attr(allow_interpreted_subclasses=True)
class AlwaysUnshadow(Policy):
    name = "always-unshadow"
    summary = "unshadow the page table on every trapping write (kvm_mmu_unprotect_page_virt, a436036baf)"

    def on_write_fault(self, fault: WriteFault) -> Decision:
        return Decision.UNSHADOW


POLICY = AlwaysUnshadow
