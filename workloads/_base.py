"""Parameters and the base class shared by the guest-kernel workloads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mypy_extensions import mypyc_attr

from bench.errors import BenchError
from bench.guest import MAX_CPUS
from bench.params import Param
from bench.workload import Workload
from workloads._kmap import KERNELS

HZ = 100
"""Guest timer frequency: RHEL3 i386 HZ=100 (MIN_AGING_INTERVAL = HZ/2 = 50 jiffies is 0.5 s,
domain.md 2.3)."""

KERNEL_PARAMS: dict[str, Param] = {
    "kernel": Param(str, "rhel3", "kmap_atomic/kunmap_atomic and pte_clear variant "
                    "(docs/workloads.md, Kernel variants)", choices=KERNELS),
    "debug_highmem": Param(bool, False, "CONFIG_DEBUG_HIGHMEM for kernel 2.6.12 (kunmap clears "
                           "the fixmap pte); use kernel rhel3-debug for RHEL3"),
    "pae": Param(bool, True, "PAE paging (8-byte ptes written as two 4-byte stores)"),
}

COMMON_PARAMS: dict[str, Param] = {
    "quick": Param(bool, False, "small default sizes (tests, --quick runs; sizes given "
                   "explicitly are kept)"),
    "cpus": Param(int, 1, "guest vCPUs (each has its own kmap slots)", minimum=1,
                  maximum=MAX_CPUS),
}


def whole_pages(mib: float) -> str | None:
    """Param check: a size in MiB that is a positive whole number of 4-KiB pages."""
    pages = mib * 256
    if pages <= 0:
        return "must be more than 0"
    if pages != int(pages):
        return "must be a whole number of 4-KiB pages (a multiple of 1/256 MiB)"
    return None


@mypyc_attr(allow_interpreted_subclasses=True)
class GuestWorkload(Workload):
    """A guest-kernel workload: the base validates the parameters; this adds the rules that tie
    two parameters together. The parameters of KERNEL_PARAMS and COMMON_PARAMS, which every
    guest-kernel workload takes, are declared here; each subclass declares its own."""

    kernel: str
    debug_highmem: bool
    pae: bool
    quick: bool
    cpus: int

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.debug_highmem and self.kernel != "2.6.12":
            raise BenchError(f"workload {self.name} parameter debug_highmem=True applies only to "
                             f"kernel 2.6.12, not {self.kernel!r} (use kernel rhel3-debug for RHEL3)")


def interleave_generators(gens: list) -> Iterator[tuple]:
    """One operation from each live generator in turn (CPU order): a deterministic SMP merge
    (a single generator is returned as it is)."""
    return gens[0] if len(gens) == 1 else _round_robin(gens)


def _round_robin(gens: list) -> Iterator[tuple]:
    gens = list(gens)
    while gens:
        live = []
        for g in gens:
            op = next(g, None)
            if op is not None:
                yield op
                live.append(g)
        gens = live
