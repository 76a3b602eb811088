"""The workloads' generators in C (bench/core/_scan.c) against the Python ones (issue 17).

kscand, linear-scan and kmap generate their streams in C when the native core is built
(bench.core.generators). For the same seed both must give the same operations in the same
order, make the same guest-memory reads after the same number of operations (the recording's
read log), derive the same sizes, leave guest memory the same, and leave the Python objects
(aging lists and counts, the user schedule, every process's random generator) in the state the
Python generator leaves them. Checked here on every kernel variant, PAE and not, one to four
vCPUs, every access pattern (a lackey trace included), both cache-pass counts, memory pressure
and shared pages, kmap's same and different page tables, plus random parameter settings through
hypothesis; and through the native
execution's direct path (bench/core/_core.c run_tee pulls a ScanStream's operations without
tuples) and one tuple at a time.

Under ``CI=true`` the native core must be in use, as in tests/test_native_core.py.
"""

from __future__ import annotations

import json
import lzma
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import cell, core
from bench.core import generators
from bench.machine.memory import ReadLog
from bench.machine.native import NativeMachine
from bench.recording import OpRecording
from bench.registry import make_policy, make_workload
from workloads._kmap import KERNELS

IN_CI = os.environ.get("CI") == "true"
pytestmark = pytest.mark.skipif(not IN_CI and not core.available(),
                                reason=f"the native core is {core.state()}")

QUICK = {"quick": True}


def _python_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generators, "enabled", False)


def _state(w) -> dict:
    """What the Python objects hold after the run (the C stream writes its state back; the kmap
    stream has none to write)."""
    if hasattr(w, "last_player"):  # a recording's Replayer
        p = w.last_player
        return {"cr3": p.cr3, "kmap": p.kmap, "stats": dict(p.stats), "vbase": dict(p.vbase),
                "level": dict(p.level)}
    if not hasattr(w, "last_runner"):
        return {}
    zone = w.last_scanner
    runner = w.last_runner
    state = {"turn": list(runner.turn), "ran": list(runner.ran), "loaded": list(runner.loaded),
             "carry": list(runner.carry),
             "rng": [s.rng.getstate() for s in runner.streams],
             "pos": [s.pos for s in runner.streams]}
    for name in ("count", "age_interval", "age_next", "need_scan"):
        if hasattr(zone, name):
            state[name] = list(getattr(zone, name)) if name == "count" else getattr(zone, name)
    if hasattr(zone, "nxt"):
        state["links"] = (list(zone.nxt), list(zone.prv))
    return state


def _stream(workload: str, params: dict, seed: int, native: bool, monkeypatch: pytest.MonkeyPatch,
            direct: bool = True) -> dict:
    """The run recorded through the native execution (bench.cell's path: the direct pull of a
    ScanStream, or the tuple path for the Python generator; with ``direct`` False each
    operation is taken with ``next()`` and executed by the Python NativeMachine instead): its
    operations, reads with the operations before each, sizes, memory and final state."""
    with monkeypatch.context() as m:
        if not native:
            _python_only(m)
        w = make_workload(workload, params)
        run = w.build(random.Random(seed))
        mem = run.guest.mem
        if direct:
            execution = core.native_execution(mem, run.guest.mode.pae, list(run.cr3s), True)
            assert execution is not None
            recording = OpRecording()
            assert (type(iter(run.ops)).__name__ == "ScanStream") == native
            execution.run_recorded(recording, run.ops, mem)
            assert recording.usable
            ops = list(recording.replay())
            reads = [list(map(list, c)) for c in recording.read_columns()]
            counters = {**execution.counters, "trace": execution.finish()}
        else:
            it = iter(run.ops)
            assert (type(it).__name__ == "ScanStream") == native
            machine = NativeMachine(mem, run.guest.mode, run.cr3s)
            log, ops = ReadLog(), []
            while True:
                log.at = len(ops)
                mem.log = log
                try:
                    op = next(it)
                except StopIteration:
                    break
                finally:
                    mem.log = None
                ops.append(tuple(op))
                machine.step(op)
            assert not log.wrote
            reads, counters = log.reads, machine.counters.as_dict()
        return {"ops": ops, "reads": reads, "sizes": dict(run.sizes), "memory": mem.image(),
                "state": _state(w), "counters": counters}


