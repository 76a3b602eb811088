"""xen-early-unshadow: Xen's "two zero writes" early-unshadow heuristic (X331 multi.c:2909-2936).

Source (domain.md 4; xen/arch/x86/mm/shadow/multi.c, read at the 3.3.0-rc7 and 3.4.0-rc3 tags
of xen-project/xen): every emulated write ends in ``emulate_unmap_dest``, whose rule has two
versions (parameter ``version``):

- ``3.3.1`` (Xen 3.3 and 3.4, the default): ``if ( likely(bytes >= 4) && (*(u32 *)addr == 0) &&
  ((unsigned long) addr & (sizeof (guest_intpte_t) - 1)) == 0 ) check_for_early_unshadow(...);
  else reset_early_unshadow(v);`` -- any other write resets the heuristic, a zero written at a
  non-aligned address included. On a PAE guest (8-byte guest_intpte_t) the high half of a
  pte_clear is such a write, so two consecutive pte clears never unshadow.
- ``4.2`` (commit 43d588d6ae, June 2011, first in Xen 4.2): a zero of >= 4 bytes at a
  non-aligned address neither checks nor resets ("Don't reset the heuristic if we're writing
  zeros at non-aligned addresses, otherwise it doesn't catch REP MOVSD on PAE guests").

``check_for_early_unshadow`` removes every shadow of the page if
``last_emulated_mfn_for_unshadow == gmfn`` (and it is a page table), then records gmfn;
``reset_early_unshadow`` forgets it. ``sh_page_fault`` also resets it when a fault is fixed
without emulation and when a fault is not a shadow fault (it is propagated to the guest). The
purpose is "unshadow l1s on fork or exit": a process tearing down its page tables writes zeros.

Modelling: the check runs after the write is in guest memory and before the shadows are
revalidated, so the second zero write itself removes the shadows: ``on_pte_write`` returns True
(the executor counts these zaps as mmu_flooded). The tested value is the first 4 bytes written,
taken from the new gpte; a write that crosses into the next pte cannot be read that way and is
treated as non-zero (a reset). The walker's A/D updates are not emulated writes (Xen's
guest_walk_tables sets them directly) and change nothing; the fault they belong to resets the
heuristic when it is fixed. The state is per vCPU. Every trapping write is emulated (a user-mode
write to a page table unshadows in the executor's mechanism already, as in Xen).
"""

from __future__ import annotations

from typing import Any

from mypy_extensions import mypyc_attr

from bench.params import Param
from bench.policy import XEN_3_3, MMUConfig, Policy, PteWrite

VERSIONS = ("3.3.1", "3.4.4", "4.2")
"""3.3.1 and 3.4.4 share the rule (read at the 3.3.0-rc7 and 3.4.0-rc3 tags); 4.2 has 43d588d6ae."""


def version_param() -> Param:
    """The ``version`` parameter of the Xen policies: which emulate_unmap_dest rule to run."""
    return Param(str, "3.3.1", "Xen release whose early-unshadow rule to model (3.3.1 and "
                 "3.4.4: a non-aligned zero resets it; 4.2: it does not, commit 43d588d6ae)",
                 choices=VERSIONS)


def first_written_word(write: PteWrite) -> int | None:
    """The first 4 bytes the write stored (``*(u32 *)addr``), or None if not readable from the
    new gpte (fewer than 4 bytes, or the 4 bytes cross into the next pte)."""
    if write.bytes < 4:
        return None
    shift = write.offset & (write.pte_size - 1)
    if shift + 4 > write.pte_size:
        return None
    return (write.new_gpte >> (8 * shift)) & 0xFFFFFFFF


@mypyc_attr(allow_interpreted_subclasses=True)
class XenEarlyUnshadow(Policy):
    """Emulate every trapping write; two emulated pte-aligned zero writes (>= 4 bytes) to one page
    table with no other emulated write or fixed fault between remove its shadows (Xen 3.3.1
    multi.c:2909-2936 check_for_early_unshadow / reset_early_unshadow)."""

    name = "xen-early-unshadow"
    summary = ("emulate; unshadow a table on the 2nd consecutive pte-aligned zero write to it "
               "(Xen 3.3.1 multi.c:2909-2936 check_for_early_unshadow)")
    params = {"version": version_param()}

    version: str

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._last: dict[int, int] = {}  # per vCPU: last_emulated_mfn_for_unshadow
        self._keep_on_unaligned_zero = self.version == "4.2"

    def mmu_config(self, pae: bool) -> MMUConfig:
        return XEN_3_3

    def on_pte_write(self, write: PteWrite) -> bool:
        if write.walker:
            return False
        cpu = write.cpu
        word = first_written_word(write)
        if word == 0:
            if write.offset % write.pte_size == 0:
                hit = self._last.get(cpu) == write.gfn
                self._last[cpu] = write.gfn
                return hit
            if self._keep_on_unaligned_zero:
                return False  # 4.2: zeros at a non-aligned address neither check nor reset
        self._last.pop(cpu, None)  # reset_early_unshadow
        return False

    def on_shadow_fault(self, cpu: int, ptwrite: bool) -> None:
        if not ptwrite:
            self._last.pop(cpu, None)  # fault fixed without emulation

    def on_guest_fault(self, cpu: int) -> None:
        self._last.pop(cpu, None)  # not a shadow fault: propagated to the guest


POLICY = XenEarlyUnshadow
