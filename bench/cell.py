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
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
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


def build_run(workload: str, params: dict[str, Any], seed: int) -> GuestRun:
    """The guest and its operation stream for (workload, params, seed): the same for every policy."""
    return make_workload(workload, params).build(random.Random(seed))


def machine_for(policy: Policy | None, mem: GuestMemory, mode: Mode, cr3s: list[int]):
    """The executor a policy runs on: native (None), shadow, or two-dimensional paging."""
    if policy is None:
        return NativeMachine(mem, mode, cr3s)
    if policy.mmu_config(mode.pae).tdp:
        from bench.machine.tdp import TdpMachine

        return TdpMachine(mem, mode, cr3s, policy)
    return ShadowMachine(mem, mode, cr3s, policy)


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


def _result(machine, n: int, sizes: dict[str, int]) -> CellResult:
    """The cell of an executor (its ``counters`` a Counters) or of a bench.core.NativeRun (a
    counters dict)."""
    counters = machine.counters
    marks = list(machine.marks)
    counts = counters if isinstance(counters, dict) else counters.as_dict()
    return CellResult(n - len(marks), counts, marks, dict(sizes))


def _generated(policy: Policy | None, workload: str, params: dict[str, Any], seed: int,
               check: bool = False) -> CellResult:
    """Run ``policy`` (None: natively) on a freshly built run that generates its own stream."""
    run = build_run(workload, params, seed)
    machine = executor_for(run, policy)
    step = machine.step
    if check and isinstance(machine, ShadowMachine):
        from bench.machine.invariants import check_shadow

        def step(op, _step=machine.step):
            _step(op)
            check_shadow(machine)
    return _result(machine, count_ops(run.ops, step), run.sizes)


def run_cells(policy_specs: Sequence[PolicySpec], workload: str, params: dict[str, Any],
              seed: int, record_oracle: bool = False) -> Iterator[tuple[int, Any]]:
    """Simulate every policy on the (workload, params, seed) run, sharing one native execution.

    Yields ``(-1, record)`` first when ``record_oracle`` (bench.oracle.record's compact record),
    then ``(i, CellResult)`` for policy ``i`` as each finishes, in order. The results are the
    ones ``run_cell`` gives each policy alone."""
    policies = [make_policy(spec) for spec in policy_specs]
    need_trace = record_oracle or any(getattr(p, "needs_trace", False) for p in policies)
    if not need_trace and len(policies) < 2:  # nothing to share: the policy generates its stream
        for i, policy in enumerate(policies):
            yield i, _generated(policy, workload, params, seed)
        return

    run = build_run(workload, params, seed)
    mode, cr3s = run.guest.mode, list(run.cr3s)
    initial = run.guest.mem.copy()
    fast = core.native_execution(run.guest.mem, mode.pae, cr3s, need_trace)
    native = fast or (oracle.Recorder if need_trace else NativeMachine)(run.guest.mem, mode, cr3s)
    with OpRecording() as recording:
        try:
            if fast is not None:
                fast.run_recorded(recording, run.ops, run.guest.mem)
            else:
                native.run(recording.tee(run.ops, run.guest.mem))
            trace = native.finish() if need_trace else None
        except Exception as err:
            err.add_note(NATIVE_RUN_NOTE)
            raise
        if record_oracle:
            yield -1, oracle.compact(trace)
        for i, policy in enumerate(policies):
            if getattr(policy, "needs_trace", False):
                policy.use_trace(trace)
            if recording.usable:
                done = core.replay(recording, policy, initial, mode.pae, cr3s)
                if done is False:  # not a policy the native core runs: the Python executor
                    mem = initial.copy()
                    machine = machine_for(policy, mem, mode, cr3s)
                    n = recording.run(machine.step, mem)
                    if n is not None:
                        yield i, _result(machine, n, run.sizes)
                        continue
                elif done is not None:
                    yield i, _result(done, done.done, run.sizes)
                    continue
                policy = make_policy(policy_specs[i])  # a read differed: generate (fresh state)
                if getattr(policy, "needs_trace", False):
                    policy.use_trace(trace)
            yield i, _generated(policy, workload, params, seed)


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
