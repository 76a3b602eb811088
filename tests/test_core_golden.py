"""Golden counts for small scenarios, worked out by hand from KVM 2.6.26's code (domain.md 3).

Each expected number is derived in the comment above it; the tests fail if the mechanism changes.
"""

from __future__ import annotations

import pytest

from bench import ops as O
from bench.machine.invariants import check_shadow
from bench.machine.native import NativeMachine
from bench.machine.shadow import ShadowMachine
from bench.registry import make_policy
from tests._scenarios import USER_VA, kmap_scenario


def _run(machine, native, ops):
    for op in ops:
        machine.step(op)
        native.step(op)
        check_shadow(machine)


def _delta(machine, ops, native):
    before = machine.counters.as_dict()
    _run(machine, native, ops)
    after = machine.counters.as_dict()
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def _machines(s, policy):
    g = s.guest
    native = NativeMachine(g.mem.copy(), g.mode, [s.proc.cr3])
    shadow = ShadowMachine(g.mem, g.mode, [s.proc.cr3], make_policy(policy))
    return shadow, native


def _warm(s):
    # the process touches its page (its table gets shadowed), one kmap cycle shadows the fixmap
    # table, and the process touches the page again (the btr cleared A, so this refaults)
    return [O.load(0, USER_VA)] + s.cycle() + [O.load(0, USER_VA)]


NATIVE_PAE = {"native_store": 4, "native_locked_rmw": 1, "native_invlpg": 1}
NATIVE_32 = {"native_store": 2, "native_locked_rmw": 1, "native_invlpg": 1}


@pytest.mark.parametrize("pae", [True, False])
def test_kmap_2620_always_emulate(pae):
    s = kmap_scenario(pae)
    shadow, native = _machines(s, "always-emulate")
    _run(shadow, native, _warm(s))
    delta = _delta(shadow, s.cycle(), native)
    # kmap: set_pte = 2 half stores (PAE) or 1 store to the shadowed fixmap table, each trapping
    # and emulated; the btr through the new (read-only: it maps a shadowed table) fixmap spte
    # traps once more; kunmap's pte_clear is 2 (PAE) or 1 more; invlpg is not intercepted
    # (2.6.26). Each trap: one exit, pf_fixed (counted before emulation), one emulation, one
    # kvm_mmu_pte_write, one spte rebuilt (mmu_pte_updated counts even when the new gpte is
    # not present or has A clear and the spte is only dropped).
    n = 5 if pae else 3
    expected = {"exits": n, "pf_fixed": n, "insn_emulation": n, "mmu_pte_write": n,
                "mmu_pte_updated": n, "exit_ptwrite_emulate": n}
    expected.update(NATIVE_PAE if pae else NATIVE_32)
    assert delta == expected
    assert shadow.mem.image() == native.mem.image()


@pytest.mark.parametrize("pae", [True, False])
def test_kmap_2620_always_unshadow(pae):
    s = kmap_scenario(pae)
    shadow, native = _machines(s, "always-unshadow")
    _run(shadow, native, _warm(s))
    delta = _delta(shadow, s.cycle(), native)
    # After the warm-up the fixmap table F is unshadowed (kunmap's store unshadowed it), its
    # direct-map spte writable: kmap's stores run natively. The btr through the slot finds no
    # spte (F's shadow page was zapped): a fault whose walk re-creates F's shadow page
    # (mmu_cache_miss 1, F write-protected again) and installs a read-only spte to the user
    # table T (shadowed by the warm-up's last load): ptwrite -> unshadow T (zap 1), re-execute,
    # refault (hidden fault 1) now writable, btr native. kunmap's first store hits the
    # re-protected F: unshadow F (zap 2), refault (hidden fault 2); the second store is native.
    expected = {"exits": 4, "pf_fixed": 4, "exit_ptwrite_unshadow": 2, "exit_hidden_fault": 2,
                "mmu_shadow_zapped": 2, "mmu_cache_miss": 1}
    expected.update(NATIVE_PAE if pae else NATIVE_32)
    assert delta == expected
    assert shadow.mem.image() == native.mem.image()


def test_cold_user_load_is_one_hidden_fault():
    s = kmap_scenario(True)
    shadow, native = _machines(s, "always-emulate")
    # the roots (4 PDPT entries -> 4 level-2 shadow pages) were built at the first cr3 load
    assert shadow.counters.mmu_cache_miss == 4
    delta = _delta(shadow, [O.load(0, USER_VA), O.load(0, USER_VA + 8)], native)
    # one fault: walk, create T's shadow page, install the spte; the second load hits it
    assert delta == {"exits": 1, "pf_fixed": 1, "exit_hidden_fault": 1, "mmu_cache_miss": 1,
                     "native_load": 2}


def test_dirty_bit_update_runs_pte_write():
    s = kmap_scenario(True)
    shadow, native = _machines(s, "always-emulate")
    _run(shadow, native, [O.load(0, USER_VA)])
    # the gpte is clean (A set, D clear): the load installed a read-only spte; the store faults,
    # walk_addr sets D and calls kvm_mmu_pte_write (2.6.21-2.6.30): one mmu_pte_write, the spte
    # rebuilt speculatively, then fetch makes it writable. It is a hidden fault, not a ptwrite.
    delta = _delta(shadow, [O.store(0, USER_VA, 4, 7)], native)
    assert delta == {"exits": 1, "pf_fixed": 1, "exit_hidden_fault": 1, "mmu_pte_write": 1,
                     "mmu_pte_updated": 1, "native_store": 1}
    gpte = shadow.mem.read_entry(s.pte_gpa, True)
    assert gpte & 0x60 == 0x60