def _assert_same(workload: str, params: dict, seed: int, monkeypatch: pytest.MonkeyPatch,
                 direct: bool = True, passes: bool = True) -> None:
    python = _stream(workload, params, seed, False, monkeypatch, direct)
    native = _stream(workload, params, seed, True, monkeypatch, direct)
    if passes:  # (a random setting may generate nothing: no pass, no user access)
        assert python["ops"] and python["sizes"]["passes"] > 0 and python["reads"]
    for i, (a, b) in enumerate(zip(python["ops"], native["ops"])):
        assert a == b, f"operation {i} differs"
    for key in python:
        assert native[key] == python[key], f"{key} differs"


CASES = [
    ("kscand", {}),
    ("kscand", {"cpus": 2, "pae": True}),
    ("kscand", {"cpus": 3, "pattern": "uniform", "pressure": 5.0, "cache_count": "cache"}),
    ("kscand", {"cpus": 2, "pattern": "sequential", "shared": 0.5, "mappings": 3,
                "seconds": 4.0}),
    ("kscand", {"cache": 0.0, "pressure": 0.0, "cpus": 4, "processes": 3}),
    ("kscand", {"cache": 0.75, "pressure": 20.0, "seconds": 6.0, "cpus": 2}),
    ("kscand", {"shared": 0.0, "rate": 0.0}),
    ("linear-scan", {}),
    ("linear-scan", {"cpus": 2, "pae": True, "pattern": "zipf", "zipf_s": 2.0}),
    ("linear-scan", {"cpus": 4, "interval": 0.3, "debug_highmem": True, "kernel": "2.6.12"}),
] + [(w, {"kernel": k, "pae": pae, "cpus": 2, "seconds": 1.5})
     for w in ("kscand", "linear-scan") for k in KERNELS for pae in (False, True)]

KMAP_CASES = [({"kernel": k, "pae": pae, "cpus": cpus, "tables": tables}
               | ({"debug_highmem": True} if k == "2.6.12" and cpus == 3 else {}))
              for k in KERNELS for pae in (False, True) for cpus, tables in ((1, "same"),
                                                                            (3, "different"))]


@pytest.mark.parametrize("workload,params", CASES,
                         ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_the_c_generators_give_the_python_stream(workload, params, monkeypatch):
    _assert_same(workload, {**QUICK, **params}, 3, monkeypatch)


@pytest.mark.parametrize("params", KMAP_CASES,
                         ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()))
def test_the_c_kmap_generator_gives_the_python_stream(params, monkeypatch):
    """kmap: the same operations, and the fixmap pte reads of the variants that compare it
    (rhel3, 2.6-proposed) after the same operations."""
    _assert_same("kmap", {**QUICK, **params}, 0, monkeypatch, passes=False)
    if params["kernel"] in ("rhel3", "2.6-proposed"):
        assert _stream("kmap", {**QUICK, **params}, 0, True, monkeypatch)["reads"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernel=st.sampled_from(KERNELS), pae=st.booleans(), cpus=st.integers(1, 4),
       tables=st.sampled_from(["same", "different"]), table_count=st.integers(2, 40),
       iterations=st.integers(1, 300), debug_highmem=st.booleans())
def test_random_kmap_settings_give_the_python_stream(kernel, pae, cpus, tables, table_count,
                                                     iterations, debug_highmem):
    params = {"kernel": kernel, "pae": pae, "cpus": cpus, "tables": tables,
              "table_count": table_count, "iterations": iterations,
              "debug_highmem": debug_highmem and kernel == "2.6.12"}
    with pytest.MonkeyPatch.context() as monkeypatch:
        _assert_same("kmap", params, 0, monkeypatch, passes=False)


