"""The guest workloads: kscand's visit order, linear-scan's address order, determinism,
guest memory identical under every executor, and parameter validation."""

from __future__ import annotations

import random
from collections import deque

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
ANON_BUCKETS = range(14, -1, -1)
CACHE_BUCKETS = range(16 + 14, 15, -1)  # cache bucket of age a is 16 + a


def needs_scan(counts: list[int]) -> bool:
    """need_active_anon_scan / need_active_cache_scan on one list's 16 counts."""
    return sum(counts[7:16]) < sum(counts[:7])


@pytest.mark.parametrize("extra", [{"cache": 0.0}, {"cache_count": "cache"}])
def test_kscand_visits_each_page_of_the_scanned_buckets_once_in_bucket_order(extra) -> None:
    """Anon-only pages, or cache pages with HEAD's cache count: every page of the scanned
    buckets exactly once, anon buckets 14..0 then cache buckets 14..0, each from the tail."""
    w = make_workload("kscand", {**QUICK, "cpus": 2, **extra})
    run = w.build(random.Random(3))
    zone = w.last_scanner

    def expect():
        want = []
        if needs_scan(zone.count[:16]):
            want += [(b, p) for b in ANON_BUCKETS for p in zone.bucket(b)]
        if needs_scan(zone.count[16:]):
            want += [(b, p) for b in CACHE_BUCKETS for p in zone.bucket(b)]
        return want

    passes = scan_passes(zone, run, NativeMachine(run.guest.mem, run.guest.mode, run.cr3s),
                         expect)
    assert len(passes) == run.sizes["passes"] >= 2
    for want, got in passes:
        assert got == want
        assert len({p for _, p in got}) == len(got)
    cache_visits = [p for b, p in zone.visited if b >= 16]
    if extra.get("cache_count") == "cache":
        assert cache_visits and all(zone.um.is_cache[p] for p in cache_visits)
    else:
        assert not cache_visits and zone.um.cache_pages == 0


def scan_passes(zone, run, machine, expect) -> list[tuple[list, list]]:
    """Run ``run`` on ``machine`` recording kscand's visits; per pass, (what ``expect()`` returned
    when the pass started, the (bucket, page) pairs the pass visited)."""
    zone.record = True
    expected: list[list[tuple[int, int]]] = []
    starts: list[int] = []

    def started() -> None:
        starts.append(len(zone.visited))
        expected.append(expect())

    zone.on_pass = started
    machine.run(run.ops)
    bounds = starts + [len(zone.visited)]
    return [(want, zone.visited[bounds[i]:bounds[i + 1]]) for i, want in enumerate(expected)]


def young_pages(um, mem) -> set[int]:
    """Pages with at least one young pte (what page_referenced would report)."""
    young = set()
    for p in range(um.pages):
        if p < um.shared_pages:
            gpas = um.chain[p * um.mappings:(p + 1) * um.mappings]
        else:
            gpas = [um.pte_gpa[p]]
        if any(mem.read32(g) & 0x20 for g in gpas):
            young.add(p)
    return young


def model_scan(buckets: dict[int, deque], bucket: int, count: int, young: set[int],
               out: list[tuple[int, int]]) -> None:
    """scan_active_list as notes section 2 gives it, on deques ordered tail first: take the
    tail ``count`` times unless the bucket is empty; young -> head of min(age + 4, 15) of the
    same list (its young bits are now clear), else rotate to the head of the same bucket."""
    lst, age = bucket - bucket % 16, bucket % 16
    dq = buckets[bucket]
    while count > 0 and dq:
        count -= 1
        p = dq.popleft()
        out.append((bucket, p))
        if p in young:
            young.discard(p)
            buckets[lst + min(age + 4, 15)].append(p)
        else:
            dq.append(p)


def model_pass(zone, young: set[int], quirk: bool) -> list[tuple[int, int]]:
    """kscand's per-zone loop (notes section 1, 65bd7b49 or HEAD) on a snapshot of the lists."""
    buckets = {b: deque(zone.bucket(b)) for b in range(32)}
    out: list[tuple[int, int]] = []
    if needs_scan([len(buckets[b]) for b in range(16)]):
        for b in ANON_BUCKETS:
            model_scan(buckets, b, len(buckets[b]), young, out)
    if needs_scan([len(buckets[b]) for b in range(16, 32)]):
        for b in CACHE_BUCKETS:
            count = len(buckets[b - 16]) if quirk else len(buckets[b])
            model_scan(buckets, b, count, young, out)
    return out


