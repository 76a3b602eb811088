"""What kscand and linear-scan share: parameters, guest construction, page_referenced on one pte,
and the jiffy timeline that runs the user processes around the kernel's scan passes."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from mypy_extensions import mypyc_attr

from bench.core.generators import Deferred, scan_stream
from bench.errors import BenchError
from bench.guest import KM_PTE2, Guest
from bench.ops import BTR, COMPUTE, LOAD, MARK
from bench.params import Param
from bench.workload import GuestRun
from workloads._base import COMMON_PARAMS, HZ, KERNEL_PARAMS, GuestWorkload, whole_pages
from workloads._kmap import Kernel
from workloads._mm import MAX_PROCESSES, UserMemory
from workloads._users import AccessStream, UserRunner, check_pattern, lackey_path, read_lackey

TIMESLICE = 10
"""Jiffies a process runs before the next process on its CPU (about the O(1) scheduler's nice-0
timeslice of 100 ms; a modelling choice)."""

QUICK_PAGES = 2048
QUICK_PROCESSES = 4
QUICK_SECONDS = 3.0
QUICK_RATE = 2000.0

SCAN_PARAMS: dict[str, Param] = {
    **KERNEL_PARAMS,
    **COMMON_PARAMS,
    "highmem_mib": Param(float, 1024.0, "highmem data pages the processes map (MiB; the user "
                         "page tables come on top)", check=whole_pages),
    "processes": Param(int, 8, "user processes", minimum=1, maximum=MAX_PROCESSES),
    "shared": Param(float, 0.1, "fraction of pages in shared segments (several mappings: "
                    "pte_chain pages)", minimum=0.0, maximum=1.0),
    "mappings": Param(int, 2, "mappings per shared page (processes sharing a segment)",
                      minimum=2, maximum=255),
    "pattern": Param(str, "zipf", "user access pattern: uniform, zipf, sequential or "
                     "lackey:PATH", check=check_pattern,
                     input_file=lackey_path),
    "zipf_s": Param(float, 1.0, "zipf exponent", minimum=0.0, maximum=10.0),
    "rate": Param(float, 40000.0, "user page accesses per CPU-second of guest time",
                  minimum=0.0),
    "write_fraction": Param(float, 0.25, "fraction of user accesses that are stores (not for "
                            "lackey, which has its own)", minimum=0.0, maximum=1.0),
    "seconds": Param(float, 2.0, "guest seconds to run", minimum=0.01, maximum=1e6),
}


@mypyc_attr(allow_interpreted_subclasses=True)
class ScanWorkload(GuestWorkload):
    """Base of kscand and linear-scan: the guest, the processes, and the timeline."""

    highmem_mib: float
    processes: int
    shared: float
    mappings: int
    pattern: str
    zipf_s: float
    rate: float
    write_fraction: float
    seconds: float

    quick_sizes = {"highmem_mib": QUICK_PAGES / 256, "processes": QUICK_PROCESSES,
                   "seconds": QUICK_SECONDS, "rate": QUICK_RATE}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        if self.mappings > self.processes and self.shared > 0:
            raise BenchError(f"workload {self.name} parameter mappings={self.mappings} is above "
                             f"processes={self.processes} (each mapping is another process)")

    # -- setup -------------------------------------------------------------------------------------
    def _sizes(self) -> tuple[int, int, float, float]:
        """quick=true has already shrunk the sizes not given (Workload.quick_sizes)."""
        return int(self.highmem_mib * 256), self.processes, self.seconds, self.rate

    def _setup(self, rng: random.Random):
        pages, procs, seconds, rate = self._sizes()
        mappings = min(self.mappings, procs)
        entries = 512 if self.pae else 1024
        ptes = pages + int(round(self.shared * pages)) * (mappings - 1)
        bound = ptes // entries + 2 * procs * (mappings + 2) + 8  # page tables, at most
        guest = Guest(self.pae, pages + bound, cpus=self.cpus)
        um = UserMemory(guest, rng, pages, procs, self.shared, mappings, self.cache_fraction())
        trace = read_lackey(self.pattern[len("lackey:"):]) if self.pattern.startswith(
            "lackey:") else None
        cdf_cache: dict = {}
        streams = [AccessStream(self.pattern, random.Random(rng.getrandbits(64)), len(va),
                                self.write_fraction, self.zipf_s, q / procs, trace, cdf_cache)
                   for q, va in enumerate(um.vaddrs)]
        cpus = self.cpus
        initial = [um.cr3s[c] if c < procs else guest.kernel_cr3 for c in range(cpus)]
        runner = UserRunner(um.cr3s, um.vaddrs, streams, cpus, rate, HZ, TIMESLICE, initial)
        kernel = Kernel(guest, self.kernel, self.debug_highmem)
        sizes = um.sizes()
        sizes["passes"] = 0
        sizes["jiffies"] = int(round(seconds * HZ))
        return guest, um, runner, kernel, initial, sizes

    def build(self, rng: random.Random) -> GuestRun:
        guest, um, runner, kernel, initial, sizes = self._setup(rng)
        scanner = self.scanner(um, kernel)
        self.last_scanner = scanner  # for inspection (tests)
        self.last_runner = runner
        return GuestRun(guest, initial, Deferred(
            lambda: scan_stream(self.cpus, scanner, runner, sizes),
            lambda: self._timeline(scanner, runner, sizes)), sizes)

    def scanner(self, um: UserMemory, kernel: Kernel) -> "Scanner":
        raise NotImplementedError

    def cache_fraction(self) -> float:
        """The fraction of the mapped pages that are page-cache pages (workloads._mm); only
        kscand keeps separate anon and cache lists, the other scans see no difference."""
        return 0.0

    def _timeline(self, scanner: "Scanner", runner: UserRunner, sizes: dict) -> Iterator[tuple]:
        """Jiffy by jiffy: every CPU runs its user process; a kernel pass on CPU 0 takes that
        jiffy of CPU 0, and the other CPUs' accesses of the jiffy are spread evenly over it.

        With the native core ``build`` hands out this very stream from C instead
        (bench.core.generators), decided when the stream is first iterated, so an inspection
        hook set after ``build`` still runs this generator."""
        cpus = self.cpus
        for jiffy in range(1, sizes["jiffies"] + 1):
            scan = scanner.wake(jiffy)
            if scan is not None and scanner.on_pass is not None:
                scanner.on_pass()
            if scan is None:
                lists = [runner.jiffy(c) for c in range(cpus)]
                if cpus == 1:
                    yield from lists[0]
                else:
                    yield from _interleave(lists)
                continue
            visits, total = scan
            others = [runner.jiffy(c) for c in range(1, cpus)]
            others = [lst for lst in others if lst]
            if not others:
                for ops in visits:
                    yield from ops
            else:
                done = [0] * len(others)
                for i, ops in enumerate(visits, 1):
                    yield from ops
                    for k, lst in enumerate(others):
                        due = min(len(lst), i * len(lst) // max(total, 1))
                        if due > done[k]:
                            yield from lst[done[k]:due]
                            done[k] = due
                for k, lst in enumerate(others):
                    yield from lst[done[k]:]
            sizes["passes"] += 1
            yield (MARK, 0, 0, sizes["passes"], 0, "mark")


VISIT_GAP = 6
"""Instructions between two page_referenced pte visits when the kmap writes nothing: at least the
loop step over the pte_chain (load the next pte_addr, test it) and the pte address computation
(a lower bound read off R3 mm/rmap.c; any count of 4 or more gives the same result under Xen's
four-instruction batch)."""


PassStart = tuple[Iterator[list[tuple]], int]
"""What ``Scanner.wake`` returns for a pass that starts: its visits (one list of operations per
pte) and about how many there are."""


@mypyc_attr(allow_interpreted_subclasses=True)
class Scanner:
    """The kernel side of a scan workload; ``wake(jiffy)`` is called every jiffy and returns
    None, or (visits, total) for a pass that starts now: ``visits`` yields one list of operations
    per pte visited, ``total`` estimates their number (to spread the other CPUs' work).
    With ``record`` set, ``visited`` collects (bucket, page) or (process, pte index) per visit;
    ``on_pass``, if set, is called as each pass starts (before its first visit). Both are for
    inspection (tests): the compiled class's methods cannot be wrapped on an instance."""

    record = False
    visited: list[tuple[int, int]]
    on_pass: Callable[[], object] | None = None

    def wake(self, jiffy: int) -> PassStart | None:
        raise NotImplementedError


def _interleave(lists: list[list[tuple]]) -> Iterator[tuple]:
    """Merge per-CPU operation lists one operation at a time, CPU 0 first."""
    longest = max(len(lst) for lst in lists)
    for i in range(longest):
        for lst in lists:
            if i < len(lst):
                yield lst[i]


def referenced_ops(kernel: Kernel, mem, gpa: int, chained: bool, out: list) -> bool:
    """page_referenced for one pte (R3 mm/rmap.c page_referenced; notes section 3), appending the
    operations to ``out``: rmap_ptep_map = kmap_atomic(pte page, KM_PTE2) under HIGHPTE, then
    for a PageDirect page read the pte and test_and_clear_bit(5) only if young, for a pte_chain
    mapping test_and_clear_bit(5) unconditionally; rmap_ptep_unmap = kunmap_atomic(KM_PTE2).

    The visit starts with a gap of at least VISIT_GAP instructions (the loop of
    page_referenced or scan_active_list between two ptes), and kunmap's pte_clear starts with
    its own (workloads._kmap): consecutive page_referenced calls are never adjacent instructions.

    Returns whether the pte was young. Reads guest memory: call it only when every earlier
    operation has been consumed (the operations it appends do not change the A bit before the
    btr, which is the last access to the pte)."""
    kmap, clear = kernel.kmap_fn(0, KM_PTE2)
    ops, base = kmap(gpa >> 12)
    if ops:
        out.extend(ops)  # (it starts with the kmap's own gap)
    else:
        out.append((COMPUTE, 0, 0, 0, VISIT_GAP, "compute"))
    va = base + (gpa & 0xFFF)
    young = mem.read32(gpa) & 0x20
    if chained:
        out.append((BTR, 0, va, 5, 0, "btr"))
    else:
        out.append((LOAD, 0, va, 4, 0, "mov"))
        if young:
            out.append((BTR, 0, va, 5, 0, "btr"))
    if clear and gpa >> 12 >= kernel.lowmem_pages:
        out.extend(clear)
    return bool(young)