def test_the_c_generators_replay_a_lackey_trace(tmp_path: Path, monkeypatch):
    trace = tmp_path / "trace.lackey"
    rng = random.Random(9)
    lines = ["==123== Lackey, a memory tracer"]
    for _ in range(500):
        kind = rng.choice("ILSM")
        lines.append(f"{'I ' if kind == 'I' else ' ' + kind} {rng.randrange(1 << 32):08x},4")
    trace.write_text("\n".join(lines) + "\n")
    _assert_same("kscand", {**QUICK, "pattern": f"lackey:{trace}", "cpus": 2}, 1, monkeypatch)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), workload=st.sampled_from(["kscand", "linear-scan"]),
       kernel=st.sampled_from(KERNELS), pae=st.booleans(), cpus=st.integers(1, 3),
       pattern=st.sampled_from(["uniform", "zipf", "sequential"]),
       shared=st.sampled_from([0.0, 0.1, 0.6]), cache=st.sampled_from([0.0, 0.25, 1.0]),
       pressure=st.sampled_from([0.0, 1.0, 9.0]), rate=st.sampled_from([0.0, 700.0, 3000.0]))
def test_random_settings_give_the_python_stream(seed, workload, kernel, pae, cpus, pattern,
                                               shared, cache, pressure, rate):
    params = {"highmem_mib": 2.0, "processes": 3, "seconds": 1.2, "rate": rate,
              "kernel": kernel, "pae": pae, "cpus": cpus, "pattern": pattern, "shared": shared}
    if workload == "kscand":
        params.update(cache=cache, pressure=pressure)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _assert_same(workload, params, seed, monkeypatch, passes=False)


@pytest.mark.parametrize("params", [{"cpus": 2, "kernel": "rhel3"},
                                    {"pae": True, "kernel": "2.6.20", "cpus": 3}])
def test_the_stream_taken_one_tuple_at_a_time_is_the_python_stream(params, monkeypatch):
    """The ScanStream as a plain iterator (``next()``, tuples; as a policy generating its own
    stream takes it), executed by the Python NativeMachine, against the Python generator."""
    _assert_same("kscand", {**QUICK, **params}, 5, monkeypatch, direct=False)


def test_an_inspection_hook_set_after_build_runs_the_python_generator():
    w = make_workload("kscand", QUICK)
    run = w.build(random.Random(2))
    w.last_scanner.record = True
    assert type(iter(run.ops)).__name__ != "ScanStream"
    assert sum(1 for _ in run.ops) > 0 and w.last_scanner.visited


def test_the_native_core_runs_the_scan_generators():
    assert core.available(), core.state()
    for name in ("kscand", "linear-scan", "kmap"):
        run = make_workload(name, QUICK).build(random.Random(1))
        assert type(iter(run.ops)).__name__ == "ScanStream"


def _generated(policy: str, workload: str, params: dict, seed: int, native: bool,
               monkeypatch: pytest.MonkeyPatch):
    """bench.cell's run of ``policy`` on a stream of its own: natively (the ScanStream reading
    the policy's own guest memory in the native core) or in Python (generator and executor)."""
    with monkeypatch.context() as m:
        if not native:
            m.setattr(generators, "enabled", False)
            m.setattr(core, "generate", lambda run, policy: None)
        else:
            real = core.generate
            used = []
            m.setattr(core, "generate", lambda run, p: used.append(1) or real(run, p))
        result = cell._generated(make_policy(policy), workload, params, seed)
        if native:
            assert used and result is not None
        return result


@pytest.mark.parametrize("policy", ["unsync", "xen-oos", "flood-count",
                                    "accessed-clear:fallback=unsync", "xen-batch"])
