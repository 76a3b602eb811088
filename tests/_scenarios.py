"""Small hand-built guests shared by the core tests."""

from __future__ import annotations

from dataclasses import dataclass

from bench import ops as O
from bench.guest import KM_PTE2, KMAP_PROT, Guest, Process

USER_VA = 0x10000000


@dataclass
class KmapScenario:
    guest: Guest
    proc: Process
    pte_gpa: int  # the user pte the kernel test_and_clears
    slot_vaddr: int
    slot_pte_kvaddr: int

    @property
    def table_gfn(self) -> int:
        return self.pte_gpa >> 12

    def kmap_2620(self, cpu: int = 0) -> list[tuple]:
        """2.6.20 kmap_atomic(table, KM_PTE2): set_pte, no flush (PAE: high half, then low)."""
        value = (self.table_gfn << 12) | KMAP_PROT
        if self.guest.pae:
            return [O.store(cpu, self.slot_pte_kvaddr + 4, 4, value >> 32),
                    O.store(cpu, self.slot_pte_kvaddr, 4, value & 0xFFFFFFFF)]
        return [O.store(cpu, self.slot_pte_kvaddr, 4, value)]

    def test_and_clear(self, cpu: int = 0) -> list[tuple]:
        """ptep_test_and_clear_young through the slot: lock btrl $5 on the pte's low word."""
        return [O.btr(cpu, self.slot_vaddr + (self.pte_gpa & 0xFFF), 5)]

    def kunmap_2620(self, cpu: int = 0) -> list[tuple]:
        """2.6.20 kunmap_atomic: kpte_clear_flush = pte_clear (PAE: low, then high) + invlpg."""
        if self.guest.pae:
            out = [O.store(cpu, self.slot_pte_kvaddr, 4, 0), O.store(cpu, self.slot_pte_kvaddr + 4, 4, 0)]
        else:
            out = [O.store(cpu, self.slot_pte_kvaddr, 4, 0)]
        return out + [O.invlpg(cpu, self.slot_vaddr)]

    def cycle(self) -> list[tuple]:
        return self.kmap_2620() + self.test_and_clear() + self.kunmap_2620()


def kmap_scenario(pae: bool) -> KmapScenario:
    guest = Guest(pae=pae, highmem_pages=1024, lowmem_pages=4096)
    proc = guest.new_process()
    data = guest.alloc_high()
    pte_gpa = guest.set_pte_direct(proc, USER_VA, data)
    slot = guest.kmap_slot(KM_PTE2, 0)
    return KmapScenario(guest, proc, pte_gpa, guest.kmap_vaddr(slot), guest.kmap_pte_kvaddr(slot))
