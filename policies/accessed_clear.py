"""accessed-clear: Andrea Arcangeli's "immediate on accessed-clear" proposal.

Source: the seed discussion (../shared/seed/000_e159c9ffc55ca2da.txt): "the test_and_clear_bit
writprotect fault (when the guest user pte is shadowed) should just unshadow the guest user pte,
mark the spte representing the fixmap pte as writeable, and return immediately to guest mode to
actually run test_and_clear_bit natively without writing it through emulation" (domain.md 6).
Linux 3.x later does the same generically: ``retry_instruction`` unprotects the page for any
trapping instruction the emulator does not flag as page-table writing, and btr is not flagged
(commit 1cb3f3ae5a38; K36 emulate.c group8, domain.md 3.3).

Rule: a trapping write that clears the accessed bit of a present guest pte (``lock btrl $5``,
ptep_test_and_clear_young: ``WriteFault.clears_accessed``, recognised by the instruction whether
or not the bit was set, as page_referenced clears every pte_chain mapping unconditionally) is
answered with
``Decision.UNSHADOW_NATIVE`` (zap every shadow page of the gfn, make the spte the write went
through writable in the same exit, run the instruction natively). Every other trapping write,
and every other hook (``on_pte_write`` for the writes that are emulated, ``extra_emulation``,
``unsync_on_map``, the notifications and ``mmu_config``), goes to the ``fallback`` policy, built
with its defaults: ``accessed-clear:fallback=xen-batch`` composes the proposal with Xen's
batched emulation. The unshadow path does not reach kvm_mmu_pte_write, so the fallback's flood
detector neither counts nor resets on it (it sees the zaps through ``on_zap``).
"""

from __future__ import annotations

from typing import Any

from mypy_extensions import mypyc_attr

from bench.policy import Decision, WriteFault
from policies._compose import ComposedPolicy, fallback_param


@mypyc_attr(allow_interpreted_subclasses=True)
class AccessedClear(ComposedPolicy):
    """Unshadow at once, natively, on a trapping test_and_clear of the accessed bit (Andrea
    Arcangeli's proposal in the seed discussion; 3.x retry_instruction, commit 1cb3f3ae5a38, is
    the generic form); other writes go to ``fallback``."""

    name = "accessed-clear"
    summary = ("unshadow natively on a trapping btr of the accessed bit (Arcangeli, seed "
               "discussion; 3.x commit 1cb3f3ae5a38), else ask `fallback`")
    params = {
        "fallback": fallback_param("accessed-clear", "flood-count",
                                   "registered policy (with its defaults) deciding every other "
                                   "write and hook"),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._build_fallback()

    def on_write_fault(self, fault: WriteFault) -> Decision:
        if fault.clears_accessed:
            return Decision.UNSHADOW_NATIVE
        return self.fallback_policy.on_write_fault(fault)


POLICY = AccessedClear
