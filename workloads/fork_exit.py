"""fork-exit: processes forked and torn down, the page-table writes of copy_page_range and
zap_pte_range (the pattern KVM's flood detector and Xen's early unshadow were built for).

Per CPU a parent process with ``parent_pages`` private anonymous pages (writable, young,
dirty) runs a loop of ``cycles`` (R3 mm/memory.c and kernel/fork.c; notes section 8):

1. fork, per parent page table: pte_alloc_map for the child: pte_alloc_one takes a highmem page
   and clear_highpage()s it (kmap_atomic(KM_USER0), 1024 4-byte zero stores, kunmap; 2.4 i386
   pgtable.c pte_alloc_one, not in the notes), pmd_populate writes the child's directory entry
   (set_pmd: cmpxchg8b under PAE), then pte_offset_map (KM_PTE0) on the child table and
   pte_offset_map_nested (KM_PTE1) on the parent's; for every non-none parent pte: read it; if
   writable (a private COW mapping) ptep_set_wrprotect = clear_bit(RW) (lock btrl bit 1) on the
   parent pte; the child pte = pte_mkold(pte) written with set_pte; then pte_unmap_nested and
   pte_unmap. dup_mmap ends with flush_tlb_mm(parent): a cr3 reload.
2. the child runs (cr3 load) and reads ``child_touches`` of the pages (its walks set A again),
3. the child exits: zap_page_range over its mapping (kmap KM_PTE0, read every pte, pte_clear
   each present one: high word first on 2.4, low first on 2.6, per ``kernel``; one cr3 reload per
   ZAP_BLOCK of 256 pages), then clear_page_tables: pmd_clear (a zero set_pmd) per table, and
   the parent is scheduled again (cr3 load).
4. the parent writes a ``cow_fraction`` of its pages: a write to a pte that fork made read-only
   is a write-protect fault; do_wp_page finds the page no longer shared and reuses it:
   establish_pte = set_pte(pte_mkyoung(pte_mkdirty(pte_mkwrite(pte)))) through pte_offset_map's
   KM_PTE0, flush_tlb_page (invlpg), pte_unmap; then the write is retried.

Modelling choices: the child's page directory and page tables are the same frames on every
cycle (the page allocator's per-CPU free lists return the pages just freed: LIFO); the
clear_highpage and do_wp_page details come from vanilla 2.4 and were not checked against 47.EL.
CPUs run their own parent and child; their operations are interleaved one at a time.
"""

from __future__ import annotations

import random

from mypy_extensions import mypyc_attr

from bench.guest import KM_PTE0, KM_PTE1, USER_PDE, Guest
from bench.ops import CR3, INVLPG, LOAD, STORE, BTR
from bench.params import Param
from bench.workload import GuestRun
from workloads._base import COMMON_PARAMS, KERNEL_PARAMS, GuestWorkload, interleave_generators
from workloads._kmap import PTE_LOOP_GAP, Kernel
from workloads._mm import PRIVATE_BASE, PTE_FLAGS

KM_USER0 = 23
"""enum km_type KM_USER0 in 2.4.21-EL (R3 include/asm-i386/kmap_types.h; notes section 4)."""
RW_BIT = 1
QUICK_PAGES = 256
QUICK_CYCLES = 3


def directory_entry_kvaddr(guest: Guest, proc, vaddr: int) -> int:
    """The lowmem kernel address of the user directory entry (PAE pmd / non-PAE pgd) for vaddr."""
    if guest.pae:
        gpa = (proc.directories[vaddr >> 30] << 12) + ((vaddr >> 21) & 0x1FF) * 8
    else:
        gpa = (proc.directories[0] << 12) + (vaddr >> 22) * 4
    return guest.kvaddr(gpa)


