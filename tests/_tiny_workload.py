"""A tiny in-test workload ("tiny"), so harness tests need none of the real workloads.

A kscand-like loop over a handful of user pages: each pass loads every page and clears the
accessed bit of its pte through the kernel's direct mapping (the page table is in lowmem), then
MARKs the end of the pass. ``install()`` registers it in bench.registry for this process (and so
for forked workers); ``main()`` does that and runs the CLI (used by subprocess tests).
"""

from __future__ import annotations

import os
import random
import sys

import bench.registry as registry
from bench.guest import Guest
from bench.ops import btr, compute, cr3, load, mark, store
from bench.params import Param
from bench.policy import Decision, Policy
from bench.workload import GuestRun, Workload

USER_BASE = 0x10000000


class Tiny(Workload):
    name = "tiny"
    summary = "test-only: scan a few user ptes' accessed bits through the direct mapping"
    params = {
        "pages": Param(int, 6, "user pages mapped", minimum=1, maximum=512),
        "passes": Param(int, 4, "scan passes", minimum=1),
        "quick": Param(bool, False, "shrink to 2 passes"),
        "pae": Param(bool, False, "PAE paging"),
    }
    quick_sizes = {"passes": 2}

    def build(self, rng: random.Random) -> GuestRun:
        guest = Guest(pae=self.pae, highmem_pages=0, lowmem_pages=4096, cpus=1, highpte=False)
        proc = guest.new_process()
        ptes = [guest.set_pte_direct(proc, USER_BASE + i * 4096, 0x800 + i)
                for i in range(self.pages)]
        passes = self.passes
        sizes = {"pages": self.pages, "page_tables": len(proc.page_tables), "passes": 0}

        def ops():
            yield cr3(0, proc.cr3)
            for p in range(passes):
                for i, gpa in enumerate(ptes):
                    if rng.random() < 0.7:
                        yield load(0, USER_BASE + i * 4096)
                    yield btr(0, guest.kvaddr(gpa), 5)
                    if rng.random() < 0.3:
                        yield store(0, USER_BASE + i * 4096 + 8, 4, p + 1)
                yield compute(0, 5000)
                sizes["passes"] = p + 1
                yield mark(0, p)

        return GuestRun(guest, [proc.cr3], ops(), sizes)


class Slow(Tiny):
    """Like tiny, but long enough that a run can be interrupted part way."""

    name = "tiny-slow"
    summary = "test-only: tiny with many passes"
    params = {**Tiny.params, "passes": Param(int, 3000, "scan passes", minimum=1)}


class Raising(Policy):
    """A policy with a bug: it raises at its ``after``-th trapping write."""

    name = "tiny-raise"
    summary = "test-only: raises ZeroDivisionError at a trapping write"
    params = {"after": Param(int, 0, "trapping writes answered before it raises", minimum=0)}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.seen = 0

    def on_write_fault(self, fault) -> Decision:
        if self.seen >= self.after:
            return Decision(1 // 0)
        self.seen += 1
        return Decision.EMULATE


def merged_policies(original):
    merged: dict = {}

    def policies():
        if not merged:
            merged.update(original())
            merged[Raising.name] = Raising
        return merged

    return policies


def merged_workloads(original):
    """A registry function returning ``original()``'s workloads plus the test workloads."""
    merged: dict = {}

    def workloads():
        if not merged:
            try:
                merged.update(original())
            except Exception:  # another engineer's module mid-edit must not break these tests
                pass
            merged.update({Tiny.name: Tiny, Slow.name: Slow})
        return merged

    return workloads


def patch(monkeypatch) -> None:
    """Register the test workloads for one test (pytest's monkeypatch undoes it)."""
    monkeypatch.setattr(registry, "workloads", merged_workloads(registry.workloads))
    monkeypatch.setattr(registry, "policies", merged_policies(registry.policies))


def install() -> None:
    """Add the test workloads to the registry of this process (idempotent)."""
    if getattr(registry, "_tiny_installed", False):
        return
    registry.workloads = merged_workloads(registry.workloads)
    registry.policies = merged_policies(registry.policies)
    registry._tiny_installed = True


def main() -> int:
    install()
    from bench.__main__ import main as bench_main

    if os.environ.get("TINY_NO_CHARTS"):  # tests that do not look at charts skip drawing them
        import bench.plots

        bench.plots.write_charts = lambda doc, folder, jobs=1: []

    return bench_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())


def dask_setup(worker=None) -> None:
    """Dask worker preload hook (``DASK_DISTRIBUTED__WORKER__PRELOAD``): the test workloads in a
    Dask worker process."""
    install()
