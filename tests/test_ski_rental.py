"""Ski rental: the bounds on the abstract problem, and the two policies in the shadow MMU."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import ops
from bench.costs import DEFAULT_PROFILE, PROFILES
from bench.errors import BenchError
from bench.machine.shadow import ShadowMachine
from bench.registry import make_policy
from bench.ski_rental import (E_RATIO, buy_cost, draw_threshold, expected_online_cost,
                              karlin_probabilities, offline_cost, online_cost, rent_cost,
                              threshold)
from tests._streams import Scenario

RENT = st.integers(1, 50_000)
BUY = st.integers(1, 500_000)
WRITES = st.lists(st.integers(1, 200), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(rent=RENT, buy=BUY, intervals=WRITES)
def test_deterministic_is_under_twice_the_optimum(rent, buy, intervals):
    k = threshold(buy, rent)
    for w in intervals:
        assert online_cost(k, w, rent, buy) < 2 * offline_cost(w, rent, buy)
    alg = sum(online_cost(k, w, rent, buy) for w in intervals)
    assert alg < 2 * sum(offline_cost(w, rent, buy) for w in intervals)


@settings(max_examples=300, deadline=None)
@given(rent=RENT, buy=BUY, rebuild_share=st.floats(0, 1), w=st.integers(1, 200))
def test_deterministic_trailing_interval_is_within_the_rebuild_cost(rent, buy, rebuild_share, w):
    """No use after the writes (the run ended): unshadowing costs only its first part A; the
    deterministic rule pays at most 2 x the optimum plus the rebuild part R = buy - A."""
    rebuild = int(buy * rebuild_share)
    unshadow = buy - rebuild
    k = threshold(buy, rent)
    alg = w * rent if w < k else (k - 1) * rent + unshadow
    assert alg <= 2 * min(w * rent, unshadow) + rebuild


@settings(max_examples=200, deadline=None)
@given(rent=st.integers(1, 5_000), ratio=st.integers(0, 60), rest=st.integers(0, 5_000))
def test_randomized_expectation_is_within_e_over_e_minus_1(rent, ratio, rest):
    buy = max(1, ratio * rent + rest % rent)
    probs = karlin_probabilities(buy, rent)
    assert all(p >= 0 for p in probs) and sum(probs) == pytest.approx(1, abs=1e-12)
    for w in range(1, len(probs) + 3):
        expected = expected_online_cost(probs, w, rent, buy)
        assert expected <= E_RATIO * offline_cost(w, rent, buy) * (1 + 1e-9)


def test_randomized_draws_follow_the_distribution_and_repeat():
    rent, buy = 1000, 7500
    probs = karlin_probabilities(buy, rent)
    draws = [draw_threshold(random.Random(3), buy, rent) for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same draw
    rng = random.Random(0)
    n = 40_000
    counts = [0] * len(probs)
    for _ in range(n):
        counts[draw_threshold(rng, buy, rent) - 1] += 1
    for p, c in zip(probs, counts):
        assert abs(c / n - p) < 0.01


def test_costs_from_the_profile():
    p = PROFILES[DEFAULT_PROFILE]
    assert rent_cost(p) == 1118 + 3500
    assert buy_cost(p) == (1118 + 2500) + (1118 + 2500) + 1200 + 2500 + (1118 + 2500)
    assert threshold(buy_cost(p), rent_cost(p)) == 4  # 14554 / 4618 = 3.15
    assert threshold(5, 10) == 1 and threshold(10, 10) == 1 and threshold(11, 10) == 2


# --------------------------------------------------------------------------- in the shadow MMU
def clears(scn: Scenario, n: int, use_between: int | None = None) -> list[tuple]:
    """Use n user pages of one table, kmap it once, clear the accessed bit of each pte through
    the slot; optionally use a page again after ``use_between`` clears."""
    g = scn.guest
    vaddrs = scn.vaddrs[0::2][:n]
    table = g.page_table_for(scn.procs[0], vaddrs[0], allocate=False)
    out = [ops.load(0, v) for v in vaddrs]
    slot = scn.set_slot(0, table, out)
    for i, v in enumerate(vaddrs):
        if i == use_between:
            out.append(ops.load(0, vaddrs[0]))
        out.append(ops.btr(0, slot + scn.pte_index(v) * scn.esize, 5))
    return out


def run(name: str, scn: Scenario, ops_list: list[tuple], **params) -> dict[str, int]:
    m = ShadowMachine(scn.guest.mem, scn.guest.mode, scn.cr3s, make_policy((name, params)))
    m.run(ops_list)
    return m.counters.as_dict()


@pytest.mark.parametrize("pae", [False, True])
def test_unshadows_at_the_kth_write_since_the_last_use(pae):
    scn = Scenario(pae, cpus=1, procs=1, pages=16)
    c = run("ski-rental", scn, clears(scn, 8))
    assert (c["exit_ptwrite_emulate"], c["exit_ptwrite_unshadow"]) == (3, 1)  # k = 4


def test_a_use_restarts_the_count():
    scn = Scenario(False, cpus=1, procs=1, pages=16)
    # the use after 2 clears faults (its A was cleared): the count starts again, so writes
    # 3..6 are the new interval's 1..4 and the 6th write unshadows
    c = run("ski-rental", scn, clears(scn, 8, use_between=2))
    assert (c["exit_ptwrite_emulate"], c["exit_ptwrite_unshadow"]) == (5, 1)


def test_a_use_through_a_speculative_spte_counts():
    """An emulated write that leaves P and A installs a speculative spte; a guest access through
    it sets its shadow accessed bit without an exit, seen at the table's next trapping write."""
    scn = Scenario(False, cpus=1, procs=1, pages=16)
    g = scn.guest
    v = scn.vaddrs[0::2][:6]
    table = g.page_table_for(scn.procs[0], v[0], allocate=False)
    out = [ops.load(0, x) for x in v]
    slot = scn.set_slot(0, table, out)
    remap = (scn.frames[1] << 12) | 0x7 | 0x20  # P|RW|US|A
    out += [ops.store(0, slot + scn.pte_index(v[5]) * 4, 4, remap), ops.invlpg(0, v[5]),
            ops.btr(0, slot + scn.pte_index(v[1]) * 4, 5),
            ops.load(0, v[5])]  # hits the speculative spte: no exit
    out += [ops.btr(0, slot + scn.pte_index(x) * 4, 5) for x in v[2:5]]
    c = run("ski-rental", scn, out)
    assert (c["exit_ptwrite_emulate"], c["exit_ptwrite_unshadow"]) == (5, 0)


def test_randomized_policy_is_seeded_and_private():
    state = random.getstate()
    results = []
    for seed in (0, 0, 1, 2, 3, 4):
        scn = Scenario(False, cpus=1, procs=1, pages=16)
        ops_list = clears(scn, 8) + clears(scn, 8)
        c = run("ski-rental-random", scn, ops_list, seed=seed)
        results.append((c["exit_ptwrite_emulate"], c["exit_ptwrite_unshadow"]))
    assert random.getstate() == state
    assert results[0] == results[1]
    assert all(u >= 1 for _, u in results)


def test_parameters_are_validated():
    with pytest.raises(BenchError):
        make_policy("ski-rental:cost_profile=pentium9")
    with pytest.raises(BenchError):
        make_policy("ski-rental-random:seed=x")
    assert make_policy("ski-rental-random:seed=7,cost_profile=skylake-2015").rent == 620 + 2200
