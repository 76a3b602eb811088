"""linear-scan: the discussion's test case that did not reproduce the problem.

The same accessed-bit scan as kscand (page_referenced's per-pte work: kmap_atomic(pte page,
KM_PTE2), read the pte and test_and_clear_bit(5) only if young for a page with one mapping,
test_and_clear_bit unconditionally for a mapping of a shared page, kunmap_atomic; R3 mm/rmap.c,
notes section 3), but visiting every pte of every process in virtual-address order, process by
process, instead of in LRU order: consecutive ptes share a page table, which is the access
pattern a flood detector or an unshadow-on-scan policy is built for (seed discussion: "with
the linear-scan test case I can't reproduce the problem").

Modelling choice: a full pass every ``interval`` guest seconds, the first at 0.5 s (kscand's
first wakeup); the processes, their pages and their accesses are those of kscand.
"""

from __future__ import annotations

from collections.abc import Iterator

from mypy_extensions import mypyc_attr

from bench.params import Param
from workloads._kmap import Kernel
from workloads._mm import UserMemory
from workloads._scan import (HZ, SCAN_PARAMS, PassStart, Scanner, ScanWorkload,
                             referenced_ops)


@mypyc_attr(allow_interpreted_subclasses=True)
class LinearScan(ScanWorkload):
    name = "linear-scan"
    summary = ("accessed-bit scan of every pte in virtual-address order through "
               "kmap_atomic(KM_PTE2) (the discussion's linear-scan test case)")
    params = {
        **SCAN_PARAMS,
        "interval": Param(float, 1.0, "guest seconds between passes", minimum=0.01),
    }

    interval: float

    def scanner(self, um: UserMemory, kernel: Kernel) -> "AddressOrderScanner":
        return AddressOrderScanner(um, kernel, max(1, round(self.interval * HZ)))


class AddressOrderScanner(Scanner):
    def __init__(self, um: UserMemory, kernel: Kernel, interval: int) -> None:
        self.um = um
        self.kernel = kernel
        self.interval = interval
        self.first = HZ // 2
        self.visited: list[tuple[int, int]] = []

    def wake(self, jiffy: int) -> PassStart | None:
        if jiffy < self.first or (jiffy - self.first) % self.interval:
            return None
        return self._pass(), sum(len(p) for p in self.um.ptes)

    def _pass(self) -> Iterator[list[tuple]]:
        kernel = self.kernel
        mem = kernel.mem
        record = self.record
        visited = self.visited
        for q, ptes in enumerate(self.um.ptes):
            shared_from = self.um.shared_from[q]
            for i, gpa in enumerate(ptes):
                if record:
                    visited.append((q, i))
                ops: list[tuple] = []
                referenced_ops(kernel, mem, gpa, i >= shared_from, ops)
                yield ops


WORKLOAD = LinearScan
