"""Small guests and random, TLB-coherent guest operation streams for the tdp and oracle tests.

The streams do what the kscand workloads do in miniature: user loads and stores, kmap of a user
page table through a per-CPU fixmap slot (set the slot pte, invlpg), test_and_clear_bit of
accessed bits through the slot, pte rewrites through the slot followed by an invlpg on every
CPU (a TLB shootdown), cr3 switches, kernel stores through the direct mapping. Every pte change
that could leave a stale translation is followed by an invlpg, as Linux does, so a TLB-based
executor must leave guest memory as native execution does, up to accessed/dirty bits.
"""

from __future__ import annotations

from bench.guest import KM_PTE0, KMAP_PROT, USER_PTE, Guest
from bench.machine.paging import A, D, RW
from bench import ops

USER_BASES = (0x08000000, 0x08400000)
"""Two 4-MiB-aligned user regions: two leaf page tables per process in both paging modes."""


class Scenario:
    """A booted guest with ``procs`` processes of ``pages`` user pages each."""

    def __init__(self, pae: bool, cpus: int = 2, procs: int = 2, pages: int = 6) -> None:
        self.guest = g = Guest(pae, highmem_pages=256, lowmem_pages=4096, cpus=cpus)
        self.procs = [g.new_process() for _ in range(procs)]
        self.vaddrs = [USER_BASES[i % 2] + (i // 2) * 0x1000 for i in range(pages)]
        self.frames = [g.alloc_high() for _ in range(pages + 4)]
        for proc in self.procs:
            for i, vaddr in enumerate(self.vaddrs):
                g.set_pte_direct(proc, vaddr, self.frames[i])
        self.data_kvaddr = g.kvaddr(g.alloc_low() << 12)  # a lowmem data page
        self.cr3s = [self.procs[0].cr3] * cpus
        self.esize = g.mode.entry_size

    def pte_index(self, vaddr: int) -> int:
        return (vaddr >> 12) & (self.guest.mode.entries - 1)

    def set_slot(self, cpu: int, gfn: int, out: list) -> int:
        """kmap_atomic(page, KM_PTE0) as 2.4 does it: set the fixmap pte, invlpg; the slot vaddr."""
        g = self.guest
        idx = g.kmap_slot(KM_PTE0, cpu)
        kva = g.kmap_pte_kvaddr(idx)
        value = (gfn << 12) | KMAP_PROT
        if g.pae:  # set_pte: high half, then low half
            out.append(ops.store(cpu, kva + 4, 4, value >> 32))
        out.append(ops.store(cpu, kva, 4, value & 0xFFFFFFFF))
        vaddr = g.kmap_vaddr(idx)
        out.append(ops.invlpg(cpu, vaddr))
        return vaddr

    def ops_from(self, actions: list[tuple[int, int, int, int]]) -> list[tuple]:
        """Turn drawn (action, cpu, page, variant) tuples into an operation list."""
        g = self.guest
        cpus = g.cpus
        current = [0] * cpus
        out: list[tuple] = []
        for action, cpu, page, variant in actions:
            cpu %= cpus
            page %= len(self.vaddrs)
            proc = self.procs[current[cpu]]
            vaddr = self.vaddrs[page]
            table = g.page_table_for(proc, vaddr, allocate=False)
            if action == 0:
                out.append(ops.load(cpu, vaddr + 4 * variant))
            elif action == 1:
                out.append(ops.store(cpu, vaddr + 4 * variant, 4, page * 16 + variant + 1))
            elif action == 2:  # page_referenced: kmap the table, test_and_clear_young
                slot = self.set_slot(cpu, table, out)
                out.append(ops.btr(cpu, slot + self.pte_index(vaddr) * self.esize, 5))
            elif action == 3:  # read the pte through the slot (pte_young)
                slot = self.set_slot(cpu, table, out)
                out.append(ops.load(cpu, slot + self.pte_index(vaddr) * self.esize))
            elif action == 4:  # rewrite the pte (remap, write-protect, clean or unmap), shootdown
                slot = self.set_slot(cpu, table, out)
                frame = self.frames[(page + variant) % len(self.frames)]
                flags = (USER_PTE | A | D, USER_PTE & ~RW | A, USER_PTE, 0)[variant]
                new = (frame << 12) | flags if flags else 0
                at = slot + self.pte_index(vaddr) * self.esize
                if g.pae:
                    out.append(ops.store(cpu, at + 4, 4, new >> 32))
                out.append(ops.store(cpu, at, 4, new & 0xFFFFFFFF))
                out.extend(ops.invlpg(c, vaddr) for c in range(cpus))
            elif action == 5:
                current[cpu] = variant % len(self.procs)
                out.append(ops.cr3(cpu, self.procs[current[cpu]].cr3))
            elif action == 6:
                out.append(ops.store(cpu, self.data_kvaddr + 4 * variant, 4, variant + 7))
            else:
                out.append(ops.compute(cpu, 10 + variant))
        return out


def masked_image(mem, tables: set[int], pae: bool) -> dict[int, int]:
    """Guest memory with the accessed and dirty bits of page-table entries masked."""
    out = {}
    for word, value in mem.image().items():
        if word >> 10 in tables and (not pae or word % 2 == 0):
            value &= ~(A | D)
        if value:
            out[word] = value
    return out
