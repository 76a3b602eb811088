"""One cell: a policy on a workload with one seed -> counters (simulation only, no pricing)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from bench.machine.counters import Counters
from bench.machine.native import NativeMachine
from bench.machine.shadow import ShadowMachine
from bench.policy import Policy
from bench.registry import make_policy, make_workload
from bench.workload import GuestRun


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


def executor_for(run: GuestRun, policy: Policy | None):
    """The executor a policy runs on: native (None), shadow, or two-dimensional paging."""
    guest = run.guest
    if policy is None:
        return NativeMachine(guest.mem, guest.mode, run.cr3s)
    if policy.mmu_config(guest.pae).tdp:
        from bench.machine.tdp import TdpMachine

        return TdpMachine(guest.mem, guest.mode, run.cr3s, policy)
    return ShadowMachine(guest.mem, guest.mode, run.cr3s, policy)


def count_ops(ops, step) -> int:
    """Run ``step`` on every op; return how many guest operations (MARKs excluded) ran."""
    n = 0
    for op in ops:
        step(op)
        n += 1
    return n


def run_cell(policy_spec: str | tuple[str, dict[str, Any]] | None, workload: str,
             params: dict[str, Any], seed: int, check: bool = False) -> CellResult:
    """Simulate one cell. ``policy_spec`` None runs natively. A policy that replays the run
    (``needs_trace``, the oracle) is handed the run's native recording first. ``check`` runs the
    invariant checker after every operation (slow; for tests)."""
    policy = None if policy_spec is None else make_policy(policy_spec)
    if getattr(policy, "needs_trace", False):
        # a replaying policy (the oracle) gets the native recording of the same guest run first
        from bench import oracle

        policy.use_trace(oracle.trace(build_run(workload, params, seed)))
    run = build_run(workload, params, seed)
    machine = executor_for(run, policy)
    if check and isinstance(machine, ShadowMachine):
        from bench.machine.invariants import check_shadow

        def step(op, _step=machine.step):
            _step(op)
            check_shadow(machine)
    else:
        step = machine.step
    n = count_ops(run.ops, step)
    counters: Counters = machine.counters
    marks = list(machine.marks)
    return CellResult(n - len(marks), counters.as_dict(), marks, dict(run.sizes))