@pytest.mark.parametrize("workload,params", [("kscand", {"cpus": 2}),
                                             ("linear-scan", {"pae": True, "kernel": "2.6.20"}),
                                             ("kmap", {"cpus": 2, "kernel": "rhel3"}),
                                             ("kmap", {"pae": True, "kernel": "2.6-proposed"})])
def test_a_policy_generating_its_own_stream_natively_matches_python(policy, workload, params,
                                                                   monkeypatch):
    """The policy's guest generating its own stream (bench.cell._generated, as after a read
    differs from the recording): the C stream on the native core's own memory against the
    Python generator on the Python executor: the same counters, marks, operations and sizes."""
    params = {**QUICK, **params}
    python = _generated(policy, workload, params, 4, False, monkeypatch)
    native = _generated(policy, workload, params, 4, True, monkeypatch)
    assert python.guest_ops > 0
    assert native == python



# -------------------------------------------------------------- a recorded guest's replay in C
import _tiny_recording as TR  # noqa: E402
from bench.errors import BenchError  # noqa: E402
from bench.record import format as F  # noqa: E402
from bench.record import replay  # noqa: E402

FULL = ["fork-exit-686", "fork-exit-686-pae", "demand-paging-686", "demand-paging-686-pae"]
"""Shipped recordings replayed whole in both implementations (the others, longer, to a prefix
here, and whole in tests/test_guest_replay.py's conformance runs, natively)."""


@pytest.mark.parametrize("name", sorted(replay.shipped()))
def test_the_c_replay_of_a_shipped_recording_gives_the_python_stream(name, monkeypatch):
    """The guest workload's stream from bench/core/_guest.c against Replayer.ops: operations,
    the reads (table words, translations, the kmap slot's pte) after the same operations,
    memory, and the Replayer's cr3, kmap slot, stats, vbase and level at the end."""
    params = {"recording": name} if name in FULL else {"recording": name, "events": 150_000}
    _assert_same("guest", params, 0, monkeypatch, passes=False)


def _tiny_variant(tmp_path: Path, extra: list, name: str, end: bool = True) -> dict:
    """The tiny recording with ``extra`` events before its final MARK (dropped without ``end``)."""
    evs = TR.events()
    last = evs.pop()
    return {"recording": str(TR.write(tmp_path / f"{name}.rec", evs + extra + ([last] if end
                                                                              else [])))}


KMAP_TABLE, KMAP_VA = 0x7000, 0xFF800000
"""A kernel pte table mapping the top of the address space, outside the direct map (a
kmap_local slot's table in the recorder's terms)."""


def _kmap_snapshot() -> list:
    """The tiny recording's snapshot plus KMAP_TABLE, linked from the directory."""
    evs = TR.events()
    d = bytearray(evs[0].payload)
    d[(KMAP_VA >> 22) * 4:(KMAP_VA >> 22) * 4 + 4] = (KMAP_TABLE | 0x63).to_bytes(4, "little")
    evs[0] = F.Event(F.TABLE, 2, 0, F.SNAPSHOT, 4096, 0, 0, TR.D, 0, 0, bytes(d))
    evs.insert(3, F.Event(F.TABLE, 1, 0, F.SNAPSHOT, 4096, 0, 0, KMAP_TABLE, KMAP_VA, 0,
                          bytes(4096)))
    return evs


def _high_table(icount: int) -> F.Event:
    """A frame above the direct map becoming a table whose contents memory does not hold."""
    page = bytearray(4096)
    page[16:20] = (0x123000 | TR.USER_PTE).to_bytes(4, "little")
    return F.Event(F.TABLE, 1, 0, 0, 4096, icount, 0, 0x40000000, 0x0C000000, 0, bytes(page))


