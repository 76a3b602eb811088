"""The offline optimum: the record, its pricing, the lower-bound claim, and the oracle policy."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import ops, oracle
from bench.costs import DEFAULT_PROFILE, PROFILES
from bench.errors import BenchError
from bench.guest import USER_PTE
from bench.machine.native import NativeMachine
from bench.machine.paging import A, D
from bench.machine.shadow import ShadowMachine
from bench.oracle import Interval
from bench.registry import make_policy, policies
from bench.workload import GuestRun
from tests._streams import Scenario

PENRYN = PROFILES[DEFAULT_PROFILE]


def golden_ops(scn: Scenario) -> list[tuple]:
    """Two uses of table T0, kmap T0, clear A of both ptes, remap a third, use all three, kmap
    again (a write to the fixmap table F), clear A of the third (trailing write)."""
    v = scn.vaddrs  # v[0], v[2], v[4]: ptes 0, 1, 2 of one table
    t0 = scn.guest.page_table_for(scn.procs[0], v[0], allocate=False)
    out = [ops.load(0, v[0]), ops.load(0, v[2])]
    slot = scn.set_slot(0, t0, out)
    out += [ops.btr(0, slot, 5), ops.btr(0, slot + 4, 5),
            ops.store(0, slot + 8, 4, (scn.frames[7] << 12) | USER_PTE | A | D)]
    out += [ops.load(0, v[0]), ops.load(0, v[2]), ops.load(0, v[4]), ops.load(0, v[0])]
    slot = scn.set_slot(0, t0, out)
    out.append(ops.btr(0, slot + 8, 5))
    return out


def record_of(scn: Scenario, ops_list: list[tuple]) -> oracle.Trace:
    recorder = oracle.Recorder(scn.guest.mem, scn.guest.mode, scn.cr3s)
    recorder.run(ops_list)
    return recorder.finish()


def shadow_run(name: str, scn: Scenario, ops_list: list[tuple], tr: oracle.Trace | None = None,
               **params) -> dict[str, int]:
    policy = make_policy((name, params))
    if getattr(policy, "needs_trace", False):
        policy.use_trace(tr)
    m = ShadowMachine(scn.guest.mem, scn.guest.mode, scn.cr3s, policy)
    m.run(ops_list)
    return m.counters.as_dict()


def golden_scenario() -> Scenario:
    return Scenario(False, cpus=1, procs=1)


def test_golden_record():
    scn = golden_scenario()
    tr = record_of(scn, golden_ops(scn))
    t0 = scn.guest.page_table_for(scn.procs[0], scn.vaddrs[0], allocate=False)
    # T0: 3 writes, then a burst where ptes 0 and 1 (A cleared) fault anyway and pte 2 (remapped
    # with P and A) faults only if T0 was unshadowed; then one trailing write.
    # F (fixmap table): one write, then a burst whose only use is a write to T0 (not eligible).
    assert tr.tables == {t0: [Interval(3, 1, True), Interval(1, 0, False)],
                         scn.guest.fixmap_pt: [Interval(1, 0, True)]}
    # 4 roots + T0 + F + the direct page of the lowmem region; 2 cold faults on T0 + 2 forced
    assert (tr.creates, tr.faults, tr.violations) == (7, 4, 0)
    rec = oracle.compact(tr)
    assert rec["intervals"] == [[1, 0, 1], [3, 1, 1]] and rec["trailing"] == [[1, 1]]
    e, u, z, c, h = 1118 + 3500, 1118 + 2500, 1200, 2500, 1118 + 2500
    expected = 7 * c + 4 * h + min(e, u + z + c) + min(3 * e, u + z + c + h) + min(e, u + z)
    assert oracle.optimum_cycles(rec, PENRYN) == expected == 52144


def test_record_is_json_and_reprices():
    scn = golden_scenario()
    rec = oracle.record(GuestRun(scn.guest, scn.cr3s, iter(golden_ops(golden_scenario()))))
    assert json.loads(json.dumps(rec)) == rec
    for profile in PROFILES.values():
        assert oracle.optimum_cycles(rec, profile) > 0
    with pytest.raises(BenchError):
        oracle.optimum_cycles({**rec, "version": 99}, PENRYN)


def test_recorder_is_the_native_executor():
    a, b = golden_scenario(), golden_scenario()
    native = NativeMachine(a.guest.mem, a.guest.mode, a.cr3s)
    native.run(golden_ops(a))
    recorder = oracle.Recorder(b.guest.mem, b.guest.mode, b.cr3s)
    recorder.run(golden_ops(b))
    assert b.guest.mem.image() == a.guest.mem.image()
    assert recorder.counters.as_dict() == native.counters.as_dict()


def test_decision_cycles_is_the_sum_of_decision_causes():
    scn = golden_scenario()
    c = shadow_run("always-unshadow", scn, golden_ops(scn))
    by_cause = PENRYN.virtualization_cycles(c)
    assert oracle.decision_cycles(c, PENRYN) == sum(by_cause[k] for k in oracle.DECISION_CAUSES)
    assert oracle.decision_cycles(c, PENRYN) == (
        c["exit_ptwrite_unshadow"] * (1118 + 2500) + c["mmu_shadow_zapped"] * 1200
        + c["mmu_cache_miss"] * 2500 + c["exit_hidden_fault"] * (1118 + 2500))


def test_oracle_policy_replays_the_optimal_choices():
    tr = record_of(golden_scenario(), golden_ops(golden_scenario()))
    scn = golden_scenario()
    c = shadow_run("oracle", scn, golden_ops(scn), tr)
    # T0's first interval (3 writes, 1 refault) is cheaper unshadowed; the others are emulated
    assert c["exit_ptwrite_unshadow"] == 1 and c["exit_ptwrite_emulate"] == 2
    opt = oracle.optimum_cycles(oracle.compact(tr), PENRYN)
    mine = oracle.decision_cycles(c, PENRYN)
    assert mine >= opt
    for other in ("always-emulate", "always-unshadow"):
        s = golden_scenario()
        assert mine < oracle.decision_cycles(shadow_run(other, s, golden_ops(s)), PENRYN)


def test_oracle_policy_zaps_by_emulation_when_that_is_cheaper():
    """With an unshadow exit dearer than an emulation, the replay emulates the first write and
    zaps the table (on_pte_write), as the optimum's min(U, E) assumes."""
    profile = dataclasses.replace(PENRYN, ptwrite_unshadow=50_000)
    tr = record_of(golden_scenario(), golden_ops(golden_scenario()))
    policy = make_policy("oracle")
    policy.costs = oracle.unit_costs(profile)
    policy.use_trace(tr)
    scn = golden_scenario()
    m = ShadowMachine(scn.guest.mem, scn.guest.mode, scn.cr3s, policy)
    m.run(golden_ops(scn))
    c = m.counters.as_dict()
    assert c["exit_ptwrite_unshadow"] == 0 and c["mmu_flooded"] == 1
    assert oracle.decision_cycles(c, profile) >= oracle.optimum_cycles(oracle.compact(tr), profile)


