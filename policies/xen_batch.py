"""xen-batch: Xen's PAE "second half" emulation (commit 6b73fb435b, 2007).

Source (domain.md 4; Xen 3.3.1 xen/arch/x86/mm/shadow/multi.c:3533-3560, still at HEAD): in
sh_page_fault, after emulating a page-table write, ``#if GUEST_PAGING_LEVELS == 3`` (PAE
guests only) the emulator runs up to 4 more instructions of the vCPU in the same exit, "in the
hope of catching the 'second half' of a 64-bit pagetable write", stopping right after the first
one that writes a page table (``last_write_was_pt``) or at a failure. Non-page-table instructions
emulated this way are counted (perf counter shadow_em_ex_non_pt); the executor counts every
extra instruction as insn_emulation_extra and stops the batch at instructions it cannot emulate
inside an exit (invlpg, cr3 loads, faults).

Parameters: ``extra`` (default 4, Xen's loop bound), ``pae_only`` (default true: the loop is
compiled only for 3-level guests; false applies it to non-PAE guests too, a what-if).

Instructions, not operations: the batch counts guest instructions (bench.ops: a COMPUTE gap
between two operations stands for the instructions the kernel runs between them), takes only
kernel-mode instructions, stops at invlpg, cr3 loads and faults, and counts the instructions that
write no page table (``insn_emulation_extra_non_pt``, Xen's shadow_em_ex_non_pt); each is priced
like any other extra emulated instruction (the profile's ``extra_emulation``, an estimate). The
executor implements it (bench.machine.shadow ``_emulate_extra``).

``version`` (3.3.1 or 4.2) is passed to the fallback when it declares it (the Xen policies): the
early-unshadow rule of that release (xen-early-unshadow).

Unshadow decisions go to ``fallback``. Xen does not use KVM's flood counter: it emulates every
write to a shadowed table and unshadows by its own triggers, of which the one that concerns
emulated guest-kernel writes is the early-unshadow heuristic (multi.c:2909-2936); the user-mode
write and emulation-failure triggers are part of the executor's mechanism. So the faithful
default fallback is ``xen-early-unshadow``; ``xen-batch:fallback=flood-count`` is the what-if of
Xen's batching on KVM. Every hook other than ``extra_emulation`` is forwarded to the fallback
(``mmu_config`` included); the fallback's own ``extra_emulation`` is not consulted.
"""

from __future__ import annotations

from typing import Any

from mypy_extensions import mypyc_attr

from bench.params import Param
from bench.policy import PteWrite
from policies._compose import ComposedPolicy, fallback_param
from policies.xen_early_unshadow import version_param


@mypyc_attr(allow_interpreted_subclasses=True)
class XenBatch(ComposedPolicy):
    """After an emulated page-table write of a PAE guest, emulate up to ``extra`` more
    instructions in the same exit, stopping after the next page-table write (Xen commit
    6b73fb435b; X331 multi.c:3533-3560); unshadow decisions from ``fallback``."""

    name = "xen-batch"
    summary = ("after an emulated pt write (PAE), emulate up to `extra` more instructions in the "
               "exit (Xen 6b73fb435b, X331 multi.c:3533-3560); `fallback` unshadows")
    params = {
        "extra": Param(int, 4, "instructions emulated after a page-table write in the same exit "
                       "(Xen: 4)", minimum=0),
        "pae_only": Param(bool, True, "only for PAE guests, as Xen compiles it "
                          "(GUEST_PAGING_LEVELS == 3)"),
        "fallback": fallback_param("xen-batch", "xen-early-unshadow",
                                   "registered policy (with its defaults) deciding unshadows and "
                                   "every other hook"),
        "version": version_param(),
    }

    extra: int
    pae_only: bool
    version: str

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._build_fallback({"version": self.version})  # a Xen fallback runs this release

    def extra_emulation(self, write: PteWrite) -> int:
        if self.pae_only and write.pte_size != 8:
            return 0
        return self.extra


POLICY = XenBatch
