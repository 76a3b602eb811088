"""The guest kernel's memory layout: lowmem and highmem, kernel page tables, processes, fixmap.

Built directly into guest memory before a run (boot and process creation are not part of the
measured operation stream). The layout follows 2.4 i386 (R3 arch/i386/mm/init.c pagetable_init,
include/asm-i386/fixmap.h, pgalloc.h):

- lowmem is direct-mapped at PAGE_OFFSET (0xC0000000) with PSE large pages (4 MiB non-PAE,
  2 MiB PAE), at most 896 MiB; highmem pages have no permanent kernel mapping.
- non-PAE: each process has its own page directory (lowmem) whose kernel part (entries 768..1023)
  is copied from swapper_pg_dir, so kernel page tables are shared by every process.
- PAE: each process has a PDPT and three user PMD pages (lowmem, allocated at pgd_alloc); its
  fourth PDPT entry points to the one kernel PMD shared by every process.
- User page tables are allocated from highmem when HIGHPTE is on (CONFIG_HIGHPTE is forced on by
  HIGHMEM4G/64G in RHEL3, R3 arch/i386/config.in:229-238), else from lowmem.
- The fixmap sits below FIXADDR_TOP (0xFFFFE000): ``__fix_to_virt(x) = FIXADDR_TOP - (x << 12)``;
  the per-CPU kmap slot of type t on cpu c is fixmap index FIX_KMAP_BEGIN + t + KM_TYPE_NR * c,
  and its pte is ``kmap_pte - idx`` in the kernel page table that maps the top of the address
  space (allocated from lowmem at boot by fixrange_init).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.errors import BenchError
from bench.machine.memory import PAGE_SHIFT, GuestMemory
from bench.machine.paging import A, D, G, Mode, P, PS, RW, US, mode_for
from bench.ops import PAGE_OFFSET

LOWMEM_MAX = 896 << 20
FIXADDR_TOP = 0xFFFFE000
FIX_KMAP_BEGIN = 16
"""Fixmap index of the first kmap slot. The real index depends on the configuration (APIC and
IO-APIC slots come first); what matters for the model is that every slot's pte lies in the one
kernel page table that maps the top of the address space, which holds for any real config."""

KM_PTE0, KM_PTE1, KM_PTE2 = 28, 29, 30
KM_TYPE_NR = 34
"""enum km_type in 2.4.21-EL (R3 include/asm-i386/kmap_types.h; docs/rhel3-source-notes.md 4):
KM_PTE0/1/2 are 28/29/30 and KM_TYPE_NR is 34."""
MAX_CPUS = 8
"""Every kmap slot of up to 8 CPUs (8 * 34 slots) lies in the fixmap's one page table."""

KERNEL_PDE = P | RW | A | D  # _KERNPG_TABLE
USER_PDE = P | RW | US | A | D  # _PAGE_TABLE
KERNEL_LARGE = P | RW | A | D | PS | G
KMAP_PROT = P | RW | A | D | G
"""kmap_prot = PAGE_KERNEL, which includes _PAGE_ACCESSED and _PAGE_DIRTY (and _PAGE_GLOBAL with
PGE), so the walker never needs to set A or D in a kmap fixmap pte."""
USER_PTE = P | RW | US


@dataclass
class Process:
    """A user address space: its cr3 and the page tables the kernel allocated for it."""

    pid: int
    cr3: int
    directories: list[int]  # gfns of the page directory (non-PAE) or the three user PMDs (PAE)
    page_tables: dict[int, int] = field(default_factory=dict)  # directory index -> pt gfn


