"""Cells: a policy on a workload with one seed -> counters (simulation only, no pricing).

Every policy of one (workload, parameters, seed) runs the same guest, and the workload's stream
depends only on its seed and on what the kernel reads of guest memory while generating it. A
policy that is not ``tlb_like`` leaves guest memory exactly as native execution does after every
operation (the conformance test checks it for every registered policy), so the kernel reads the
same values under it and generates the very same operations. ``run_cells`` uses that: it
executes the guest run once natively (with the oracle's recorder when a record or the oracle
policy needs it), records the operations and the reads between them (bench.recording), and
replays the recording to each policy on a fresh copy of the initial guest memory, repeating
every read there: if one differs, the policy's guest would have gone another way, and the policy
is run again on a stream generated for it alone. A result therefore never depends on the
shortcut. ``tlb_like`` policies (out-of-sync pages, two-dimensional paging) may leave an accessed
bit clear that the native guest sees set, but the reads decide, for them as for the others: on
kscand, xen-oos and tdp read what the native guest reads to the end (their A bits differ only
where the kernel never looks), while KVM's unsync is caught two thirds of the way through the
run (its first pass leaves ptes young that natively were cleared) and generates its own.

Every simulation here (the native run, each policy's replay or generated run) runs with the
cyclic garbage collector paused (``gc_paused``): a guest run allocates many objects that
live until it ends, which the collector's repeated full collections walked for little (issue
17's profile of the compiled build: about a fifth of a single-cell run); one collection after
each simulation frees what it left in cycles (an executor, its policy, its shadow pages and
their parents; a full collection only when the block made a Python executor), so
memory stays that of one policy's run at a time (docs/performance.md).

With the native core built (bench.core), the native run, the oracle's record and the recording
run in one C loop (``_record``), a built-in policy's replay runs in C (``_replayed``), and so
does a built-in policy's run on a stream of its own when the workload generates in C (kscand,
linear-scan: ``_generate``, bench.core.generate); the Python executors remain the reference and
run everything else. Both give the same results
(tests/test_native_core.py).
"""

from __future__ import annotations

import gc
import random
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bench import core, oracle
from bench.machine.memory import GuestMemory
from bench.machine.native import NativeMachine
from bench.machine.paging import Mode
from bench.machine.shadow import ShadowMachine
from bench.policy import Policy
from bench.recording import OpRecording
from bench.registry import make_policy, make_workload
from bench.workload import GuestRun

PolicySpec = str | tuple[str, dict[str, Any]]
NATIVE_RUN_NOTE = "shadowbench: raised during the native run of the guest"
"""The note (PEP 678) on an exception raised while the shared native run executes: the workload
or the simulator raised, not a policy (bench.runner names the cell from it)."""


@dataclass
class CellResult:
    """What one simulation produced: counters, counter snapshots at MARK ops, derived sizes."""

    guest_ops: int
    counters: dict[str, int]
    marks: list[tuple[int, dict[str, int]]] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)


_python_executors = 0
"""Python executors made so far in this process (``python_executor``)."""


def python_executor(executor: Any) -> Any:
    """``executor``, a Python one (shadow, tdp, native or the oracle's recorder), counted: the
    collection that ends a gc_paused block around it is a full one."""
    global _python_executors
    _python_executors += 1
    return executor


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector disabled inside the block; afterwards, even when the block
    raises, its previous state is restored and, if it was enabled, one collection frees the
    cycles the block left (call it around a simulation whose executor is already unreachable
    when the block ends, so that its shadow pages are freed). The collection is a full one when
    a Python executor was made in the block (``python_executor``: its shadow pages' cycle runs
    through the policy, made before the block, in an older generation); else, as after a native
    core's run, which leaves no such cycles, only the youngest generation is collected (a full
    one walks every object of the process: it cost about 2.7 s of the default run's 28 s of CPU
    when every simulation ended with one)."""
    enabled = gc.isenabled()
    made = _python_executors
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
            gc.collect(2 if _python_executors != made else 0)


def build_run(workload: str, params: dict[str, Any], seed: int) -> GuestRun:
    """The guest and its operation stream for (workload, params, seed): the same for every policy."""
    return make_workload(workload, params).build(random.Random(seed))


def machine_for(policy: Policy | None, mem: GuestMemory, mode: Mode, cr3s: list[int]):
    """The executor a policy runs on: native (None), shadow, or two-dimensional paging."""
    if policy is None:
        return python_executor(NativeMachine(mem, mode, cr3s))
    if policy.mmu_config(mode.pae).tdp:
        from bench.machine.tdp import TdpMachine

        return python_executor(TdpMachine(mem, mode, cr3s, policy))
    return python_executor(ShadowMachine(mem, mode, cr3s, policy))


def executor_for(run: GuestRun, policy: Policy | None):
    """The executor for ``policy`` on ``run``'s guest."""
    return machine_for(policy, run.guest.mem, run.guest.mode, run.cr3s)


def count_ops(ops: Iterable[tuple], step) -> int:
    """Run ``step`` on every op; return how many operations (MARKs included) ran."""
    n = 0
    for op in ops:
        step(op)
        n += 1
    return n


def _result(counts: dict[str, int], marks: list, n: int, sizes: dict[str, int]) -> CellResult:
    """The cell of ``n`` operations (MARKs included) that left these counters and marks."""
    return CellResult(n - len(marks), counts, list(marks), dict(sizes))


def _generated(policy: Policy | None, workload: str, params: dict[str, Any], seed: int,
               check: bool = False) -> CellResult:
    """Run ``policy`` (None: natively) on a freshly built run that generates its own stream."""
    with gc_paused():
        return _generate(policy, workload, params, seed, check)


