"""The guest kernel's page-table primitives, per kernel variant: set_pte, pte_clear, kmap_atomic.

Shared by every workload that maps page tables (domain.md 2.1-2.2; docs/rhel3-source-notes.md
sections 4-6). Each primitive returns the guest operations it executes as a tuple of plain
operation tuples (bench.ops layout), so a workload emits them with ``yield from``.

- ``set_pte``: non-PAE one 4-byte store; PAE ``pte_high`` then ``pte_low`` (R3
  include/asm-i386/pgtable-3level.h set_pte; 2.6 native_set_pte the same).
- ``pte_clear``: 2.4 / RHEL3 and 2.6.12 ``set_pte(ptep, __pte(0))``: high then low (R3
  pgtable.h pte_clear; torvalds/linux@1da177e4 include/asm-i386/pgtable-3level.h); 2.6.20 and the
  2008 proposal ``native_pte_clear`` (commit 6e5882cfa2, 2006): low then high.
- ``kmap_atomic`` / ``kunmap_atomic``: the table of domain.md 2.2, selected by ``kernel``:

  ============  =====================================================  ============================
  kernel        kmap_atomic (highmem page)                             kunmap_atomic
  ============  =====================================================  ============================
  rhel3         skip if the slot already holds this pte, else set+invlpg  nothing
  rhel3-debug   set_pte + invlpg                                       pte_clear + invlpg
  2.4           set_pte + invlpg                                       nothing
  2.6.12        set_pte + invlpg                                       pte_clear + invlpg only with
                                                                       debug_highmem
  2.6.20        set_pte (no flush)                                     pte_clear + invlpg (always)
  2.6-proposed  set_pte; invlpg only if the value changed              nothing
  ============  =====================================================  ============================

  (R3 include/asm-i386/atomic_kmap.h __kmap_atomic / __kunmap_atomic and highmem.h; 2.6.12
  torvalds/linux@1da177e4 arch/i386/mm/highmem.c; 2.6.20 f0eef253 arch/i386/mm/highmem.c with
  kpte_clear_flush; the proposal is the seed discussion's "making 2.6 at least as optimal as 2.4
  by never clearing the fixmap pte and by doing invlpg only after setting it to a new value":
  2.6's kmap_atomic keeps its unconditional set_pte, the flush moves from kunmap to kmap and is
  skipped when the pte did not change, and kunmap writes nothing. Unlike RHEL3's shortcut the
  write of an unchanged pte still happens, so it still traps.)
  A lowmem page is returned through the direct mapping and nothing is written (highmem.h
  kmap_atomic ``page < highmem_start_page``; kunmap returns early for addresses below the
  fixmap). The fixmap pte value is ``mk_pte(page, kmap_prot)`` with kmap_prot = P|RW|A|D|G
  (bench.guest.KMAP_PROT).

Instruction distances (bench.ops: consecutive operations are consecutive instructions unless a
COMPUTE gap says how many lie between; only Xen's batched emulation reads them): the two halves
of set_pte and pte_clear are adjacent stores (``smp_wmb()`` is a compiler barrier on i386
without CONFIG_X86_OOSTORE, R3 include/asm-i386/system.h), and so are a fixmap pte's set_pte
and its ``__flush_tlb_one``. Every kmap_atomic and kunmap_atomic that writes starts with a gap
of at least ``KMAP_GAP`` instructions: the inline code that computes the slot
(``type + KM_TYPE_NR * smp_processor_id()``: load current, load its cpu number, multiply, add),
its virtual address (``__fix_to_virt``: shift, subtract) and the pte value (``mk_pte``) or the
``vaddr < FIXADDR_START`` test. A pte loop (zap_pte_range, copy_pte_range) runs at least
``PTE_LOOP_GAP`` instructions between entries (advance ptep and the address, compare, branch,
test pte_none). The counts are lower bounds read off the C source, not a disassembly; any count
of 4 or more gives the same result under Xen's bound of four instructions.
"""

from __future__ import annotations

from bench.guest import KM_PTE0, KMAP_PROT, Guest
from bench.ops import COMPUTE, CR3, INVLPG, LOAD, STORE

KERNELS: tuple[str, ...] = ("rhel3", "rhel3-debug", "2.4", "2.6.12", "2.6.20", "2.6-proposed")

KMAP_GAP = 6
"""Instructions before a kmap_atomic's or kunmap_atomic's first store (lower bound; see above)."""

