"""kmap: a microbenchmark of kmap_atomic + test_and_clear_bit + kunmap_atomic on user ptes.

Each iteration is one step of page_referenced on a PageDirect page's pte with the accessed bit
set (R3 mm/rmap.c; notes section 3): ``kmap_atomic(pte page, KM_PTE2)``, ``test_and_clear_bit(5,
ptep)`` (lock btrl), ``kunmap_atomic(KM_PTE2)``; then the process touches the page again (a user
load, whose walk sets the accessed bit back), so every btr clears a young pte of a page table
that is in use. ``tables=same`` visits the ptes of one page table in turn (kmap maps the same
page every time), ``tables=different`` a different page table each iteration (round robin over
``table_count`` tables). Iteration i runs on CPU i mod cpus, with that CPU's kmap slot.

The stream starts with a warm-up (every page touched once, then one round of iterations) that
ends with MARK 0, so the fixmap page table and the user page tables are already shadowed; the
measured iterations end with MARK 1. The fixmap writes each kernel variant costs per mapping
are in workloads/_kmap.py and docs/workloads.md.

With the native core the stream is generated in C (bench/core/generators.py kmap_stream, the
same operations and reads; this module's ``_ops`` is the reference).
"""

from __future__ import annotations

import random

from mypy_extensions import mypyc_attr

from bench.core.generators import Deferred, kmap_stream
from bench.guest import KM_PTE2, Guest
from bench.ops import BTR, LOAD, MARK
from bench.params import Param
from bench.workload import GuestRun
from workloads._base import COMMON_PARAMS, KERNEL_PARAMS, GuestWorkload
from workloads._kmap import Kernel
from workloads._mm import PRIVATE_BASE, PTE_FLAGS

PTES_PER_TABLE = 16
QUICK_ITERATIONS = 200


@mypyc_attr(allow_interpreted_subclasses=True)
class KmapBench(GuestWorkload):
    name = "kmap"
    summary = ("kmap_atomic(KM_PTE2) + test_and_clear_bit + kunmap_atomic per kernel variant "
               "(docs/workloads.md, Kernel variants)")
    params = {
        **KERNEL_PARAMS,
        **COMMON_PARAMS,
        "tables": Param(str, "different", "page table per iteration: the same one, or a "
                        "different one each time", choices=("same", "different")),
        "table_count": Param(int, 64, "page tables visited round robin with tables=different",
                             minimum=2, maximum=4096),
        "iterations": Param(int, 4000, "measured kmap/btr/kunmap iterations", minimum=1),
    }

    tables: str
    table_count: int
    iterations: int

    quick_sizes = {"iterations": QUICK_ITERATIONS}

    def build(self, rng: random.Random) -> GuestRun:
        ntables = 1 if self.tables == "same" else self.table_count
        iterations = self.iterations
        guest = Guest(self.pae, ntables * (PTES_PER_TABLE + 1) + 8, cpus=self.cpus)
        proc = guest.new_process()
        span = 1 << guest.mode.large_shift
        vaddrs, ptes = [], []
        for t in range(ntables):
            for k in range(PTES_PER_TABLE):
                vaddr = PRIVATE_BASE + t * span + k * 4096
                ptes.append(guest.set_pte_direct(proc, vaddr, guest.alloc_high(), PTE_FLAGS))
                vaddrs.append(vaddr)
        kernel = Kernel(guest, self.kernel, self.debug_highmem)
        sizes = {"pages": len(vaddrs), "page_tables": ntables, "processes": 1,
                 "iterations": iterations}
        cr3s = [proc.cr3] * self.cpus
        if type(self) is not KmapBench:  # a subclass may generate otherwise: its own _ops
            return GuestRun(guest, cr3s, self._ops(kernel, vaddrs, ptes, ntables, iterations),
                            sizes)
        return GuestRun(guest, cr3s, Deferred(
            lambda: kmap_stream(kernel, self.cpus, vaddrs, ptes, ntables, PTES_PER_TABLE,
                                iterations, sizes),
            lambda: self._ops(kernel, vaddrs, ptes, ntables, iterations)), sizes)

    def _ops(self, kernel: Kernel, vaddrs: list[int], ptes: list[int], ntables: int,
             iterations: int):
        cpus = self.cpus
        for vaddr in vaddrs:
            yield (LOAD, 0, vaddr, 4, 0, "mov")
        warm = ntables * PTES_PER_TABLE
        for i in range(warm + iterations):
            if i == warm:
                yield (MARK, 0, 0, 0, 0, "mark")
            t, k = (i % ntables, (i // ntables) % PTES_PER_TABLE)
            n = t * PTES_PER_TABLE + k
            cpu = i % cpus
            gpa = ptes[n]
            ops, va = kernel.pte_vaddr(cpu, KM_PTE2, gpa)
            yield from ops
            yield (BTR, cpu, va, 5, 0, "btr")
            yield from kernel.kunmap(cpu, KM_PTE2, gpa >> 12)
            yield (LOAD, cpu, vaddrs[n], 4, 0, "mov")
        yield (MARK, 0, 0, 1, 0, "mark")


WORKLOAD = KmapBench