@pytest.mark.parametrize("cache_count", ["anon", "cache"])
def test_kscand_passes_follow_the_kernel_loop_with_cache_pages(cache_count: str) -> None:
    """Every pass of a run with cache pages equals the reference model of kscand's loop, with
    the cache pass counted by active_anon_count (47.EL quirk) or active_cache_count (HEAD).
    One CPU, so no user access runs during a pass."""
    w = make_workload("kscand", {**QUICK, "seconds": 3.0, "pressure": 5.0,
                                 "cache_count": cache_count})
    run = w.build(random.Random(4))
    zone = w.last_scanner
    um = zone.um
    assert 0 < um.cache_pages < um.pages and 0 < um.shared_cache_pages < um.shared_pages
    m = NativeMachine(run.guest.mem, run.guest.mode, run.cr3s)
    passes = scan_passes(zone, run, m,
                         lambda: model_pass(zone, young_pages(um, m.mem), cache_count == "anon"))
    assert len(passes) == run.sizes["passes"] >= 4
    revisits = partial = 0
    for want, got in passes:
        assert got == want
        cache = [p for b, p in got if b >= 16]
        assert all(um.is_cache[p] for p in cache)
        assert all(not um.is_cache[p] for b, p in got if b < 16)
        revisits += len(cache) - len(set(cache))
        partial += 0 < len(set(cache)) < um.cache_pages
    if cache_count == "anon":
        assert revisits > 0 and partial > 0  # both sides of the quirk occur
    else:
        assert revisits == 0


@pytest.mark.parametrize("cache,quirk", [(0.25, True), (0.75, True), (0.25, False)])
def test_kscand_cache_pass_count(cache: float, quirk: bool) -> None:
    """The cache pass alone on the initial lists (every page in bucket 3 of its list), with the
    A bit cleared on most cache ptes: with the quirk cache bucket 3 is scanned
    active_anon_count[3] times -- more than its length (re-visits of the rotated pages) with
    cache=0.25, fewer (the tail end only) with cache=0.75; with HEAD's count each page once."""
    w = make_workload("kscand", {**QUICK, "cache": cache, "shared": 0.5, "mappings": 3,
                                 "cache_count": "anon" if quirk else "cache"})
    run = w.build(random.Random(6))
    zone = w.last_scanner
    zone.record = True
    um, mem = zone.um, run.guest.mem
    n_anon, n_cache = zone.count[3], zone.count[16 + 3]
    assert n_anon + n_cache == um.pages and sum(zone.count) == um.pages
    tail_first = zone.bucket(16 + 3)
    assert len(tail_first) == n_cache == um.cache_pages and n_anon != n_cache
    # Keep every 7th cache page young (it is promoted at its first visit); clear the others.
    young = set(tail_first[::7])
    for p in tail_first:
        if p not in young:
            gpas = um.chain[p * 3:p * 3 + 3] if p < um.shared_pages else [um.pte_gpa[p]]
            for g in gpas:
                mem.write32(g, mem.read32(g) & ~0x20)
    m = NativeMachine(mem, run.guest.mode, run.cr3s)
    ops = [op for visit in zone._pass(False, True) for op in visit for _ in [m.step(op)]]
    count = n_anon if quirk else n_cache
    # scan_active_list by hand: `count` takes from the tail; the list never empties here.
    want, order, left = [], list(tail_first), set(young)
    i = 0
    while len(want) < count:
        p = order[i]
        i += 1
        want.append(p)
        if p in left:
            left.discard(p)
        else:
            order.append(p)
    assert zone.visited == [(16 + 3, p) for p in want]
    visits = len(zone.visited)
    distinct = len(set(want))
    assert visits == count
    if quirk and cache == 0.25:
        assert visits > n_cache and distinct == n_cache and visits - distinct == n_anon - n_cache
    elif quirk:
        assert visits < n_cache and distinct == visits == n_anon
    else:
        assert visits == distinct == n_cache
    # page_referenced per visit: a chain page btr's its 3 ptes; a direct page loads its pte and
    # btr's it only if young (first visits of the young pages).
    chain_visits = sum(1 for p in want if p < um.shared_pages)
    direct_young = sum(1 for p in set(want) & young if p >= um.shared_pages)
    btrs = sum(1 for op in ops if op[0] == BTR)
    loads = sum(1 for op in ops if op[0] == LOAD and op[2] >= PAGE_OFFSET)
    assert chain_visits and (direct_young or cache == 0.75)  # 0.75: the tail is all chained
    assert btrs == 3 * chain_visits + direct_young
    assert loads == visits - chain_visits
    # Promoted pages went to cache bucket 7, the rest stayed in bucket 3; anon lists untouched.
    promoted = set(want) & young
    assert set(zone.bucket(16 + 7)) == promoted
    assert zone.count[16 + 3] == n_cache - len(promoted) and zone.count[3] == n_anon


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
    # cache pages scanned with 47.EL's anon count (re-visits, partial buckets) and with HEAD's
    ("kscand", {"cpus": 2, "seconds": 3.0, "pressure": 6.0}),
    ("kscand", {"cpus": 2, "pressure": 4.0, "cache": 0.5, "shared": 0.3,
                "cache_count": "cache", "pae": False}),
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
    ("kscand", {"cache": -0.1}, "cache"),
    ("kscand", {"cache_count": "both"}, "cache_count"),
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