def test_spte_dropped_when_accessed_cleared():
    s = kmap_scenario(False)
    shadow, native = _machines(s, "always-emulate")
    _run(shadow, native, _warm(s) + s.kmap_2620() + s.test_and_clear())
    # the emulated btr cleared A: update_pte drops the user spte (K26 paging_tmpl.h:254-257),
    # so the next user access is a hidden fault that sets A again
    delta = _delta(shadow, [O.load(0, USER_VA)], native)
    assert delta["exit_hidden_fault"] == 1
    assert shadow.mem.read_entry(s.pte_gpa, False) & 0x20


def test_unshadowing_an_in_use_root_falls_back_to_emulation():
    s = kmap_scenario(False)
    shadow, native = _machines(s, "always-unshadow")
    g = s.guest
    pd_gfn = s.proc.cr3 >> 12
    pde_kvaddr = g.kvaddr((pd_gfn << 12) + (0x20000000 >> 22) * 4)
    # a kernel store to the process's own page directory (its four quadrants are the vCPU's
    # roots). The first fault links the direct page for the 2 MiB of lowmem holding the
    # directory (mmu_cache_miss 1) and traps; unshadow zaps the 4 root pages (mmu_shadow_zapped
    # 4); the re-executed store reloads the roots (4 more mmu_cache_miss, the directory
    # write-protected again; the direct page survives the zap and is relinked) and traps on the
    # same gfn, so it is emulated (retry_instruction's loop breaker) instead of looping. The
    # emulated write of one non-PAE pde rebuilds two shadow pdes (mmu_pde_zapped 2).
    delta = _delta(shadow, [O.store(0, pde_kvaddr, 4, 0)], native)
    assert delta == {"exits": 2, "pf_fixed": 2, "exit_ptwrite_unshadow": 1,
                     "exit_ptwrite_emulate": 1, "insn_emulation": 1, "mmu_pte_write": 1,
                     "mmu_pde_zapped": 2, "mmu_shadow_zapped": 4, "mmu_cache_miss": 5,
                     "native_store": 1}


def test_write_spanning_two_gptes_zaps_the_table():
    s = kmap_scenario(False)
    shadow, native = _machines(s, "always-emulate")
    g = s.guest
    second = g.alloc_high()
    g.set_pte_direct(s.proc, USER_VA + 0x1000, second)
    _run(shadow, native, _warm(s) + [O.load(0, USER_VA + 0x1000)] + s.kmap_2620())
    # an 8-byte store over two non-PAE ptes through the kmap slot: KVM rebuilds only the spte a
    # write falls in, so a write spanning two gptes zaps the table (the "misaligned" rule, K20
    # and later) even under always-emulate; the user's next loads refault
    value = ((second << 12) | 0x67) << 32 | ((second << 12) | 0x67)
    delta = _delta(shadow, [O.store(0, s.slot_vaddr + (s.pte_gpa & 0xFFF), 8, value)], native)
    # both ptes lie in the same 2 MiB half, so the table has one shadow page (quadrant 0)
    assert delta["exit_ptwrite_emulate"] == 1 and delta["mmu_flooded"] == 1
    assert delta["mmu_shadow_zapped"] == 1
    delta = _delta(shadow, [O.load(0, USER_VA), O.load(0, USER_VA + 0x1000)], native)
    assert delta["exit_hidden_fault"] == 2 and delta["mmu_cache_miss"] == 1
    assert shadow.mem.image() == native.mem.image()


def test_per_page_flood_counts_each_shadow_page_apart():
    s = kmap_scenario(False)
    g = s.guest
    upper = USER_VA + 0x200000  # bit 21 set: the table's second 2 MiB, its quadrant-1 page
    for va in (USER_VA + 0x1000, USER_VA + 0x2000, upper, upper + 0x1000):
        g.set_pte_direct(s.proc, va, g.alloc_high())
    shadow, native = _machines(s, "per-page-flood:include_leaf=true")
    _run(shadow, native, _warm(s) + [O.load(0, va) for va in
                                     (USER_VA + 0x1000, USER_VA + 0x2000, upper)])
    table = s.table_gfn
    assert sorted(sp.quadrant for sp in shadow.by_gfn[table]) == [0, 1]

    def btr(va):
        return [O.btr(0, s.slot_vaddr + ((va >> 12) & 0x3FF) * 4, 5)]  # its pte, via the slot

    # K36 kvm_mmu_pte_write asks detect_write_flooding(sp) for every shadow page of the gfn,
    # before the quadrant filter: two btrs on quadrant-0 ptes count 2 in both pages; a fault
    # walk through the quadrant-1 page clears its count only; the third btr floods quadrant 0
    # alone, and only that page is zapped.
    _run(shadow, native, s.kmap_2620() + btr(USER_VA) + btr(USER_VA + 0x1000))
    pages = sorted(shadow.by_gfn[table], key=lambda p: p.quadrant)
    assert [sp.write_flooding_count for sp in pages] == [2, 2]
    _run(shadow, native, [O.load(0, upper + 0x1000)])
    delta = _delta(shadow, btr(USER_VA + 0x2000), native)
    assert delta["mmu_flooded"] == 1 and delta["mmu_shadow_zapped"] == 1
    assert [sp.quadrant for sp in shadow.by_gfn[table]] == [1]
    assert shadow.by_gfn[table][0].write_flooding_count == 1
