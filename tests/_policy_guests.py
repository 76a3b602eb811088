"""Small random guests and operation streams for the policy tests (no workload modules).

A stream follows the rules a real guest kernel follows, because shadow paging (like a TLB) may
rely on them: after changing a present pte (a user pte, or a kmap fixmap pte) the kernel runs
invlpg for that address on every vCPU that has the address space loaded (flush_tlb_page, or the
single-CPU __flush_tlb_one for a per-CPU kmap slot) before using the new mapping; vCPUs that do
not have it loaded get a full flush at their next cr3 load. Clearing the accessed bit
(ptep_test_and_clear_young) is not followed by a flush, as in 2.4's page_referenced.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bench import ops as O
from bench.guest import KM_PTE0, KM_PTE2, KMAP_PROT, USER_PTE, Guest, Process
from bench.machine.paging import A, D, RW

USER_BASES = (0x08000000, 0x08200000, 0x08400000, 0x40000000)
"""User regions: two 2 MiB halves of one non-PAE table (both quadrants), another table, and
another PAE page directory."""


@dataclass
class RandomGuest:
    guest: Guest
    procs: list[Process]
    cr3s: list[int]
    vaddrs: dict[int, list[int]]  # pid -> user vaddrs that have a pte
    data: list[int]  # data gfns the kernel may map


def build_guest(rng: random.Random, pae: bool, cpus: int) -> RandomGuest:
    guest = Guest(pae, highmem_pages=rng.choice((48, 96)), lowmem_pages=4096, cpus=cpus,
                  highpte=rng.random() < 0.8)
    data = [guest.alloc_high() if rng.random() < 0.7 else guest.alloc_low() for _ in range(12)]
    procs = []
    vaddrs: dict[int, list[int]] = {}
    for _ in range(rng.randint(1, 3)):
        proc = guest.new_process()
        procs.append(proc)
        bases = rng.sample(USER_BASES, rng.randint(1, len(USER_BASES)))
        mine = []
        for base in bases:
            for i in range(rng.randint(1, 4)):
                vaddr = base + i * 0x1000
                flags = USER_PTE | (A if rng.random() < 0.8 else 0)
                if rng.random() < 0.15:
                    flags &= ~RW
                if rng.random() < 0.1:
                    flags = 0  # allocated table slot, pte not present
                guest.set_pte_direct(proc, vaddr, rng.choice(data), flags)
                mine.append(vaddr)
        vaddrs[proc.pid] = mine
    cr3s = [rng.choice(procs).cr3 for _ in range(cpus)]
    return RandomGuest(guest, procs, cr3s, vaddrs, data)


def random_ops(rng: random.Random, rg: RandomGuest, n: int) -> list[tuple]:
    """A stream of about ``n`` operations mixing user accesses, kmap/test_and_clear/kunmap
    sequences, kernel pte updates with their flushes, invlpg and cr3 loads."""
    guest = rg.guest
    pae = guest.pae
    cpus = guest.cpus
    cur = list(rg.cr3s)
    by_cr3 = {p.cr3: p for p in rg.procs}
    slots = {(cpu, t): guest.kmap_slot(t, cpu) for cpu in range(cpus) for t in (KM_PTE0, KM_PTE2)}
    mapped: dict[tuple[int, int], int] = {}  # (cpu, km type) -> table gfn the slot maps
    out: list[tuple] = []

    def set_pte(cpu: int, kvaddr: int, value: int, clear: bool) -> None:
        if not pae:
            out.append(O.store(cpu, kvaddr, 4, value))
        elif rng.random() < 0.2:
            out.append(O.store(cpu, kvaddr, 8, value, "cmpxchg8b"))
        elif clear:  # 2.6 native_pte_clear: low, then high
            out.append(O.store(cpu, kvaddr, 4, value & 0xFFFFFFFF))
            out.append(O.store(cpu, kvaddr + 4, 4, value >> 32))
        else:  # set_pte: high, then low
            out.append(O.store(cpu, kvaddr + 4, 4, value >> 32))
            out.append(O.store(cpu, kvaddr, 4, value & 0xFFFFFFFF))

    def flush_user(proc: Process, vaddr: int) -> None:
        for c in range(cpus):
            if cur[c] == proc.cr3:
                out.append(O.invlpg(c, vaddr))

    while len(out) < n:
        cpu = rng.randrange(cpus)
        proc = by_cr3[cur[cpu]]
        r = rng.random()
        if r < 0.3:  # user access
            vaddr = rng.choice(rg.vaddrs[proc.pid]) + 4 * rng.randrange(1024)
            if rng.random() < 0.5:
                out.append(O.load(cpu, vaddr))
            else:
                out.append(O.store(cpu, vaddr, 4, rng.getrandbits(32)))
        elif r < 0.75:  # kernel works on a user pte through a kmap slot
            target = rng.choice(rg.procs)
            vaddr = rng.choice(rg.vaddrs[target.pid])
            pte_gpa = guest.pte_gpa(target, vaddr, allocate=False)
            table = pte_gpa >> 12
            ktype = rng.choice((KM_PTE0, KM_PTE2))
            idx = slots[(cpu, ktype)]
            slot_va = guest.kmap_vaddr(idx)
            pte_kva = guest.kmap_pte_kvaddr(idx)
            if not guest.is_highmem(table):  # lowmem table: kmap returns the direct mapping
                pte_va = guest.kvaddr(pte_gpa)
            else:
                if mapped.get((cpu, ktype)) != table:  # RHEL3 non-debug skips an equal pte
                    set_pte(cpu, pte_kva, (table << 12) | KMAP_PROT, clear=False)
                    out.append(O.invlpg(cpu, slot_va))
                    mapped[(cpu, ktype)] = table
                pte_va = slot_va + (pte_gpa & 0xFFF)
            what = rng.random()
            if what < 0.55:
                out.append(O.btr(cpu, pte_va, 5))  # ptep_test_and_clear_young
            elif what < 0.65:
                out.append(O.load(cpu, pte_va))
            else:  # a new pte value (remap, clear, or write-protect), then the flush
                choice = rng.random()
                if choice < 0.4:
                    value = (rng.choice(rg.data) << 12) | USER_PTE | A | (D if rng.random() < .5 else 0)
                elif choice < 0.7:
                    value = 0
                else:
                    value = (rng.choice(rg.data) << 12) | (USER_PTE & ~RW) | A
                set_pte(cpu, pte_va, value, clear=value == 0)
                flush_user(target, vaddr)
            if guest.is_highmem(table) and rng.random() < 0.4:  # debug kunmap: clear + flush
                set_pte(cpu, pte_kva, 0, clear=True)
                out.append(O.invlpg(cpu, slot_va))
                mapped.pop((cpu, ktype), None)
        elif r < 0.85:
            vaddr = rng.choice(rg.vaddrs[proc.pid])
            out.append(O.invlpg(cpu, vaddr))
        elif r < 0.95:
            new = rng.choice(rg.procs)
            cur[cpu] = new.cr3
            out.append(O.cr3(cpu, new.cr3))
        else:  # a kernel store to a lowmem data page through the direct mapping
            out.append(O.store(cpu, guest.kvaddr(0x800000 + 4 * rng.randrange(4096)), 4,
                               rng.getrandbits(32)))
    return out


def memory_image(guest: Guest, mask_ad: bool) -> tuple[dict, dict]:
    """Guest memory as comparable values; with ``mask_ad``, A and D cleared in every word of
    every page-table page (PAE high words never hold bits 5-6 here: gfns are small)."""
    mem = guest.mem
    tables = {}
    for gfn, page in mem.tables.items():
        words = list(page)
        if mask_ad:
            words = [w & ~(A | D) for w in words]
        tables[gfn] = words
    return tables, dict(mem.words)
