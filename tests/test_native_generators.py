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
