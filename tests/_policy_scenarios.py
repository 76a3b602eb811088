"""Hand-built guests for the policies' golden tests: one process, one highmem user page table
with a few present, accessed ptes, and the per-CPU kmap slots of 2.4/2.6 i386."""

from __future__ import annotations

from dataclasses import dataclass

from bench import ops as O
from bench.guest import KM_PTE0, KM_PTE1, KM_PTE2, KMAP_PROT, Guest, Process
from bench.machine.shadow import ShadowMachine
from bench.registry import make_policy

USER_VA = 0x10000000
N_PTES = 8


@dataclass
class Kmap:
    guest: Guest
    proc: Process
    table: int  # gfn of the user page table
    ptes: list[int]  # gpas of its ptes, one per user page USER_VA + i * 4096

    def slot(self, km_type: int = KM_PTE2, cpu: int = 0) -> tuple[int, int]:
        idx = self.guest.kmap_slot(km_type, cpu)
        return self.guest.kmap_vaddr(idx), self.guest.kmap_pte_kvaddr(idx)

    def set_slot(self, gfn: int | None, km_type: int = KM_PTE2, cpu: int = 0,
                 clear_low_first: bool = True) -> list[tuple]:
        """set_pte (high half, then low under PAE) of the slot's fixmap pte to map ``gfn``, or
        pte_clear when ``gfn`` is None (2.6: low, then high)."""
        _, pte_kva = self.slot(km_type, cpu)
        value = 0 if gfn is None else (gfn << 12) | KMAP_PROT
        if not self.guest.pae:
            return [O.store(cpu, pte_kva, 4, value)]
        high = O.store(cpu, pte_kva + 4, 4, value >> 32)
        low = O.store(cpu, pte_kva, 4, value & 0xFFFFFFFF)
        return [low, high] if gfn is None and clear_low_first else [high, low]

    def warm_up(self) -> list[tuple]:
        """Touch every user page (the table is shadowed), then kmap the table through KM_PTE0 and
        btr pte 0 through it, so the fixmap table is shadowed too."""
        return self.touch_all() + self.set_slot(self.table, KM_PTE0) + [
            O.invlpg(0, self.slot(KM_PTE0)[0]), self.btr(0, KM_PTE0)]

    def btr(self, i: int, km_type: int = KM_PTE2, cpu: int = 0) -> tuple:
        """ptep_test_and_clear_young of pte i through the slot (which must map the table)."""
        vaddr, _ = self.slot(km_type, cpu)
        return O.btr(cpu, vaddr + (self.ptes[i] & 0xFFF), 5)

    def touch_all(self, cpu: int = 0) -> list[tuple]:
        """The process uses every page: the table is shadowed, its sptes present."""
        return [O.load(cpu, USER_VA + i * 4096) for i in range(N_PTES)]

    def machine(self, spec: str) -> ShadowMachine:
        return ShadowMachine(self.guest.mem, self.guest.mode, [self.proc.cr3], make_policy(spec))


def kmap_guest(pae: bool, cpus: int = 1) -> Kmap:
    guest = Guest(pae, highmem_pages=256, lowmem_pages=4096, cpus=cpus)
    proc = guest.new_process()
    ptes = [guest.set_pte_direct(proc, USER_VA + i * 4096, guest.alloc_high())
            for i in range(N_PTES)]
    return Kmap(guest, proc, ptes[0] >> 12, ptes)


def run(m: ShadowMachine, ops: list[tuple]) -> dict[str, int]:
    for op in ops:
        m.step(op)
    return m.counters.as_dict()


__all__ = ["KM_PTE0", "KM_PTE1", "KM_PTE2", "Kmap", "kmap_guest", "run", "USER_VA"]
