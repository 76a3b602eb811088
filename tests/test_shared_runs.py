"""One native execution shared by every policy of a guest run (bench.cell.run_cells, bench.recording).

The shortcut must never change a result: every registered policy gets, from ``run_cells``, the
very counters it gets on a stream generated for it alone; the oracle record is the one
``bench.oracle.record`` makes; a policy whose guest reads differ (a ``tlb_like`` one, or one that breaks the
conformance rule without saying so) is detected and run on its own stream; a recording packs, spills and replays
operations unchanged.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import cell, oracle, runner
from bench.experiment import Cell, Entry
from bench.machine.memory import GuestMemory
from bench.recording import OpRecording
from bench.registry import make_policy, policies
from policies.unsync import Unsync

RUNS = [
    ("kscand", {"quick": True}),
    ("kscand", {"quick": True, "pae": False, "cpus": 2, "kernel": "rhel3-debug"}),
    ("linear-scan", {"quick": True, "kernel": "2.6.20"}),
    ("kmap", {"quick": True, "pae": False, "kernel": "rhel3"}),
    ("fork-exit", {"quick": True}),
]


def alone(spec, workload: str, params: dict, seed: int) -> cell.CellResult:
    """The reference: the policy on a stream generated for it (the oracle fed a fresh record)."""
    policy = make_policy(spec)
    if getattr(policy, "needs_trace", False):
        policy.use_trace(oracle.trace(cell.build_run(workload, params, seed)))
    return cell._generated(policy, workload, params, seed)


@pytest.mark.parametrize("workload,params", RUNS, ids=[f"{w}-{i}" for i, (w, _) in enumerate(RUNS)])
def test_every_policy_gets_what_it_gets_alone(workload, params):
    names = sorted(policies())
    got = dict(cell.run_cells(names, workload, params, 5, record_oracle=True))
    assert got[-1] == oracle.record(cell.build_run(workload, params, 5))
    for i, name in enumerate(names):
        assert got[i] == alone(name, workload, params, 5), name


class Undeclared(Unsync):
    """Out-of-sync pages that do not declare themselves tlb_like (a broken third-party policy)."""

    name = "undeclared-unsync"
    tlb_like = False


def test_a_policy_that_changes_what_the_guest_sees_runs_on_its_own_stream(monkeypatch):
    import bench.registry as registry

    monkeypatch.setitem(registry.policies(), "undeclared-unsync", Undeclared)
    params = {"quick": True, "seconds": 3.0}
    # the guest sees a different accessed bit under it (so the kernel's stream differs) ...
    shared = dict(cell.run_cells(["always-emulate", "undeclared-unsync"], "kscand", params, 1))
    reference = alone("undeclared-unsync", "kscand", params, 1)
    assert reference.guest_ops != shared[0].guest_ops
    # ... and the shortcut noticed: the result is the one of its own stream
    assert shared[1] == reference


def test_a_single_policy_generates_and_tlb_like_policies_replay_while_the_reads_agree(monkeypatch):
    calls = []
    real = cell._generated
    monkeypatch.setattr(cell, "_generated", lambda p, *a, **k: calls.append(p.name) or real(p, *a, **k))
    list(cell.run_cells(["flood-count"], "kmap", {"quick": True}, 0))
    assert calls == ["flood-count"]  # nothing to share
    calls.clear()
    # kmap's kernel reads only the fixmap pte, the same under every policy: all replay
    list(cell.run_cells(["flood-count", "unsync", "tdp", "always-emulate"], "kmap",
                        {"quick": True}, 0))
    assert calls == []
    # kscand's page_referenced reads accessed bits that out-of-sync pages leave set
    got = dict(cell.run_cells(["always-emulate", "unsync"], "kscand", {"quick": True}, 0))
    assert calls == ["unsync"]
    assert got[1] == alone("unsync", "kscand", {"quick": True}, 0)


# -- the recording ---------------------------------------------------------------------------------
ops_strategy = st.lists(st.tuples(
    st.integers(0, 7), st.integers(0, 7), st.integers(0, 2**32 - 1), st.integers(-1, 10**9),
    st.integers(0, 2**64 - 1), st.sampled_from(["mov", "btr", "bts", "cmpxchg8b", "invlpg"])),
    max_size=300)


@settings(max_examples=60, deadline=None)
@given(ops=ops_strategy, budget=st.sampled_from([0, 100, 1 << 20]))
def test_a_recording_replays_exactly_what_passed_through_it(ops, budget):
    import bench.recording as recording

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recording, "CHUNK", 7)  # several chunks, some of them on file
        with OpRecording(memory_budget=budget) as rec:
            assert list(rec.tee(iter(ops), GuestMemory())) == ops
            assert rec.usable and rec.count == len(ops)
            assert list(rec.replay()) == ops
            assert list(rec.replay()) == ops  # as often as needed


def _stream_reads(mem: GuestMemory, i: int, n: int) -> int:
    """The reads the stream below makes before operation ``i`` (``i == n``: after the last one,
    before it ends), combined into one number: none before every third operation, a word and an
    8-byte entry before the others, one word at the end."""
    if i == n:
        return mem.read32(0x1000 + 4 * (n % 8))
    if i % 3 == 2:
        return 0
    return mem.read32(0x1000 + 4 * (i % 8)) + mem.read_entry(0x1000 + 8 * (i % 4), True)


def _reading_stream(mem: GuestMemory, n: int):
    """A workload-like stream: operation i stores into word (i + 1) % 8 a value computed from
    what it read just before (so operation i - 1 decided what it reads)."""
    for i in range(n):
        yield (0, 0, 0x1000 + 4 * ((i + 1) % 8), 4, (_stream_reads(mem, i, n) + i) & 0xFFFFFFFF,
               "mov")
    _stream_reads(mem, n, n)


def _store(mem: GuestMemory, op: tuple) -> None:
    mem.write32(op[2], op[4])  # an executor with an identity mapping


def _poked(op: tuple) -> tuple:
    return op[:4] + (op[4] ^ 1,) + op[5:]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), poke=st.one_of(st.none(), st.integers(0, 39)))
def test_a_replay_repeats_every_read_and_stops_at_the_first_that_differs(n, poke):
    import bench.recording as recording

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recording, "CHUNK", 5)
        mem = GuestMemory()
        mem.add_table_page(1)
        initial = mem.copy()
        with OpRecording(memory_budget=64) as rec:
            ops = []
            for op in rec.tee(_reading_stream(mem, n), mem):
                _store(mem, op)
                ops.append(op)
            assert rec.usable and rec.count == n
            # by hand: the operations run before the first read that the poke changes
            native, poked = initial.copy(), initial.copy()
            expected: int | None = n
            for i in range(n + 1):
                if _stream_reads(native, i, n) != _stream_reads(poked, i, n):
                    expected = None
                    break
                if i < n:
                    _store(native, ops[i])
                    _store(poked, _poked(ops[i]) if i == poke else ops[i])
            stopped_after = i if expected is None else n
            other = initial.copy()
            seen = []

            def step(op: tuple) -> None:
                # operation ``poke`` stores another value: a later read may differ
                _store(other, op if len(seen) != poke else _poked(op))
                seen.append(op)

            got = rec.run(step, other)
            assert got == expected and len(seen) == stopped_after
            if poke is None:
                assert other.image() == mem.image()
            if poke is not None and poke < n - 1 and poke % 3 != 1:
                assert got is None  # the next operation reads the poked word at once


def test_a_workload_writing_guest_memory_while_generating_is_not_replayed():
    mem = GuestMemory()

    def stream():
        yield (3, 0, 0x1000, 4, 0, "mov")
        mem.write32(0x1000, 7)  # the kernel wrote memory outside an operation
        yield (3, 0, 0x1000, 4, 0, "mov")

    with OpRecording() as rec:
        list(rec.tee(stream(), mem))
        assert not rec.usable and mem.read32(0x1000) == 7 and type(mem) is GuestMemory


def test_a_stream_that_does_not_pack_is_marked_unusable():
    with OpRecording() as rec:
        ops = [(0, 0, 0x1000, 4, 2**64, "mov")]  # a value wider than 64 bits
        assert list(rec.tee(ops, GuestMemory())) == ops
        assert not rec.usable
        with pytest.raises(ValueError):
            list(rec.replay())


# -- grouping cells by guest run ------------------------------------------------------------------
def _cells(workloads: list[str], policies_: list[str], seeds: int) -> list[Cell]:
    out = []
    for w in workloads:
        entry = Entry(w, {}, w)
        out += [Cell(None, entry, s) for s in range(seeds)]
        out += [Cell(Entry(p, {}, p), entry, s) for p in policies_ for s in range(seeds)]
    return out


def test_groups_are_guest_runs_heaviest_first_and_split_when_workers_would_idle():
    cells = _cells(["small", "big"], ["a", "b", "c"], 3)
    groups = runner.groups_of(cells, jobs=1, weights={"small": 1, "big": 10})
    assert [(g[0].workload.label, g[0].seed, len(g)) for g in groups] == [
        ("big", 0, 4), ("big", 1, 4), ("big", 2, 4), ("small", 0, 4), ("small", 1, 4),
        ("small", 2, 4)]
    assert all(g[0].policy is None for g in groups)  # the oracle record rides with its run
    one_run = _cells(["big"], ["a", "b", "c"], 1)
    split = runner.groups_of(one_run, jobs=2)
    assert sorted(len(g) for g in split) == [1, 1, 1, 1]
    two_runs = _cells(["big"], [f"p{i}" for i in range(6)], 2)
    halves = runner.groups_of(two_runs, jobs=2)  # 2 parts per run: the record rides with one
    assert sorted(len(g) for g in halves) == [3, 3, 4, 4]
    assert sorted(c.policy.name if c.policy else "oracle" for g in split for c in g) == [
        "a", "b", "c", "oracle"]