def _tiny_cases(tmp_path: Path) -> dict[str, dict]:
    pte = 0xC0000000 + TR.T
    new_pt, new_pd = 0x5000, 0x6000
    pt = bytearray(4096)
    pt[8:12] = (0x300000 | TR.USER_PTE).to_bytes(4, "little")
    pd = bytearray(4096)
    pd[0x10 * 4:0x10 * 4 + 4] = (new_pt | TR.USER_PDE).to_bytes(4, "little")
    pd[768 * 4:768 * 4 + 4] = TR.KERNEL_LARGE.to_bytes(4, "little")
    slot_store = F.Event(F.STORE, 4, 1, 0, 1, 1080, 0xC1000000, KMAP_TABLE + 8,
                         0xC0000000 + KMAP_TABLE + 8, 0x40000000 | 0x63)
    kmap_evs = _kmap_snapshot()
    last = kmap_evs.pop()
    kmap_path = tmp_path / "kmap.rec"
    TR.write(kmap_path, kmap_evs + [slot_store, _high_table(1090), last])
    return {
        "tiny": {"recording": str(TR.write(tmp_path / "tiny.rec"))},
        "prefix": {"recording": str(TR.write(tmp_path / "prefix.rec")), "events": 3},
        "walks-and-classes": _tiny_variant(tmp_path, [
            F.Event(F.WALK, 0, 1, F.WRITE, 0, 1050, 0xC1000000, 0, pte, 0),
            F.Event(F.WALK, 0, 1, 0, 0, 1050, 0xC1000000, 0, 0xFFF00000, 0),
            F.Event(F.STORE, 4, 9, 0, 1, 1050, 0xC1000000, TR.T + 12, pte + 12, 0),
            F.Event(F.STORE, 4, 7, F.LOCKED, 1, 1051, 0xC1000000, TR.T + 4, pte + 4,
                    (TR.DATA1 | TR.USER_PTE) & ~0x2),
            F.Event(F.STORE, 4, 7, 0, 1, 1052, 0xC1000000, TR.T + 4, pte + 5, 0),  # unaligned
            F.Event(F.STORE, 2, 0, 0, 1, 1053, 0xC1000000, TR.T + 4, pte + 4, 7),  # "other"
            F.Event(F.STORE, 4, 200, 0, 1, 1054, 0xC1000000, TR.T + 4, pte + 4, 7),  # past names
            F.Event(F.STORE, 8, 4, F.LOCKED, 1, 1055, 0xC1000000, TR.T + 8, pte + 8, 5),
            F.Event(F.WALK, 0, 1, 0, 0, 1056, 0xC1000000, 0, 0xFFF01000, 0),
            F.Event(F.STORE, 4, 1, 0, 1, 1056, 0xC1000000, TR.T + 4, pte + 4, 9),  # other page
        ], "w"),
        "table-mid-run": _tiny_variant(tmp_path, [
            F.Event(F.CR3, 0, 0, 0, 0, 1060, 0, new_pd, 0, new_pd),
            F.Event(F.TABLE, 2, 0, 0, 4096, 1060, 0, new_pd, 0, 0, bytes(pd)),
            F.Event(F.TABLE, 1, 0, 0, 4096, 1060, 0, new_pt, 0x04000000, 0, bytes(pt)),
            F.Event(F.WALK, 0, 1, F.USER, 0, 1070, 0x08048000, 0, 0x04002000, 0),
            F.Event(F.WALK, 0, 1, F.USER, 0, 1071, 0x08048000, 0, 0x04003000, 0),
            F.Event(F.TABLE, 1, 0, 0, 4096, 1072, 0, new_pt, 0x04000000, 0, bytes(4096)),
            F.Event(F.UNTABLE, 1, 0, 0, 0, 1073, 0, new_pt, 0x04000000, 0),
        ], "t"),
        "no-final-mark": _tiny_variant(tmp_path, [  # ends with a cr3 load held (of another root)
            F.Event(F.WALK, 0, 1, F.USER, 0, 1070, 0x08048000, 0, TR.USER_VA, 0),
            F.Event(F.CR3, 0, 0, 0, 0, 1080, 0, new_pd, 0, new_pd)], "n", end=False),
        "kmap-slot": {"recording": str(kmap_path)},
    }


