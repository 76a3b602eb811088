"""demand-paging: a process faulting in fresh anonymous memory, the kernel writing new ptes.

Per CPU a process has a mapping of ``pages`` pages whose page tables exist but whose ptes are
none. It stores to its pages in the chosen access pattern; a store through a none pte is a guest
page fault (the operation has no effect), and the kernel's handler runs before the store is
retried (2.4-rmap handle_mm_fault -> handle_pte_fault -> do_anonymous_page, write access; R3
mm/memory.c, not in the notes):

- pte_offset_map (kmap_atomic KM_PTE0 of the page table) and ``entry = *pte``;
- do_anonymous_page: pte_unmap, alloc_page(GFP_HIGHUSER) and clear_user_highpage
  (kmap_atomic(KM_USER0) of the new page, a 4-KiB clear modelled as COMPUTE, kunmap), then
  pte_offset_map again, re-read the pte (pte_none check), set_pte(pte_mkwrite(pte_mkdirty(
  mk_pte(page, PAGE_SHARED)))) (PAGE_SHARED includes _PAGE_ACCESSED in 2.4 i386), pte_unmap.

After every round of ``pages * touches`` accesses the process munmaps the range
(zap_page_range: kmap KM_PTE0, read each pte, pte_clear the present ones, a cr3 reload per
ZAP_BLOCK) and starts over. Modelling choices: each page index gets the same data frame every
round (the allocator's LIFO free lists), the page tables are kept across rounds (the process
has another mapping in the same page-directory range, so free_pgtables frees none), and
clearing a page costs CLEAR_PAGE_CYCLES of pure compute.
"""

from __future__ import annotations

import random

from mypy_extensions import mypyc_attr

from bench.guest import KM_PTE0, Guest
from bench.ops import COMPUTE, STORE
from bench.params import Param
from bench.workload import GuestRun
from workloads._base import COMMON_PARAMS, KERNEL_PARAMS, GuestWorkload, interleave_generators
from workloads._kmap import Kernel
from workloads._mm import PRIVATE_BASE
from workloads._users import AccessStream, check_pattern, lackey_path, read_lackey
from workloads.fork_exit import KM_USER0

CLEAR_PAGE_CYCLES = 1024
"""clear_page of 4 KiB (rep stosl of 1024 words): about one cycle per word (an estimate)."""
NEW_PTE = 0x067
"""pte_mkwrite(pte_mkdirty(mk_pte(page, PAGE_SHARED))): P|RW|US|A|D."""
QUICK_PAGES = 512
QUICK_ROUNDS = 2


@mypyc_attr(allow_interpreted_subclasses=True)
class DemandPaging(GuestWorkload):
    name = "demand-paging"
    summary = ("anonymous write faults: do_anonymous_page writes new ptes through "
               "kmap_atomic(KM_PTE0), then munmap zaps them (R3 mm/memory.c)")
    params = {
        **KERNEL_PARAMS,
        **COMMON_PARAMS,
        "pages": Param(int, 4096, "pages in each process's mapping", minimum=1,
                       maximum=500000),
        "rounds": Param(int, 4, "fault-in / munmap rounds per CPU", minimum=1),
        "touches": Param(float, 2.0, "accesses per page per round", minimum=0.01,
                         maximum=1000.0),
        "pattern": Param(str, "sequential", "access pattern: uniform, zipf, sequential or "
                         "lackey:PATH", check=check_pattern,
                         input_file=lackey_path),
        "zipf_s": Param(float, 1.0, "zipf exponent", minimum=0.0, maximum=10.0),
    }

    pages: int
    rounds: int
    touches: float
    pattern: str
    zipf_s: float

    quick_sizes = {"pages": QUICK_PAGES, "rounds": QUICK_ROUNDS}

    def build(self, rng: random.Random) -> GuestRun:
        npages = self.pages
        rounds = self.rounds
        entries = 512 if self.pae else 1024
        ntables = -(-npages // entries)
        guest = Guest(self.pae, self.cpus * (npages + ntables) + 8, cpus=self.cpus)
        kernel = Kernel(guest, self.kernel, self.debug_highmem)
        trace = read_lackey(self.pattern[len("lackey:"):]) if self.pattern.startswith(
            "lackey:") else None
        gens, cr3s = [], []
        cache: dict = {}
        for cpu in range(self.cpus):
            proc = guest.new_process()
            vaddrs = [PRIVATE_BASE + i * 4096 for i in range(npages)]
            ptes = [guest.pte_gpa(proc, va) for va in vaddrs]  # tables allocated, ptes none
            frames = [guest.alloc_high() for _ in range(npages)]
            stream = AccessStream(self.pattern, random.Random(rng.getrandbits(64)), npages, 1.0,
                                  self.zipf_s, cpu / self.cpus, trace, cache)
            cr3s.append(proc.cr3)
            gens.append(self._cpu(kernel, cpu, proc.cr3, vaddrs, ptes, frames, stream, rounds,
                                  max(1, round(self.touches * npages))))
        sizes = {"pages": self.cpus * npages, "page_tables": self.cpus * ntables,
                 "processes": self.cpus, "rounds": rounds}
        ops = interleave_generators(gens)
        return GuestRun(guest, cr3s, ops, sizes)

    def _cpu(self, kernel: Kernel, cpu: int, cr3: int, vaddrs: list[int], ptes: list[int],
             frames: list[int], stream: AccessStream, rounds: int, accesses: int):
        mem, pae = kernel.mem, kernel.pae
        pid = cpu + 1
        for _ in range(rounds):
            for idx, off, _write in stream.take(accesses):
                va = vaddrs[idx] | off
                gpa = ptes[idx]
                present = mem.read_entry(gpa, pae) & 1
                yield (STORE, cpu, va, 4, pid, "mov")
                if present:
                    continue
                tgfn = gpa >> 12
                ops, base = kernel.kmap(cpu, KM_PTE0, tgfn)  # handle_mm_fault: pte_alloc_map
                yield from ops
                pva = base + (gpa & 0xFFF)
                yield from kernel.read_pte(cpu, pva)
                yield from kernel.kunmap(cpu, KM_PTE0, tgfn)  # do_anonymous_page: pte_unmap
                frame = frames[idx]
                ops, _ = kernel.kmap(cpu, KM_USER0, frame)  # clear_user_highpage
                yield from ops
                yield (COMPUTE, cpu, 0, CLEAR_PAGE_CYCLES, 0, "compute")
                yield from kernel.kunmap(cpu, KM_USER0, frame)
                ops, base = kernel.kmap(cpu, KM_PTE0, tgfn)  # pte_offset_map again
                yield from ops
                yield from kernel.read_pte(cpu, pva)
                yield from kernel.set_pte(cpu, pva, (frame << 12) | NEW_PTE)
                yield from kernel.kunmap(cpu, KM_PTE0, tgfn)
                yield (STORE, cpu, va, 4, pid, "mov")
            yield from kernel.zap_page_range(cpu, cr3, ptes)


WORKLOAD = DemandPaging