class Guest:
    """Guest physical memory plus the kernel's view of it (allocators, processes, fixmap)."""

    def __init__(self, pae: bool, highmem_pages: int, lowmem_pages: int | None = None,
                 cpus: int = 1, highpte: bool = True, kernel_tables: bool = True) -> None:
        """``kernel_tables`` False boots no kernel: memory starts empty and the caller lays out
        the tables (a recorded guest's, bench.record.replay); the fixmap helpers then do not
        apply."""
        if not 1 <= cpus <= MAX_CPUS:
            raise BenchError(f"cpus must be 1..{MAX_CPUS}, got {cpus}")
        if highmem_pages < 0:
            raise BenchError(f"highmem pages must not be negative, got {highmem_pages}")
        if lowmem_pages is None:
            lowmem_pages = LOWMEM_MAX >> PAGE_SHIFT
        if not 4096 <= lowmem_pages <= LOWMEM_MAX >> PAGE_SHIFT:
            raise BenchError(f"lowmem must be 16..896 MiB, got {lowmem_pages * 4 // 1024} MiB")
        self.mode: Mode = mode_for(pae)
        self.pae = pae
        self.cpus = cpus
        self.highpte = highpte
        self.mem = GuestMemory()
        self.lowmem_pages = lowmem_pages
        self.highmem_pages = highmem_pages
        self._next_low = 0x400  # the first 4 MiB hold the kernel image
        self._next_high = lowmem_pages
        self.processes: list[Process] = []
        if kernel_tables:
            self._build_kernel_tables()

    # -- allocation ----------------------------------------------------------------------------
    def alloc_low(self) -> int:
        gfn = self._next_low
        if gfn >= self.lowmem_pages:
            raise BenchError("guest lowmem exhausted; raise lowmem or lower the guest size")
        self._next_low += 1
        return gfn

    def alloc_high(self) -> int:
        gfn = self._next_high
        if gfn >= self.lowmem_pages + self.highmem_pages:
            raise BenchError("guest highmem exhausted; raise highmem or lower the load")
        self._next_high += 1
        return gfn

    def alloc_high_run(self, n: int) -> int:
        """``n`` consecutive highmem pages (``n`` alloc_high calls in a row); the first gfn."""
        gfn = self._next_high
        if gfn + n > self.lowmem_pages + self.highmem_pages:
            raise BenchError("guest highmem exhausted; raise highmem or lower the load")
        self._next_high += n
        return gfn

    def alloc_table(self) -> int:
        """A page for a page table (cleared, as pte_alloc_one/pgd_alloc do)."""
        gfn = self.alloc_low()
        self.mem.add_table_page(gfn)
        return gfn

    def alloc_pte_table(self) -> int:
        """A user page table: highmem under HIGHPTE (pte_alloc_one with __GFP_HIGHMEM)."""
        gfn = self.alloc_high() if self.highpte and self.highmem_pages else self.alloc_low()
        self.mem.add_table_page(gfn)
        return gfn

    def is_highmem(self, gfn: int) -> bool:
        return gfn >= self.lowmem_pages

    @staticmethod
    def kvaddr(gpa: int) -> int:
        """The kernel virtual address of a lowmem gpa (the direct mapping)."""
        return PAGE_OFFSET + gpa

    # -- kernel tables ---------------------------------------------------------------------------
    def _build_kernel_tables(self) -> None:
        mode = self.mode
        mem = self.mem
        large_pages = self.lowmem_pages >> (mode.large_shift - PAGE_SHIFT)
        if self.pae:
            self.swapper_pgd = self.alloc_table()  # the PDPT
            self.kernel_pmd = self.alloc_table()
            for i in range(3):
                mem.write_entry((self.swapper_pgd << 12) + 8 * i, True, 0)
            mem.write_entry((self.swapper_pgd << 12) + 24, True, (self.kernel_pmd << 12) | P)
            kdir, kbase = self.kernel_pmd, 0
        else:
            self.swapper_pgd = self.alloc_table()
            self.kernel_pmd = self.swapper_pgd
            kdir, kbase = self.swapper_pgd, PAGE_OFFSET >> 22
        esize = mode.entry_size
        for i in range(large_pages):
            phys = i << mode.large_shift
            mem.write_entry((kdir << 12) + (kbase + i) * esize, self.pae, phys | KERNEL_LARGE)
        self.fixmap_pt = self.alloc_table()
        fix_index = (FIXADDR_TOP >> mode.large_shift) & (mode.entries - 1)
        mem.write_entry((kdir << 12) + fix_index * esize, self.pae,
                        (self.fixmap_pt << 12) | KERNEL_PDE)
        self.kernel_cr3 = self.swapper_pgd << 12

    # -- fixmap / kmap slots ---------------------------------------------------------------------
    def kmap_slot(self, km_type: int, cpu: int) -> int:
        """idx = type + KM_TYPE_NR * smp_processor_id()."""
        if not 0 <= cpu < self.cpus:
            raise BenchError(f"cpu {cpu} out of range 0..{self.cpus - 1}")
        return km_type + KM_TYPE_NR * cpu

    def kmap_vaddr(self, idx: int) -> int:
        """__fix_to_virt(FIX_KMAP_BEGIN + idx)."""
        return FIXADDR_TOP - ((FIX_KMAP_BEGIN + idx) << PAGE_SHIFT)

    def kmap_pte_gpa(self, idx: int) -> int:
        """The gpa of the fixmap pte for slot ``idx`` (``kmap_pte - idx``)."""
        vaddr = self.kmap_vaddr(idx)
        return (self.fixmap_pt << 12) + ((vaddr >> 12) & (self.mode.entries - 1)) * self.mode.entry_size

    def kmap_pte_kvaddr(self, idx: int) -> int:
        """The kernel virtual address through which the kernel writes that fixmap pte."""
        return self.kvaddr(self.kmap_pte_gpa(idx))

    # -- processes -------------------------------------------------------------------------------
    def new_process(self) -> Process:
        """pgd_alloc: a new address space sharing the kernel part (2.4 i386 pgalloc.h)."""
        mem = self.mem
        pid = len(self.processes) + 1
        if self.pae:
            pdpt = self.alloc_table()
            pmds = [self.alloc_table() for _ in range(3)]
            for i, pmd in enumerate(pmds):
                mem.write_entry((pdpt << 12) + 8 * i, True, (pmd << 12) | P)
            mem.write_entry((pdpt << 12) + 24, True, (self.kernel_pmd << 12) | P)
            proc = Process(pid, pdpt << 12, pmds)
        else:
            pgd = self.alloc_table()
            src, dst = self.mem.tables[self.swapper_pgd], self.mem.tables[pgd]
            dst[768:1024] = src[768:1024]
            proc = Process(pid, pgd << 12, [pgd])
        self.processes.append(proc)
        return proc

    def _directory_slot(self, proc: Process, vaddr: int) -> tuple[int, int]:
        """(gfn of the page directory holding vaddr's entry, index in it) for a user vaddr."""
        if vaddr >= PAGE_OFFSET:
            raise BenchError(f"user address {vaddr:#x} is not below PAGE_OFFSET")
        if self.pae:
            return proc.directories[vaddr >> 30], (vaddr >> 21) & 0x1FF
        return proc.directories[0], vaddr >> 22

    def page_table_for(self, proc: Process, vaddr: int, allocate: bool = True) -> int | None:
        """The gfn of the user page table covering ``vaddr`` (pte_alloc at setup time)."""
        key = vaddr >> self.mode.large_shift
        gfn = proc.page_tables.get(key)
        if gfn is None and allocate:
            gfn = self.alloc_pte_table()
            dgfn, index = self._directory_slot(proc, vaddr)
            self.mem.write_entry((dgfn << 12) + index * self.mode.entry_size, self.pae,
                                 (gfn << 12) | USER_PDE)
            proc.page_tables[key] = gfn
        return gfn

    def pte_gpa(self, proc: Process, vaddr: int, allocate: bool = True) -> int:
        """The gpa of the user pte mapping ``vaddr`` in ``proc``."""
        gfn = self.page_table_for(proc, vaddr, allocate)
        if gfn is None:
            raise BenchError(f"no page table for {vaddr:#x} in process {proc.pid}")
        mode = self.mode
        return (gfn << 12) + ((vaddr >> 12) & (mode.entries - 1)) * mode.entry_size

    def set_pte_direct(self, proc: Process, vaddr: int, gfn: int, flags: int = USER_PTE | A) -> int:
        """Write a user pte at setup time (no operation, no trap); returns its gpa."""
        gpa = self.pte_gpa(proc, vaddr)
        self.mem.write_entry(gpa, self.pae, (gfn << 12) | flags)
        return gpa
