"""The guest workloads: kscand's visit order, linear-scan's address order, determinism,
guest memory identical under every executor, and parameter validation."""

from __future__ import annotations

import random

import pytest

from bench.errors import BenchError
from bench.machine.native import NativeMachine
from bench.machine.paging import walk
from bench.machine.shadow import ShadowMachine
from bench.ops import BTR, LOAD, MARK, PAGE_OFFSET
from bench.registry import make_policy, make_workload, workloads

QUICK = {"quick": True}
ALL = ["kscand", "linear-scan", "kmap", "fork-exit", "demand-paging"]


def native_ops(name: str, params: dict, seed: int = 1):
    """Run a workload natively; return (run, machine, ops as executed)."""
    w = make_workload(name, params)
    run = w.build(random.Random(seed))
    m = NativeMachine(run.guest.mem, run.guest.mode, run.cr3s)
    seen = []
    for op in run.ops:
        seen.append(op)
        m.step(op)
    return w, run, m, seen


def test_all_registered() -> None:
    assert set(ALL) <= set(workloads())


# -- kscand ---------------------------------------------------------------------------------------
def test_kscand_visits_each_page_of_the_scanned_buckets_once_in_bucket_order() -> None:
    w = make_workload("kscand", {**QUICK, "cpus": 2})
    run = w.build(random.Random(3))
    zone = w.last_scanner
    zone.record = True
    expected: list[list[tuple[int, int]]] = []
    starts: list[int] = []
    wake = zone.wake

    def spy(jiffy):
        result = wake(jiffy)
        if result is not None:
            starts.append(len(zone.visited))
            expected.append([(b, p) for b in range(14, -1, -1) for p in zone.bucket(b)])
        return result

    zone.wake = spy
    NativeMachine(run.guest.mem, run.guest.mode, run.cr3s).run(run.ops)
    assert len(expected) == run.sizes["passes"] >= 2
    bounds = starts + [len(zone.visited)]
    for i, want in enumerate(expected):
        got = zone.visited[bounds[i]:bounds[i + 1]]
        assert got == want
        assert len({p for _, p in got}) == len(got)


def test_kscand_btr_on_every_mapping_of_a_shared_page() -> None:
    w = make_workload("kscand", {**QUICK, "shared": 0.5, "mappings": 3, "processes": 4})
    run = w.build(random.Random(2))
    zone = w.last_scanner
    zone.record = True
    um = zone.um
    m = NativeMachine(run.guest.mem, run.guest.mode, run.cr3s)
    btr_gpas: list[list[int]] = [[]]
    for op in run.ops:
        kind, cpu, addr = op[0], op[1], op[2]
        if kind == BTR and addr >= PAGE_OFFSET:
            wk = walk(m.mem, m.mode, m.cr3[cpu], addr, True, False, set_bits=False)
            btr_gpas[-1].append((wk.gfn << 12) | (addr & 0xFFF))
        elif kind == MARK:
            btr_gpas.append([])
        m.step(op)
    shared_visits = [p for _, p in zone.visited if p < um.shared_pages]
    assert shared_visits
    chain_btrs = [g for per_pass in btr_gpas for g in per_pass if g in set(um.chain)]
    expected = [um.chain[p * 3 + t] for p in shared_visits for t in range(3)]
    assert chain_btrs == expected


def test_kscand_direct_page_btr_only_if_young() -> None:
    """Without shared pages every kernel btr follows a pte read, and only young ptes get one."""
    _, run, m, ops = native_ops("kscand", {**QUICK, "shared": 0.0})
    kernel_loads = sum(1 for op in ops if op[0] == LOAD and op[2] >= PAGE_OFFSET)
    kernel_btrs = sum(1 for op in ops if op[0] == BTR)
    assert 0 < kernel_btrs < kernel_loads


# -- linear-scan ------------------------------------------------------------------------------------
def test_linear_scan_visits_ptes_in_address_order() -> None:
    w = make_workload("linear-scan", {**QUICK, "kernel": "2.6.20"})
    run = w.build(random.Random(5))
    um = w.last_scanner.um
    m = NativeMachine(run.guest.mem, run.guest.mode, run.cr3s)
    passes: list[list[int]] = [[]]
    for op in run.ops:
        kind, cpu, addr = op[0], op[1], op[2]
        if kind in (LOAD, BTR) and addr >= PAGE_OFFSET:
            wk = walk(m.mem, m.mode, m.cr3[cpu], addr, False, False, set_bits=False)
            gpa = (wk.gfn << 12) | (addr & 0xFFF)
            if not passes[-1] or passes[-1][-1] != gpa:
                passes[-1].append(gpa)
        elif kind == MARK:
            passes.append([])
        m.step(op)
    want = [gpa for ptes in um.ptes for gpa in ptes]
    full = [p for p in passes if p]
    assert len(full) == run.sizes["passes"] >= 2
    for got in full:
        assert got == want
    vaddrs = [list(v) for v in um.vaddrs]
    assert all(v == sorted(v) for v in vaddrs)