@mypyc_attr(allow_interpreted_subclasses=True)
class ForkExit(GuestWorkload):
    name = "fork-exit"
    summary = ("fork (copy_page_range) and exit (zap_pte_range) of a child, then COW faults in "
               "the parent (R3 mm/memory.c)")
    params = {
        **KERNEL_PARAMS,
        **COMMON_PARAMS,
        "parent_pages": Param(int, 1024, "private anonymous pages of each parent", minimum=1,
                              maximum=200000),
        "cycles": Param(int, 30, "fork/exit cycles per CPU", minimum=1),
        "child_touches": Param(int, 16, "pages the child reads before it exits", minimum=0),
        "cow_fraction": Param(float, 0.1, "fraction of its pages the parent writes after each "
                              "cycle (COW faults on ptes fork write-protected)", minimum=0.0,
                              maximum=1.0),
    }

    parent_pages: int
    cycles: int
    child_touches: int
    cow_fraction: float

    quick_sizes = {"parent_pages": QUICK_PAGES, "cycles": QUICK_CYCLES}

    def build(self, rng: random.Random) -> GuestRun:
        npages = self.parent_pages
        cycles = self.cycles
        entries = 512 if self.pae else 1024
        ntables = -(-npages // entries)
        guest = Guest(self.pae, self.cpus * (npages + 2 * ntables) + 8, cpus=self.cpus)
        kernel = Kernel(guest, self.kernel, self.debug_highmem)
        span = 1 << guest.mode.large_shift
        gens, cr3s = [], []
        for cpu in range(self.cpus):
            parent = guest.new_process()
            vaddrs = [PRIVATE_BASE + i * 4096 for i in range(npages)]
            ptes = [guest.set_pte_direct(parent, va, guest.alloc_high(), PTE_FLAGS)
                    for va in vaddrs]
            child = guest.new_process()
            tables = []  # (child table gfn, child pmd kvaddr, parent ptes of that table, vaddrs)
            for t in range(ntables):
                lo, hi = t * entries, min((t + 1) * entries, npages)
                tables.append((guest.alloc_pte_table(),
                               directory_entry_kvaddr(guest, child, PRIVATE_BASE + t * span),
                               ptes[lo:hi], vaddrs[lo:hi]))
            cow = sorted(rng.sample(range(npages), int(round(self.cow_fraction * npages))))
            step = max(1, npages // self.child_touches) if self.child_touches else 0
            touches = vaddrs[::step][:self.child_touches] if step else []
            cr3s.append(parent.cr3)
            gens.append(self._cpu(kernel, cpu, parent.cr3, child.cr3, tables, ptes, vaddrs, cow,
                                  touches, cycles))
        sizes = {"pages": self.cpus * npages, "page_tables": 2 * self.cpus * ntables,
                 "processes": 2 * self.cpus, "cycles": cycles}
        ops = interleave_generators(gens)
        return GuestRun(guest, cr3s, ops, sizes)

    def _cpu(self, kernel: Kernel, cpu: int, parent_cr3: int, child_cr3: int, tables: list,
             ptes: list[int], vaddrs: list[int], cow: list[int], touches: list[int], cycles: int):
        mem, pae = kernel.mem, kernel.pae
        esize = kernel.esize
        for _ in range(cycles):
            # fork: copy_page_range
            child_ptes = []
            for tgfn, pmd_kva, src_ptes, src_vaddrs in tables:
                ops, base = kernel.kmap(cpu, KM_USER0, tgfn)  # clear_highpage
                yield from ops
                for off in range(0, 4096, 4):
                    yield (STORE, cpu, base + off, 4, 0, "mov")
                yield from kernel.kunmap(cpu, KM_USER0, tgfn)
                yield from kernel.set_pmd(cpu, pmd_kva, (tgfn << 12) | USER_PDE)
                dops, dbase = kernel.kmap(cpu, KM_PTE0, tgfn)
                yield from dops
                sgfn = src_ptes[0] >> 12
                sops, sbase = kernel.kmap(cpu, KM_PTE1, sgfn)
                yield from sops
                for gpa in src_ptes:
                    off = gpa & 0xFFF
                    yield from kernel.gap(cpu, PTE_LOOP_GAP)  # copy_pte_range's loop
                    yield from kernel.read_pte(cpu, sbase + off)
                    pte = mem.read_entry(gpa, pae)
                    if not pte:
                        continue
                    if pte & 1 and pte & 2:
                        yield (BTR, cpu, sbase + off, RW_BIT, 0, "btr")
                        pte = mem.read_entry(gpa, pae)
                    yield from kernel.set_pte(cpu, dbase + off, pte & ~0x20)
                    child_ptes.append((tgfn << 12) | off)
                yield from kernel.kunmap(cpu, KM_PTE1, sgfn)
                yield from kernel.kunmap(cpu, KM_PTE0, tgfn)
            yield (CR3, cpu, parent_cr3, 0, 0, "mov-cr3")  # dup_mmap: flush_tlb_mm(oldmm)
            # the child runs, then exits
            yield (CR3, cpu, child_cr3, 0, 0, "mov-cr3")
            for va in touches:
                yield (LOAD, cpu, va, 4, 0, "mov")
            all_child = [(t[0] << 12) + i * esize for t in tables for i in range(len(t[2]))]
            yield from kernel.zap_page_range(cpu, child_cr3, all_child)
            for tgfn, pmd_kva, _, _ in tables:  # clear_page_tables: pmd_clear, pte_free
                yield from kernel.set_pmd(cpu, pmd_kva, 0)
            yield (CR3, cpu, parent_cr3, 0, 0, "mov-cr3")
            # the parent writes: COW faults on the ptes fork write-protected
            pid = cpu + 1
            for i in cow:
                va, gpa = vaddrs[i], ptes[i]
                pte = mem.read_entry(gpa, pae)
                yield (STORE, cpu, va, 4, pid, "mov")
                if pte & 2:
                    continue
                ops, base = kernel.kmap(cpu, KM_PTE0, gpa >> 12)  # handle_mm_fault
                yield from ops
                pva = base + (gpa & 0xFFF)
                yield from kernel.read_pte(cpu, pva)
                pte = mem.read_entry(gpa, pae)
                yield from kernel.set_pte(cpu, pva, pte | 0x62)  # mkyoung|mkdirty|mkwrite
                yield (INVLPG, cpu, va, 0, 0, "invlpg")
                yield from kernel.kunmap(cpu, KM_PTE0, gpa >> 12)
                yield (STORE, cpu, va, 4, pid, "mov")


WORKLOAD = ForkExit