def _generate(policy: Policy | None, workload: str, params: dict[str, Any], seed: int,
              check: bool) -> CellResult:
    run = build_run(workload, params, seed)
    if policy is not None and not check:
        done = core.generate(run, policy)  # a native policy on a native scan stream, in C
        if done is not None:
            return _result(done.counters, done.marks, done.done, run.sizes)
    machine = executor_for(run, policy)
    step = machine.step
    if check and isinstance(machine, ShadowMachine):
        from bench.machine.invariants import check_shadow

        def step(op, _step=machine.step):
            _step(op)
            check_shadow(machine)
    n = count_ops(run.ops, step)
    return _result(machine.counters.as_dict(), machine.marks, n, run.sizes)


def run_cells(policy_specs: Sequence[PolicySpec], workload: str, params: dict[str, Any],
              seed: int, record_oracle: bool = False) -> Iterator[tuple[int, Any]]:
    """Simulate every policy on the (workload, params, seed) run, sharing one native execution.

    Yields ``(-1, record)`` first when ``record_oracle`` (bench.oracle.record's compact record),
    then ``(i, CellResult)`` for policy ``i`` as each finishes, in order. The results are the
    ones ``run_cell`` gives each policy alone."""
    policies: list[Policy | None] = [make_policy(spec) for spec in policy_specs]
    need_trace = record_oracle or any(getattr(p, "needs_trace", False) for p in policies)
    if not need_trace and len(policies) < 2:  # nothing to share: the policy generates its stream
        for i in range(len(policies)):
            with gc_paused():
                result = _generated(_take(policies, i), workload, params, seed)
            yield i, result
        return

    with gc_paused():
        run = build_run(workload, params, seed)
        initial = run.guest.mem.copy()
    with OpRecording() as recording:
        with gc_paused():
            trace = _record(run, recording, need_trace)
        if record_oracle:
            yield -1, oracle.compact(trace)
        for i in range(len(policies)):
            # The policy is taken out of the list: once its run returns, nothing refers to it or
            # to the executor it is attached to, and the pause's collection frees them.
            with gc_paused():
                result = _policy_run(_take(policies, i), policy_specs[i], trace, recording,
                                     initial, run, workload, params, seed)
            yield i, result


def _take(policies: list[Policy | None], i: int) -> Policy:
    """Policy ``i``, its slot emptied (the list no longer keeps it, or its executor, alive)."""
    policy = policies[i]
    assert policy is not None
    policies[i] = None
    return policy


def _policy_run(policy: Policy, spec: PolicySpec, trace: Any, recording: OpRecording,
                initial: GuestMemory, run: GuestRun, workload: str, params: dict[str, Any],
                seed: int) -> CellResult:
    """``policy`` replaying the recorded run, or on a stream of its own if a read differed."""
    if getattr(policy, "needs_trace", False):
        policy.use_trace(trace)
    if recording.usable:
        result = _replayed(policy, recording, initial, run.guest.mode, list(run.cr3s), run.sizes)
        if result is not None:
            return result
        policy = make_policy(spec)  # a read differed: generate (fresh state)
        if getattr(policy, "needs_trace", False):
            policy.use_trace(trace)
    return _generated(policy, workload, params, seed)


def _record(run: GuestRun, recording: OpRecording, need_trace: bool) -> Any:
    """Execute ``run`` natively into ``recording``; the oracle's trace when ``need_trace``."""
    mode, cr3s = run.guest.mode, list(run.cr3s)
    fast = core.native_execution(run.guest.mem, mode.pae, cr3s, need_trace)
    native = fast or python_executor((oracle.Recorder if need_trace else NativeMachine)(
        run.guest.mem, mode, cr3s))
    try:
        if fast is not None:  # the native core: execution, the oracle's record and tee in C
            fast.run_recorded(recording, run.ops, run.guest.mem)
        else:
            native.run(recording.tee(run.ops, run.guest.mem))
        return native.finish() if need_trace else None
    except Exception as err:
        err.add_note(NATIVE_RUN_NOTE)
        raise


def _replayed(policy: Policy, recording: OpRecording, initial: GuestMemory, mode: Mode,
              cr3s: list[int], sizes: dict[str, int]) -> CellResult | None:
    """``policy`` on the recording, from a copy of the initial memory; None if a read differed.
    The native core replays it when it runs this policy (bench.core), else the Python executor."""
    done = core.replay(recording, policy, initial, mode.pae, cr3s)
    if done is not False:
        return None if done is None else _result(done.counters, done.marks, done.done, sizes)
    mem = initial.copy()
    machine = machine_for(policy, mem, mode, cr3s)
    n = recording.run(machine.step, mem)
    return None if n is None else _result(machine.counters.as_dict(), machine.marks, n, sizes)


def run_cell(policy_spec: PolicySpec | None, workload: str, params: dict[str, Any], seed: int,
             check: bool = False) -> CellResult:
    """Simulate one cell. ``policy_spec`` None runs natively. A policy that replays the run
    (``needs_trace``, the oracle) is handed the run's native recording first. ``check`` runs the
    invariant checker after every operation (slow; for tests)."""
    if policy_spec is None:
        return _generated(None, workload, params, seed)
    if not check:
        return next(run_cells([policy_spec], workload, params, seed))[1]
    policy = make_policy(policy_spec)
    if getattr(policy, "needs_trace", False):
        policy.use_trace(oracle.trace(build_run(workload, params, seed)))
    return _generated(policy, workload, params, seed, check=True)