# -- determinism and executors ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_stream(name: str) -> None:
    _, _, _, a = native_ops(name, {**QUICK, "cpus": 2}, seed=7)
    _, _, _, b = native_ops(name, {**QUICK, "cpus": 2}, seed=7)
    assert a == b and len(a) > 100


def test_different_seed_different_stream() -> None:
    _, _, _, a = native_ops("kscand", QUICK, seed=1)
    _, _, _, b = native_ops("kscand", QUICK, seed=2)
    assert a != b


CASES = [(name, {}) for name in ALL] + [
    ("kscand", {"cpus": 3, "pae": False, "kernel": "2.6.20"}),
    ("linear-scan", {"cpus": 2, "kernel": "rhel3-debug", "pattern": "uniform"}),
    ("kmap", {"tables": "same", "kernel": "2.6.12", "debug_highmem": True}),
    ("fork-exit", {"cpus": 2, "pae": False, "kernel": "2.6.20"}),
    ("demand-paging", {"cpus": 2, "kernel": "2.4", "pattern": "zipf"}),
]


def image_after(name: str, params: dict, policy: str | None) -> dict[int, int]:
    run = make_workload(name, params).build(random.Random(11))
    if policy is None:
        NativeMachine(run.guest.mem, run.guest.mode, run.cr3s).run(run.ops)
    else:
        ShadowMachine(run.guest.mem, run.guest.mode, run.cr3s, make_policy(policy)).run(run.ops)
    return run.guest.mem.image()


@pytest.mark.parametrize("name,extra", CASES)
@pytest.mark.parametrize("policy", [
    "always-emulate", "always-unshadow"])
def test_guest_memory_same_native_and_shadow(name: str, extra: dict, policy: str) -> None:
    params = {**QUICK, **extra}
    assert image_after(name, params, None) == image_after(name, params, policy)


def test_kscand_default_sizes() -> None:
    w = make_workload("kscand", {})
    assert int(w.highmem_mib * 256) == 262144 and w.pae and w.kernel == "rhel3"


# -- validation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params,words", [
    ("kscand", {"highmem_mib": 0}, "highmem_mib"),
    ("kscand", {"highmem_mib": 1.001}, "whole number of 4-KiB pages"),
    ("kscand", {"kernel": "2.5"}, "kernel"),
    ("kscand", {"cpus": 9}, "cpus"),
    ("kscand", {"cpus": 0}, "cpus"),
    ("kscand", {"pattern": "random"}, "pattern"),
    ("kscand", {"pattern": "lackey:/nonexistent/trace"}, "does not exist"),
    ("kscand", {"mappings": 9, "processes": 4}, "mappings"),
    ("kscand", {"shared": 1.5}, "shared"),
    ("kscand", {"kernel": "rhel3", "debug_highmem": True}, "debug_highmem"),
    ("kmap", {"tables": "other"}, "tables"),
    ("linear-scan", {"seconds": 0}, "seconds"),
    ("fork-exit", {"cycles": 0}, "cycles"),
    ("demand-paging", {"pages": "many"}, "pages"),
])
def test_parameter_errors(name: str, params: dict, words: str) -> None:
    with pytest.raises(BenchError) as info:
        make_workload(name, params)
    message = str(info.value)
    assert words in message and "\n" not in message


def test_too_many_pages_for_the_processes() -> None:
    w = make_workload("kscand", {"highmem_mib": 4096, "processes": 1, "shared": 0.0})
    with pytest.raises(BenchError, match="raise processes"):
        w.build(random.Random(1))


def test_highmem_holds_every_page_table_of_heavily_shared_memory() -> None:
    run = make_workload("kscand", {"highmem_mib": 64, "shared": 1.0, "mappings": 8,
                                   "processes": 8, "seconds": 0.01}).build(random.Random(1))
    assert run.sizes["ptes"] == 8 * 64 * 256
    assert run.sizes["page_tables"] >= run.sizes["ptes"] // 512
