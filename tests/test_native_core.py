"""The native core (bench/core/_core.c) against the Python reference (issue 17).

The guard that keeps the two implementations in step: every built-in policy (tdp included: its
executor, bench/machine/tdp.py, is in the native core too), and the parameter settings worth
checking, replay the
same recordings in both, and must give identical counters, cycles (priced by every built-in cost
profile), marks (the counter snapshots at each MARK), operation counts and guest memory, and must
agree on whether the recorded reads still hold:

- every synthetic workload at its quick size (kscand, linear-scan, kmap under every kernel with
  and without PAE, fork-exit, demand-paging), three seeds each;
- every shipped recording of a real guest (a prefix);
- the shared native execution of a run (NativeMachine, the oracle's Recorder, the recording it
  feeds) on the same workloads and random streams: identical counters, trace, memory,
  recorded operations and reads;
- random small guests and TLB-coherent random streams (tests/_policy_guests.py, as the
  conformance test uses), through hypothesis: one or two vCPUs, PAE or not, every width and
  alignment the streams make.

Under CI (``CI=true``) the native core must be in use (``pip install '.[test]'`` builds it):
a build that silently fell back to Python fails here instead of passing these tests vacuously.
Elsewhere, without a build, the module is skipped with the reason ``bench.core.state()`` gives.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _policy_guests import build_guest, random_ops
from bench import core, oracle
from bench.cell import build_run, machine_for, run_cells
from bench.costs import PROFILES, profile
from bench.experiment import KMAP_KERNELS
from bench.machine.native import NativeMachine
from bench.recording import OpRecording
from bench.registry import make_policy, policies
from bench.workload import GuestRun

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"
PYTHON_ONLY: set[str] = set()
"""Built-in policies the native core does not run (none: tdp runs there too, bench/machine/tdp.py's
model in C)."""
EXTRA_SPECS = (
    "flood-count:variant=2.6.20",
    "flood-count:variant=2.6.27",
    "flood-count:threshold=1",
    "per-page-flood:include_leaf=true",
    "xen-early-unshadow:version=4.2",
    "xen-oos:limit=1",
    "xen-batch:pae_only=false,fallback=flood-count",
    "xen-batch:fallback=xen-oos",
    "accessed-clear:fallback=xen-batch",
    "accessed-clear:fallback=unsync",
    "accessed-clear:fallback=always-emulate",
    "ski-rental-random:seed=7",
    "tdp:tlb_entries=1",
    "tdp:tlb_entries=300",
)

pytestmark = pytest.mark.skipif(not IN_CI and not core.available(),
                                reason=f"the native core is {core.state()}")


def _builtin() -> list[str]:
    return sorted(name for name, cls in policies().items()
                  if cls.__module__.startswith("policies.") and name not in PYTHON_ONLY)


SPECS = _builtin() + list(EXTRA_SPECS)


def test_the_native_core_is_in_use():
    """Under CI the build must have compiled it; then every built-in shadow policy runs there."""
    assert core.available(), core.state()
    for spec in SPECS:
        policy = make_policy(spec)
        if getattr(policy, "needs_trace", False):
            policy.use_trace(oracle.Trace())
        assert core.native_spec(policy) is not None, f"{spec} would run in Python"


def test_a_subclass_or_a_third_party_policy_runs_in_python():
    """Only the exact built-in classes run natively: a subclass may override any hook."""
    from policies.flood_count import FloodCount

    class Mine(FloodCount):
        name = "mine"

    assert core.native_spec(Mine()) is None
    from policies.tdp import Tdp

    class MyTdp(Tdp):
        name = "my-tdp"

    assert core.native_spec(MyTdp()) is None and core.native_spec(Tdp()) is not None


def _recorded(run: GuestRun) -> tuple[OpRecording, oracle.Trace, object]:
    initial = run.guest.mem.copy()
    native = oracle.Recorder(run.guest.mem, run.guest.mode, list(run.cr3s))
    recording = OpRecording()
    native.run(recording.tee(run.ops, run.guest.mem))
    return recording, native.finish(), initial


def _compare(recording: OpRecording, trace: oracle.Trace, initial, mode, cr3s, spec: str) -> bool:
    """Replay in both; assert identical results. Returns whether the replay held (reads agreed)."""
    policy = make_policy(spec)
    reference = make_policy(spec)
    if getattr(policy, "needs_trace", False):
        policy.use_trace(trace)
        reference.use_trace(trace)
    got = core.replay(recording, policy, initial, mode.pae, cr3s)
    assert got is not False, f"{spec}: not run natively"
    mem = initial.copy()
    machine = machine_for(reference, mem, mode, list(cr3s))
    n = recording.run(machine.step, mem)
    if n is None:
        assert got is None, f"{spec}: the native replay held where the reference's reads differed"
        return False
    assert got is not None, f"{spec}: a read differed natively, not in the reference"
    want = machine.counters.as_dict()
    assert got.done == n
    assert got.counters == want, {k: (got.counters[k], v) for k, v in want.items()
                                  if got.counters[k] != v}
    for name in PROFILES:
        costs = profile(name)
        assert costs.price(got.counters) == costs.price(want), f"{spec}: cycles under {name}"
    assert got.marks == machine.marks, f"{spec}: marks differ"
    assert got.image() == mem.image(), f"{spec}: guest memory differs"
    return True


def _workloads() -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = [("kscand", {}), ("linear-scan", {}), ("fork-exit", {}),
                                   ("demand-paging", {})]
    out += [("kmap", {"pae": pae, "kernel": kernel}) for pae in (False, True)
            for kernel in KMAP_KERNELS + ("2.4", "2.6.12")]
    return out


@pytest.mark.parametrize("workload,params", _workloads(),
                         ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={x}" for k, x in v.items()) or "default")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_policy_on_every_workload_matches_the_reference(workload, params, seed):
    run = build_run(workload, {**params, "quick": True}, seed)
    mode, cr3s = run.guest.mode, list(run.cr3s)
    recording, trace, initial = _recorded(run)
    assert recording.usable
    held = [spec for spec in SPECS if _compare(recording, trace, initial, mode, cr3s, spec)]
    # only out-of-sync policies may leave a pte young that native execution cleared, so only
    # they may see other reads and generate their own stream (bench.cell)
    tlb_like = {s for s in SPECS if getattr(make_policy(s), "tlb_like", False)}
    assert set(SPECS) - set(held) <= tlb_like


def _recordings() -> list[str]:
    return sorted(p.stem for p in (ROOT / "recordings").glob("*.rec"))


@pytest.mark.parametrize("name", _recordings())
def test_every_policy_on_the_shipped_recordings_matches_the_reference(name):
    run = build_run("guest", {"recording": name, "events": 3000}, 0)
    mode, cr3s = run.guest.mode, list(run.cr3s)
    recording, trace, initial = _recorded(run)
    held = [spec for spec in SPECS if _compare(recording, trace, initial, mode, cr3s, spec)]
    # as on the synthetic workloads, only out-of-sync policies may find other reads
    tlb_like = {s for s in SPECS if getattr(make_policy(s), "tlb_like", False)}
    assert held and set(SPECS) - set(held) <= tlb_like


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), pae=st.booleans(), cpus=st.integers(1, 2),
       n=st.integers(20, 200))
def test_random_streams_match_the_reference(spec, seed, pae, cpus, n):
    rng = random.Random(seed)
    rg = build_guest(rng, pae, cpus)
    ops = random_ops(rng, rg, n)
    run = GuestRun(rg.guest, list(rg.cr3s), iter(ops))
    recording, trace, initial = _recorded(run)
    _compare(recording, trace, initial, rg.guest.mode, list(rg.cr3s), spec)


def _executions(make_run, trace: bool) -> tuple[dict, dict]:
    """The shared native execution of a run (bench.cell.run_cells: executor, tee, recording) in
    C and in Python: what each leaves (counters, trace, marks, memory, recorded operations and
    reads), to be compared."""
    out = []
    for native in (True, False):
        run = make_run()
        recording = OpRecording()
        mode = run.guest.mode
        if native:
            executor = core.native_execution(run.guest.mem, mode.pae, list(run.cr3s), trace)
            assert executor is not None, core.state()
        else:
            executor = (oracle.Recorder if trace else NativeMachine)(run.guest.mem, mode,
                                                                     list(run.cr3s))
        if native:
            executor.run_recorded(recording, run.ops, run.guest.mem)
        else:
            executor.run(recording.tee(run.ops, run.guest.mem))
        counters = executor.counters if native else executor.counters.as_dict()
        strip = lambda d: {k: v for k, v in d.items() if k != "exits"}  # derived, always 0
        out.append({
            "trace": executor.finish() if trace else None,
            "counters": strip(counters),
            "marks": [(phase, strip(snap)) for phase, snap in executor.marks],
            "memory": run.guest.mem.image(),
            # (instruction ids are the recording's own: compare the operations they name)
            "ops": list(recording.replay()) if recording.usable else None,
            "reads": [list(map(list, c)) for c in recording.read_columns()] if recording.usable
            else None,
            "usable": recording.usable,
            "count": recording.count,
        })
    return out[0], out[1]


@pytest.mark.parametrize("workload,params", _workloads()[:6] + [
    ("guest", {"recording": "mixed-686-pae", "events": 20000}),
    ("guest", {"recording": "fork-exit-686", "events": 20000})],
    ids=lambda v: v if isinstance(v, str) else
    ",".join(f"{k}={x}" for k, x in v.items()) or "default")
@pytest.mark.parametrize("trace", [True, False])
def test_the_native_execution_and_recording_match_the_reference(workload, params, trace):
    quick = {} if workload == "guest" else {"quick": True}
    native, python = _executions(lambda: build_run(workload, {**params, **quick}, 1), trace)
    assert python["count"] > 0 and python["usable"]
    for key in python:
        assert native[key] == python[key], f"{key} differs"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), pae=st.booleans(), cpus=st.integers(1, 2),
       n=st.integers(20, 200), trace=st.booleans())
def test_the_native_execution_of_random_streams_matches_the_reference(seed, pae, cpus, n, trace):
    def make_run():
        rng = random.Random(seed)
        rg = build_guest(rng, pae, cpus)
        return GuestRun(rg.guest, list(rg.cr3s), iter(random_ops(rng, rg, n)))

    native, python = _executions(make_run, trace)
    for key in python:
        assert native[key] == python[key], f"{key} differs"


def test_a_differing_read_stops_the_native_replay_as_the_reference():
    """A recording whose reads no longer hold on the policy's memory (here: a word changed in
    the initial memory) is refused by both: the policy then generates its own stream."""
    run = build_run("kscand", {"quick": True}, 0)
    recording, trace, initial = _recorded(run)
    reads = next(recording.read_columns())
    gpa, value = reads[2][0], reads[4][0]
    changed = initial.copy()
    changed.write32(gpa & ~3, (changed.read32(gpa & ~3) ^ 0x1) & 0xFFFFFFFF)
    assert changed.read_entry(gpa, True) != value or changed.read32(gpa) != value
    assert core.replay(recording, make_policy("flood-count"), changed, run.guest.mode.pae,
                       list(run.cr3s)) is None
    reference = make_policy("flood-count")
    mem = changed.copy()
    machine = machine_for(reference, mem, run.guest.mode, list(run.cr3s))
    assert recording.run(machine.step, mem) is None


@pytest.mark.parametrize("workload,params", [
    ("kscand", {"quick": True}),
    ("linear-scan", {"quick": True, "pae": True}),
    ("kmap", {"quick": True, "kernel": "rhel3", "cpus": 2}),
    ("guest", {"recording": "fork-exit-686-pae", "events": 30_000}),
])
def test_run_cells_gives_the_same_records_natively_and_in_python(workload, params, monkeypatch):
    """The harness path (bench.cell.run_cells) all native (the generator, the shared execution
    and its recording, the replays, a policy's own stream) and all Python (the generator too)."""
    from bench.core import generators

    specs = ["flood-count", "accessed-clear", "always-emulate", "unsync", "oracle", "tdp"]
    native = list(run_cells(specs, workload, params, 1, record_oracle=True))
    monkeypatch.setattr(core, "replay", lambda *args: False)
    monkeypatch.setattr(core, "native_execution", lambda *args: None)
    monkeypatch.setattr(core, "generate", lambda *args: None)
    monkeypatch.setattr(generators, "enabled", False)
    python = list(run_cells(specs, workload, params, 1, record_oracle=True))
    assert native == python


def test_the_slow_path_is_announced_in_one_line(tmp_path):
    """Without the native core, `bench run` says so once on stderr, and still runs."""
    env = dict(os.environ, SHADOWBENCH_NATIVE="0")
    done = subprocess.run([sys.executable, "-m", "bench", "run", "-p", "always-emulate", "-w",
                           "kmap", "--quick", "--seeds", "1", "--no-progress", "--json", "-",
                           "--out", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "slow path" in line]
    assert len(lines) == 1 and "SHADOWBENCH_NATIVE=0" in lines[0], done.stderr
