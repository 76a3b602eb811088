"""The two-dimensional paging executor and the tdp policy."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import ops
from bench.cell import executor_for
from bench.errors import BenchError
from bench.machine.counters import NATIVE_COUNTERS
from bench.machine.native import NativeMachine
from bench.machine.shadow import ShadowMachine
from bench.machine.tdp import TdpMachine, walk_refs
from bench.registry import make_policy
from bench.workload import GuestRun
from tests._streams import Scenario, masked_image


def machine(scn: Scenario, tlb_entries: int = 64) -> TdpMachine:
    policy = make_policy(("tdp", {"tlb_entries": tlb_entries}))
    return TdpMachine(scn.guest.mem, scn.guest.mode, scn.cr3s, policy)


def test_walk_refs_formula():
    assert walk_refs(4) == 24  # x86-64 guest: Gandhi et al., MICRO 2014 (costs.md 5)
    assert walk_refs(2) == 14
    assert walk_refs(1) == 9


@pytest.mark.parametrize("pae", [False, True])
def test_miss_hit_and_dirty_rewalk(pae):
    scn = Scenario(pae, cpus=1)
    m = machine(scn)
    v = scn.vaddrs[0]
    m.run([ops.load(0, v), ops.load(0, v + 8)])
    c = m.counters
    assert (c.tdp_tlb_miss, c.tdp_walk_refs, c.native_walk_refs) == (1, 14, 2)
    # the pte was loaded clean: the first store re-walks to set D, the second hits
    m.run([ops.store(0, v, 4, 5), ops.store(0, v + 4, 4, 6)])
    assert (c.tdp_tlb_miss, c.tdp_walk_refs, c.native_walk_refs) == (2, 28, 4)
    pte = scn.guest.mem.read_entry(scn.guest.pte_gpa(scn.procs[0], v), pae)
    assert pte & 0x60 == 0x60
    assert c.as_dict()["exits"] == 0


@pytest.mark.parametrize("pae", [False, True])
def test_large_page_walk_is_one_level_shorter(pae):
    scn = Scenario(pae, cpus=1)
    m = machine(scn)
    m.run([ops.store(0, scn.data_kvaddr, 4, 1), ops.load(0, scn.data_kvaddr + 4)])
    c = m.counters
    assert (c.tdp_tlb_miss, c.tdp_walk_refs, c.native_walk_refs) == (1, 9, 1)


def test_lru_eviction():
    scn = Scenario(False, cpus=1)
    m = machine(scn, tlb_entries=2)
    a, b, c3 = scn.vaddrs[0], scn.vaddrs[2], scn.vaddrs[4]
    m.run([ops.load(0, a), ops.load(0, b), ops.load(0, a), ops.load(0, c3)])  # c3 evicts b
    assert m.counters.tdp_tlb_miss == 3
    m.run([ops.load(0, a)])
    assert m.counters.tdp_tlb_miss == 3
    m.run([ops.load(0, b)])
    assert m.counters.tdp_tlb_miss == 4


def test_invlpg_drops_one_entry_and_causes_no_exit():
    scn = Scenario(False, cpus=1)
    m = machine(scn)
    a, b = scn.vaddrs[0], scn.vaddrs[1]
    m.run([ops.load(0, a), ops.load(0, b), ops.invlpg(0, a), ops.load(0, a), ops.load(0, b)])
    d = m.counters.as_dict()
    assert d["tdp_tlb_miss"] == 3
    assert d["exits"] == 0 and d["invlpg"] == 0 and d["native_invlpg"] == 1


def test_cr3_load_keeps_global_entries():
    scn = Scenario(False, cpus=1)
    m = machine(scn)
    g = scn.guest
    table = g.page_table_for(scn.procs[0], scn.vaddrs[0], allocate=False)
    out: list = []
    slot = scn.set_slot(0, table, out)
    m.run(out)
    m.run([ops.load(0, slot), ops.load(0, scn.vaddrs[0])])
    before = m.counters.tdp_tlb_miss
    m.run([ops.cr3(0, scn.procs[0].cr3), ops.load(0, slot), ops.load(0, scn.vaddrs[0])])
    assert m.counters.tdp_tlb_miss == before + 1  # the kmap slot pte is global (KMAP_PROT)
    assert m.counters.as_dict()["exits"] == 0


def test_failed_walk_is_a_guest_fault_and_leaves_memory_alone():
    scn = Scenario(False, cpus=1)
    m = machine(scn)
    unmapped = scn.vaddrs[0] + 0x100000  # same page table, pte not present
    before = scn.guest.mem.image()
    m.run([ops.store(0, unmapped, 4, 1), ops.load(0, 0x30000000)])  # second: no page table
    c = m.counters
    assert c.native_page_fault == 2
    assert scn.guest.mem.image() == before
    assert (c.tdp_walk_refs, c.native_walk_refs) == (2 * 5 + 1 * 5, 3)


def test_write_to_read_only_hit_rewalks_and_faults():
    scn = Scenario(False, cpus=1)
    g = scn.guest
    v = scn.vaddrs[0]
    g.set_pte_direct(scn.procs[0], v, scn.frames[0], flags=0x5 | 0x20)  # P|US|A, read-only
    m = machine(scn)
    m.run([ops.load(0, v), ops.store(0, v, 4, 9)])
    assert m.counters.tdp_tlb_miss == 2 and m.counters.native_page_fault == 1


def test_accessed_bit_stays_clear_while_the_entry_lives():
    """Why tdp is tlb_like: kscand clears A, the next access hits the TLB and does not set it."""
    scn = Scenario(False, cpus=1)
    g = scn.guest
    v = scn.vaddrs[0]
    table = g.page_table_for(scn.procs[0], v, allocate=False)
    out: list = [ops.load(0, v)]
    slot = scn.set_slot(0, table, out)
    out.append(ops.btr(0, slot + scn.pte_index(v) * 4, 5))
    out.append(ops.load(0, v))
    m = machine(scn)
    m.run(out)
    pte_gpa = g.pte_gpa(scn.procs[0], v)
    assert not g.mem.read32(pte_gpa) & 0x20
    m.run([ops.invlpg(0, v), ops.load(0, v)])
    assert g.mem.read32(pte_gpa) & 0x20
    assert make_policy("tdp").tlb_like


def test_marks_snapshot_counters():
    scn = Scenario(False, cpus=1)
    m = machine(scn)
    m.run([ops.load(0, scn.vaddrs[0]), ops.mark(0, 1), ops.load(0, scn.vaddrs[1])])
    assert [(p, d["tdp_tlb_miss"]) for p, d in m.marks] == [(1, 1)]


def test_policy_params_and_dispatch():
    policy = make_policy("tdp:tlb_entries=8")
    cfg = policy.mmu_config(False)
    assert cfg.tdp and cfg.tlb_entries == 8
    assert make_policy("tdp").mmu_config(True).tlb_entries == 64
    with pytest.raises(BenchError):
        make_policy("tdp:tlb_entries=0")
    scn = Scenario(True, cpus=1)
    run = GuestRun(scn.guest, scn.cr3s, iter(()))
    assert isinstance(executor_for(run, policy), TdpMachine)
    with pytest.raises(BenchError):
        ShadowMachine(scn.guest.mem, scn.guest.mode, scn.cr3s, policy)
    with pytest.raises(BenchError):
        TdpMachine(scn.guest.mem, scn.guest.mode, scn.cr3s, make_policy("always-emulate"))


ACTIONS = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 1), st.integers(0, 7),
                             st.integers(0, 3)), min_size=5, max_size=80)


@settings(max_examples=40, deadline=None)
@given(pae=st.booleans(), actions=ACTIONS, tlb=st.sampled_from([1, 2, 4, 64]))
def test_same_guest_memory_as_native_up_to_accessed_dirty(pae, actions, tlb):
    native_scn, tdp_scn = Scenario(pae), Scenario(pae)
    ops_list = native_scn.ops_from(actions)
    assert ops_list == tdp_scn.ops_from(actions)
    native = NativeMachine(native_scn.guest.mem, native_scn.guest.mode, native_scn.cr3s)
    native.run(ops_list)
    m = machine(tdp_scn, tlb)
    m.run(ops_list)
    tables = set(native_scn.guest.mem.tables)
    assert masked_image(tdp_scn.guest.mem, tables, pae) == masked_image(
        native_scn.guest.mem, tables, pae)
    n, t = native.counters.as_dict(), m.counters.as_dict()
    assert {k: n[k] for k in NATIVE_COUNTERS} == {k: t[k] for k in NATIVE_COUNTERS}
    # every successful miss walks g levels: 5g + 4 references; a failed one 5 per level read
    assert t["tdp_walk_refs"] == 5 * t["native_walk_refs"] + 4 * (
        t["tdp_tlb_miss"] - t["native_page_fault"])
    assert t["exits"] == 0