def test_oracle_policy_needs_the_trace():
    scn = golden_scenario()
    with pytest.raises(BenchError, match="use_trace"):
        ShadowMachine(scn.guest.mem, scn.guest.mode, scn.cr3s, make_policy("oracle"))
    with pytest.raises(BenchError):
        make_policy("oracle").use_trace(oracle.Trace(violations=1))


def test_unshadow_choice_and_escapes():
    u = oracle.unit_costs(PENRYN)
    assert not oracle.unshadow_is_optimal(u, Interval(1, 0, True))
    assert oracle.unshadow_is_optimal(u, Interval(50, 3, True))
    assert not oracle.unshadow_is_optimal(u, Interval(50, 10_000, True))
    assert oracle.escapes_model({}, tdp=True)
    assert oracle.escapes_model({"mmu_unsync": 1})
    assert oracle.escapes_model({"insn_emulation_extra": 2})
    assert oracle.escapes_model({"exit_ptwrite_emulate": 5}) is None
    assert oracle.opt_ratio({"mmu_unsync": 1}, oracle.compact(oracle.Trace(creates=1)),
                            PENRYN) is None


ACTIONS = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 1), st.integers(0, 7),
                             st.integers(0, 3)), min_size=5, max_size=100)
COSTS = st.sampled_from([1, 10, 100, 1_000, 10_000, 100_000])
RANDOM_PROFILE = st.builds(
    lambda rt, hf, pe, pu, sc, sz, xe: dataclasses.replace(
        PENRYN, exit_roundtrip=rt, hidden_fault=hf, ptwrite_emulate=pe, ptwrite_unshadow=pu,
        shadow_page_create=sc, shadow_page_zap=sz, extra_emulation=xe),
    COSTS, COSTS, COSTS, COSTS, COSTS, COSTS, COSTS)


@settings(max_examples=40, deadline=None)
@given(pae=st.booleans(), pages=st.sampled_from([2, 6, 8]), actions=ACTIONS,
       profiles=st.lists(RANDOM_PROFILE, min_size=1, max_size=3))
def test_no_policy_beats_the_optimum(pae, pages, actions, profiles):
    """Every registered shadow-paging policy pays at least the optimum on the covered costs, under
    the shipped profiles and random ones; runs that escape the model (out-of-sync pages,
    batched emulation, tdp) are excluded, as docs/oracle.md states."""
    ops_list = Scenario(pae, pages=pages).ops_from(actions)
    tr = record_of(Scenario(pae, pages=pages), ops_list)
    rec = oracle.compact(tr)
    assert rec["violations"] == 0
    checked = set()
    for name in policies():
        if make_policy(name).mmu_config(pae).tdp:
            continue
        c = shadow_run(name, Scenario(pae, pages=pages), ops_list, tr)
        if oracle.escapes_model(c):
            assert name not in ("always-emulate", "always-unshadow", "ski-rental",
                                "ski-rental-random", "oracle")
            continue
        checked.add(name)
        for profile in [*PROFILES.values(), *profiles]:
            assert oracle.decision_cycles(c, profile) >= oracle.optimum_cycles(rec, profile), (
                name, profile.name)
    assert {"always-emulate", "always-unshadow", "oracle", "ski-rental"} <= checked
