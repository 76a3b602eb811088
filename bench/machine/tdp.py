"""The two-dimensional paging executor (EPT/NPT): no shadow pages, a per-vCPU TLB, 2-D walks.

With hardware two-dimensional paging the guest owns its page tables outright: its writes to
them, invlpg and cr3 loads run natively, without exits (EPT guests run with CR3-load and INVLPG
exiting off; guest memory is fully backed, so there are no EPT violations). What the hypervisor
pays instead is the hardware walk on every TLB miss: each guest-physical address the guest walk
touches (every guest table, then the final page) is itself translated through the 4-level EPT,
so a walk of g guest levels takes (g+1)*(4+1)-1 memory references against g natively
(costs.md 5: 24 against 4 for a 4-level guest, Gandhi et al., MICRO 2014).

The model (docs/tdp.md):

- one TLB per vCPU, ``MMUConfig.tlb_entries`` entries, fully associative, LRU, keyed by 4-KiB
  virtual page; an entry holds the frame, the combined writable and user permissions, whether
  the leaf was dirty when loaded, and the leaf's G bit. Guest memory is backed by 4-KiB EPT
  pages, so a guest large page is cached as 4-KiB entries (the combined translation is the
  smaller of the two page sizes);
- a hit that permits the access uses the cached translation without touching guest memory (the
  guest's accessed bit is not set again: why the tdp policy is ``tlb_like``); a write hitting an
  entry loaded without D re-walks to set D; a hit whose cached permissions forbid the access
  re-walks (the spurious-fault case): both count as misses;
- a miss walks the guest tables with bench.machine.paging.walk (A on the levels used, D on a
  written leaf) and fills the TLB; a walk that fails is a page fault the guest takes, as
  natively (guest memory untouched, no entry cached, the stale entry for the page dropped);
- invlpg drops the page's entry (global or not); a cr3 load drops every non-global entry.

PAE PDPTEs are loaded into registers at cr3 load, so PAE and non-PAE 32-bit guests walk g = 2
levels for a 4-KiB page and g = 1 for a large page. Not modelled: paging-structure caches and
nested-walk caches (every miss pays the full walk, an upper bound), the second-level TLB, the
EPT translation of the PDPT at a PAE cr3 load, and exits for anything but paging (there are none).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

from bench.errors import BenchError
from bench.machine.counters import Counters
from bench.machine.memory import GuestMemory
from bench.machine.native import apply_write, count_native
from bench.machine.paging import G, P, PS, US, Mode, directory_entry_gpa, walk
from bench.ops import BTR, BTS, CR3, INVLPG, LOAD, MARK, PAGE_OFFSET, STORE, OpTuple
from bench.policy import MMUConfig, Policy

EPT_LEVELS: Final = 4
"""x86-64 hosts walk a 4-level EPT (or NPT) for every guest-physical address."""


def walk_refs(guest_levels: int) -> int:
    """Memory references of a 2-D walk of ``guest_levels`` guest levels against a 4-level EPT:
    each guest table is located through the EPT (4) and read (1), then the final guest-physical
    address is translated (4): (g+1)*(4+1)-1."""
    return (guest_levels + 1) * (EPT_LEVELS + 1) - 1


class TlbEntry:
    """One cached translation: the frame, combined permissions, dirty when loaded, global."""

    __slots__ = ("gfn", "writable", "user", "dirty", "glob")

    def __init__(self, gfn: int, writable: bool, user: bool, dirty: bool, glob: bool) -> None:
        self.gfn = gfn
        self.writable = writable
        self.user = user
        self.dirty = dirty
        self.glob = glob


class TdpMachine:
    """Executes guest operations under two-dimensional paging; counts TLB misses and walk refs."""

    def __init__(self, mem: GuestMemory, mode: Mode, cr3s: list[int], policy: Policy) -> None:
        self.mem = mem
        self.mode = mode
        self.policy = policy
        self.cfg: MMUConfig = policy.mmu_config(mode.pae)
        if not self.cfg.tdp:
            raise BenchError(f"policy {policy.name} runs on shadow paging, not the tdp executor")
        if self.cfg.tlb_entries < 1:
            raise BenchError(f"tlb_entries must be at least 1, got {self.cfg.tlb_entries}")
        self.tlb_entries = self.cfg.tlb_entries
        self.cr3 = list(cr3s)
        self.tlbs: list[OrderedDict[int, TlbEntry]] = [OrderedDict() for _ in cr3s]
        self.counters = Counters()
        self.marks: list[tuple[int, dict[str, int]]] = []

    def run(self, ops: Iterable[OpTuple]) -> Counters:
        step = self.step
        for op in ops:
            step(op)
        return self.counters

    def step(self, op: OpTuple) -> None:
        kind, cpu, addr, arg, value = op[0], op[1], op[2], op[3], op[4]
        c = self.counters
        count_native(c, kind, arg)
        if kind == LOAD or kind == STORE or kind == BTR or kind == BTS:
            gfn = self._translate(cpu, addr, kind != LOAD, addr < PAGE_OFFSET)
            if gfn < 0:
                c.native_page_fault += 1
            elif kind != LOAD:
                apply_write(self.mem, (gfn << 12) | (addr & 0xFFF), kind, arg, value)
        elif kind == INVLPG:
            self.tlbs[cpu].pop(addr >> 12, None)
        elif kind == CR3:
            self.cr3[cpu] = addr
            tlb = self.tlbs[cpu]
            for vpn in [v for v, e in tlb.items() if not e.glob]:
                del tlb[vpn]
        elif kind == MARK:
            self.marks.append((arg, c.as_dict()))

    def _translate(self, cpu: int, vaddr: int, write: bool, user: bool) -> int:
        """The frame for the access, from the TLB or a 2-D walk; -1 for a guest page fault."""
        tlb = self.tlbs[cpu]
        vpn = vaddr >> 12
        entry = tlb.get(vpn)
        if entry is not None:
            if (not user or entry.user) and (not write or (entry.writable and entry.dirty)):
                tlb.move_to_end(vpn)
                return entry.gfn
            del tlb[vpn]  # re-walk: D to set, or cached permissions forbid the access
        c = self.counters
        c.tdp_tlb_miss += 1
        w = walk(self.mem, self.mode, self.cr3[cpu], vaddr, write, user)
        if w is None:
            levels = self._levels_read(cpu, vaddr)
            c.tdp_walk_refs += levels * (EPT_LEVELS + 1)
            c.native_walk_refs += levels
            return -1
        levels = 1 if w.pt_gfn is None else 2
        c.tdp_walk_refs += walk_refs(levels)
        c.native_walk_refs += levels
        tlb[vpn] = TlbEntry(w.gfn, w.writable, w.user, w.dirty, bool(w.leaf & G))
        if len(tlb) > self.tlb_entries:
            tlb.popitem(last=False)
        return w.gfn

    def _levels_read(self, cpu: int, vaddr: int) -> int:
        """How many guest entries a failing walk read before it faulted (each located through
        the EPT and read; no final translation)."""
        mode = self.mode
        pde_gpa = directory_entry_gpa(self.mem, mode, self.cr3[cpu], vaddr)
        if pde_gpa < 0:
            return 0  # PAE: the PDPTE register is not present
        pde = self.mem.read_entry(pde_gpa, mode.pae)
        if not pde & P or pde & PS or (vaddr < PAGE_OFFSET and not pde & US):
            return 1
        return 2