PTE_LOOP_GAP = 4
"""Instructions between two entries of a pte loop (lower bound; see above)."""

ZAP_BLOCK_PAGES = 256
"""ZAP_BLOCK_SIZE = 256 * PAGE_SIZE (R3 mm/memory.c, notes section 8): the mmu_gather is
finished (flush_tlb_range) once per block."""


class Kernel:
    """The primitives of one kernel variant on one guest (precomputed per kmap slot)."""

    def __init__(self, guest: Guest, kernel: str, debug_highmem: bool = False) -> None:
        self.guest = guest
        self.kernel = kernel
        self.pae = guest.pae
        self.mem = guest.mem
        self.esize = guest.mode.entry_size
        self.entries = guest.mode.entries
        self.lowmem_pages = guest.lowmem_pages
        self.skip_same = kernel == "rhel3"
        self.flush_if_changed = kernel == "2.6-proposed"
        self.map_flush = kernel != "2.6.20"
        self.unmap_clear = kernel in ("rhel3-debug", "2.6.20") or (kernel == "2.6.12"
                                                                  and debug_highmem)
        # native_pte_clear (low, then high) came with 6e5882cfa2 (2006); 2.6.12 still had
        # ``set_pte(ptep, __pte(0))`` (high first), like 2.4 (torvalds/linux@1da177e4
        # include/asm-i386/pgtable-3level.h)
        self.clear_low_first = kernel in ("2.6.20", "2.6-proposed")
        self._slots: dict[tuple[int, int], tuple[int, int, int, tuple, tuple]] = {}
        self._fns: dict[tuple[int, int], tuple] = {}

    # -- pte writes ------------------------------------------------------------------------------
    def gap(self, cpu: int, insns: int) -> tuple:
        """``insns`` instructions of other kernel code (bench.ops.gap)."""
        return ((COMPUTE, cpu, 0, 0, insns, "compute"),)

    def set_pte(self, cpu: int, kvaddr: int, value: int) -> tuple:
        """set_pte through the kernel virtual address ``kvaddr`` of the entry."""
        if self.pae:
            return ((STORE, cpu, kvaddr + 4, 4, value >> 32, "mov"),
                    (STORE, cpu, kvaddr, 4, value & 0xFFFFFFFF, "mov"))
        return ((STORE, cpu, kvaddr, 4, value, "mov"),)

    def pte_clear(self, cpu: int, kvaddr: int) -> tuple:
        """pte_clear: 2.4 writes high then low (set_pte(0)), 2.6 low then high."""
        if not self.pae:
            return ((STORE, cpu, kvaddr, 4, 0, "mov"),)
        if self.clear_low_first:
            return ((STORE, cpu, kvaddr, 4, 0, "mov"), (STORE, cpu, kvaddr + 4, 4, 0, "mov"))
        return ((STORE, cpu, kvaddr + 4, 4, 0, "mov"), (STORE, cpu, kvaddr, 4, 0, "mov"))

    def set_pmd(self, cpu: int, kvaddr: int, value: int) -> tuple:
        """set_pmd: PAE set_64bit (cmpxchg8b, 8 bytes); non-PAE a 4-byte store (2.4 pgtable-*level.h)."""
        if self.pae:
            return ((STORE, cpu, kvaddr, 8, value, "cmpxchg8b"),)
        return ((STORE, cpu, kvaddr, 4, value, "mov"),)

    # -- kmap slots ------------------------------------------------------------------------------
    def _slot(self, cpu: int, km_type: int) -> tuple[int, int, int, tuple, tuple]:
        key = (cpu, km_type)
        slot = self._slots.get(key)
        if slot is None:
            g = self.guest
            idx = g.kmap_slot(km_type, cpu)
            vaddr = g.kmap_vaddr(idx)
            pte_kva = g.kmap_pte_kvaddr(idx)
            flush = ((INVLPG, cpu, vaddr, 0, 0, "invlpg"),)
            clear = (self.gap(cpu, KMAP_GAP) + self.pte_clear(cpu, pte_kva) + flush
                     if self.unmap_clear else ())
            slot = (vaddr, pte_kva, g.kmap_pte_gpa(idx), flush, clear)
            self._slots[key] = slot
        return slot

    def kmap(self, cpu: int, km_type: int, gfn: int) -> tuple[tuple, int]:
        """kmap_atomic(page gfn, km_type) on ``cpu``: (operations, virtual address of the page).

        Under the same-value shortcut the fixmap pte is read from guest memory when this is
        called, so call it only after every earlier operation has been consumed.
        """
        if gfn < self.lowmem_pages:
            return (), self.guest.kvaddr(gfn << 12)
        vaddr, pte_kva, pte_gpa, flush, _ = self._slot(cpu, km_type)
        value = (gfn << 12) | KMAP_PROT
        if self.skip_same or self.flush_if_changed:
            same = self.mem.read_entry(pte_gpa, self.pae) == value
            if same and self.skip_same:
                return (), vaddr
        else:
            same = False
        ops = self.gap(cpu, KMAP_GAP) + self.set_pte(cpu, pte_kva, value)
        return (ops + flush if self.map_flush and not same else ops), vaddr

    def kmap_fn(self, cpu: int, km_type: int):
        """A fast ``gfn -> (operations, vaddr)`` for one slot, the same as kmap(cpu, km_type, gfn),
        and the slot's kunmap operations for a highmem page (hot loops)."""
        cached = self._fns.get((cpu, km_type))
        if cached is not None:
            return cached
        vaddr, pte_kva, pte_gpa, flush, clear = self._slot(cpu, km_type)
        lowmem, pae, mem = self.lowmem_pages, self.pae, self.mem
        skip_same, map_flush, set_pte, kvaddr = (self.skip_same, self.map_flush, self.set_pte,
                                                 self.guest.kvaddr)
        check_same = skip_same or self.flush_if_changed
        lead = self.gap(cpu, KMAP_GAP)

        def kmap(gfn: int) -> tuple[tuple, int]:
            if gfn < lowmem:
                return (), kvaddr(gfn << 12)
            value = (gfn << 12) | KMAP_PROT
            same = check_same and mem.read_entry(pte_gpa, pae) == value
            if same and skip_same:
                return (), vaddr
            ops = lead + set_pte(cpu, pte_kva, value)
            return (ops + flush if map_flush and not same else ops), vaddr

        self._fns[(cpu, km_type)] = (kmap, clear)
        return kmap, clear

    def kunmap(self, cpu: int, km_type: int, gfn: int) -> tuple:
        """kunmap_atomic(kvaddr, km_type) for a page mapped by kmap(cpu, km_type, gfn)."""
        if gfn < self.lowmem_pages:
            return ()
        return self._slot(cpu, km_type)[4]

    def pte_vaddr(self, cpu: int, km_type: int, pte_gpa: int) -> tuple[tuple, int]:
        """pte_offset_map-style: kmap the table holding ``pte_gpa``; (ops, vaddr of the pte)."""
        ops, base = self.kmap(cpu, km_type, pte_gpa >> 12)
        return ops, base + (pte_gpa & 0xFFF)

    # -- compound kernel paths -------------------------------------------------------------------
    def read_pte(self, cpu: int, vaddr: int) -> tuple:
        """``pte = *ptep``: one load of the whole pte (8 bytes under PAE)."""
        return ((LOAD, cpu, vaddr, 8 if self.pae else 4, 0, "mov"),)

    def zap_page_range(self, cpu: int, cr3: int, pte_gpas: list[int]):
        """zap_page_range over consecutive ptes starting at a ZAP_BLOCK boundary (R3 mm/memory.c
        zap_pte_range, include/asm-generic/tlb.h fast mode; notes section 8): per block and page
        table, pte_offset_map (kmap KM_PTE0), read every pte, pte_clear the non-none ones,
        pte_unmap; then tlb_finish_mmu's flush_tlb_range, a cr3 reload on i386 (the mm is
        current). A generator: it reads each pte from guest memory before clearing it."""
        mem, pae = self.mem, self.pae
        for start in range(0, len(pte_gpas), ZAP_BLOCK_PAGES):
            block = pte_gpas[start:start + ZAP_BLOCK_PAGES]
            i = 0
            while i < len(block):
                tgfn = block[i] >> 12
                ops, base = self.kmap(cpu, KM_PTE0, tgfn)
                yield from ops
                while i < len(block) and block[i] >> 12 == tgfn:
                    gpa = block[i]
                    va = base + (gpa & 0xFFF)
                    yield from self.gap(cpu, PTE_LOOP_GAP)
                    yield from self.read_pte(cpu, va)
                    if mem.read_entry(gpa, pae):
                        yield from self.pte_clear(cpu, va)
                    i += 1
                yield from self.kunmap(cpu, KM_PTE0, tgfn)
            yield (CR3, cpu, cr3, 0, 0, "mov-cr3")