@pytest.mark.parametrize("case", ["tiny", "prefix", "walks-and-classes", "table-mid-run",
                                  "no-final-mark", "kmap-slot"])
def test_the_c_replay_of_every_event_rule_gives_the_python_stream(case, tmp_path, monkeypatch):
    params = _tiny_cases(tmp_path)[case]
    _assert_same("guest", params, 0, monkeypatch, passes=False)
    python = _stream("guest", params, 0, False, monkeypatch)
    assert python["ops"]
    if case == "kmap-slot":  # the table was written through the slot
        assert python["state"]["stats"]["tables_rewritten_kmap"] == 1
    if case == "walks-and-classes":
        assert {"walks_of_a_store", "btr_not_accessed", "store_stos_as_mov",
                "store_other_as_mov"} <= set(python["state"]["stats"])


def test_the_c_replay_taken_one_tuple_at_a_time_is_the_python_stream(monkeypatch):
    _assert_same("guest", {"recording": "fork-exit-686-pae", "events": 40_000}, 0, monkeypatch,
                 direct=False, passes=False)


def _failure(params: dict, native: bool, monkeypatch) -> tuple[type, str]:
    with pytest.raises(BenchError) as info:
        _stream("guest", params, 0, native, monkeypatch)
    return type(info.value), str(info.value)


def test_the_c_replay_fails_as_the_python_one(tmp_path, monkeypatch):
    """A recording that goes bad after its snapshot (after the check that reads it whole before
    a run: a file replaced meanwhile) fails the same way, with the same one-line message."""
    good = TR.events()
    body = b"".join(F.encode_event(e) for e in good)
    cases = {}
    bad_kind = bytearray(F.encode_event(good[5]))
    bad_kind[0] = 9
    for name, raw in [("kind", body[:-48] + bytes(bad_kind) + body[-48:]),
                      ("cut", body[:-20])]:
        path = tmp_path / f"{name}.rec"
        TR.write(path)
        data = path.read_bytes()
        rec = F.open_recording(path)
        header = dict(rec.header, body={"events": 0, "bytes": len(raw), "sha256": "x"})
        head = json.dumps(header).encode()
        path.write_bytes(F.PREAMBLE.pack(F.MAGIC, 1, 0, len(head)) + head +
                         lzma.compress(raw, format=lzma.FORMAT_XZ))
        assert data != path.read_bytes()
        cases[name] = {"recording": str(path)}
    mismatch = tmp_path / "mismatch.rec"  # read to its end: no final MARK stops the replay
    TR.write(mismatch, TR.events()[:-1])
    rec = F.open_recording(mismatch)
    head = json.dumps(dict(rec.header, body=dict(rec.header["body"], events=99))).encode()
    with open(mismatch, "rb") as handle:
        handle.seek(rec.body_offset)
        compressed = handle.read()
    mismatch.write_bytes(F.PREAMBLE.pack(F.MAGIC, 1, 0, len(head)) + head + compressed)
    cases["mismatch"] = {"recording": str(mismatch)}
    no_slot = _kmap_snapshot()
    last = no_slot.pop()
    cases["no-slot"] = {"recording": str(TR.write(tmp_path / "noslot.rec",
                                                  no_slot + [_high_table(1090), last]))}
    for name, params in cases.items():
        python = _failure(params, False, monkeypatch)
        assert _failure(params, True, monkeypatch) == python, name
        assert ("kmap_local" in python[1]) == (name == "no-slot"), python
        assert type(python[0]) is not BenchError or name == "no-slot"


@pytest.mark.parametrize("policy", ["flood-count", "unsync", "xen-batch", "tdp"])
def test_a_policy_generating_its_own_guest_stream_natively_matches_python(policy, monkeypatch):
    params = {"recording": "fork-exit-686", "events": 60_000}
    python = _generated(policy, "guest", params, 0, False, monkeypatch)
    native = _generated(policy, "guest", params, 0, True, monkeypatch)
    assert python.guest_ops > 0
    assert native == python
