"""Golden tests of issue 4's policies: small hand-built runs whose outcome was worked out by hand
from the kernel / Xen code each policy cites (the derivation is in each test's docstring)."""

from __future__ import annotations

import pytest

from _policy_scenarios import KM_PTE1, KM_PTE2, USER_VA, kmap_guest, run
from bench import ops as O
from bench.errors import BenchError
from bench.guest import USER_PTE, Guest
from bench.machine.paging import A, D
from bench.machine.shadow import ShadowMachine
from bench.policy import DECISION_HOOKS, NOTIFICATION_HOOKS, overridden
from bench.registry import make_policy


def kmap_btr_kunmap_cycles(k, n: int) -> list:
    """Touch everything, then ``n`` times 2.6.20+ kmap (set_pte), btr bit i, kunmap (pte_clear),
    invlpg of the slot."""
    vaddr = k.slot()[0]
    ops = k.touch_all()
    for i in range(n):
        ops += k.set_slot(k.table) + [k.btr(i)] + k.set_slot(None) + [O.invlpg(0, vaddr)]
    return ops


def _setup(k, m, km_type=KM_PTE2):
    """The process uses its pages (table T shadowed, sptes present); the kernel kmaps T in the
    slot; the first btr through the slot shadows the fixmap table F."""
    vaddr = k.slot(km_type)[0]
    return run(m, k.touch_all() + k.set_slot(k.table, km_type) + [O.invlpg(0, vaddr)])


# ===================================================================================== flood-count
@pytest.mark.parametrize("pae", [False, True])
@pytest.mark.parametrize("variant", ["2.6.20", "2.6.26", "2.6.27"])
def test_flood_count_third_btr_to_one_table_zaps(pae, variant):
    """btr 1: the fault through the new kmap spte is a ptwrite (no reset); T != last gfn: count 1.
    btr 2: the spte is read-only, faults again (ptwrite); last_pte_updated is NULL (cleared by the
    new-gfn branch, never set by a ptwrite install): count 2. btr 3: count 3 >= 3: T's one shadow
    page is zapped (mmu_flooded 1)."""
    k = kmap_guest(pae)
    m = k.machine(f"flood-count:variant={variant}")
    _setup(k, m)
    flooded = [run(m, [k.btr(i)])["mmu_flooded"] for i in range(3)]
    assert flooded == [0, 0, 1]
    assert m.counters.insn_emulation == 3
    assert k.table not in m.by_gfn  # T is no longer shadowed


def test_flood_count_threshold_parameter():
    k = kmap_guest(False)
    m = k.machine("flood-count:threshold=4")
    _setup(k, m)
    assert [run(m, [k.btr(i)])["mmu_flooded"] for i in range(4)] == [0, 0, 0, 1]


@pytest.mark.parametrize("variant", ["2.6.20", "2.6.26", "2.6.27"])
def test_flood_count_alternating_kmap_never_floods_non_pae(variant):
    """2.6.20+ kmap/test_and_clear/kunmap, non-PAE: F, T, F, F? No: set_pte (F), btr (T),
    pte_clear (F), invlpg (not intercepted), next set_pte (F): two F writes in a row at most,
    and the T write between restarts the count: never 3."""
    k = kmap_guest(False)
    m = k.machine(f"flood-count:variant={variant}")
    ops = kmap_btr_kunmap_cycles(k, 8)
    c = run(m, ops)
    assert c["mmu_flooded"] == 0 and c["insn_emulation"] == 23  # 1st set_pte is not trapped


def test_flood_count_vanilla_24_pae_kmap_never_floods():
    """Vanilla 2.4 PAE kmap (set_pte high, low; invlpg) then btr, no kunmap: F, F, T, F, F, T..."""
    k = kmap_guest(True)
    m = k.machine("flood-count")
    vaddr = k.slot()[0]
    ops = k.touch_all()
    for i in range(8):
        ops += k.set_slot(k.table) + [O.invlpg(0, vaddr), k.btr(i)]
    assert run(m, ops)["mmu_flooded"] == 0


@pytest.mark.parametrize("variant", ["2.6.20", "2.6.26", "2.6.27"])
def test_flood_count_pae_kunmap_then_kmap_floods_the_fixmap_table(variant):
    """2.6.20+ PAE: kunmap's pte_clear (low, high) and the next kmap's set_pte (high, low) are four
    consecutive emulated writes to F, none installing a spte that could be accessed (the gpte is
    not present until the last one): the third floods F. From the second cycle on, every cycle
    zaps F once (worked out from K26 mmu.c:1700-1709; no variant avoids it)."""
    k = kmap_guest(True)
    m = k.machine(f"flood-count:variant={variant}")
    ops = kmap_btr_kunmap_cycles(k, 8)
    c = run(m, ops)
    assert c["mmu_flooded"] == 7 and c["mmu_shadow_zapped"] == 7


@pytest.mark.parametrize("variant", ["2.6.26", "2.6.27"])
def test_flood_count_pae_kmap_then_btr_2626_vs_2627(variant):
    """The issue's case: PAE kmap (two half writes to F) then a btr through the new fixmap spte S.
    W1 (high): F != last (T): count 1, last_pte_updated NULL; the gpte is not present yet. W2
    (low): count 2; update_pte installs S speculatively (A clear): both variants record it (2.6.26
    because ptwrite is NULL, 2.6.27 because it is speculative, with last_pte_gfn = T). btr: the
    fault through read-only S rebuilds it non-speculatively (A set) and is a ptwrite; in 2.6.27
    kvm_mmu_access_page finds last_pte_gfn == T and marks S accessed (already so). T != F: both
    restart at 1 for T. The variants agree here: no flood, S accessed."""
    k = kmap_guest(True)
    m = k.machine(f"flood-count:variant={variant}")
    pol = m.policy
    run(m, k.warm_up())
    fixmap = k.guest.fixmap_pt
    w1, w2 = k.set_slot(k.table)
    run(m, [w1])
    assert (pol._last_gfn[0], pol._count[0], pol._last_pte.get(0)) == (fixmap, 1, None)
    run(m, [w2])
    s = pol._last_pte[0]
    assert pol._count[0] == 2 and not m.spte_accessed(s) and m.gfn_of(s) == k.table
    run(m, [k.btr(1)])
    assert (pol._last_gfn[0], pol._count[0]) == (k.table, 1)
    assert m.spte_accessed(s) and m.counters.mmu_flooded == 0


@pytest.mark.parametrize("variant,flooded", [("2.6.26", 1), ("2.6.27", 0)])
def test_flood_count_2627_records_only_speculative_sptes(variant, flooded):
    """Where 1b7fcd3263 changes the outcome (non-PAE, F = fixmap table):
    a: kmap KM_PTE2 -> T: F count 1, S installed speculatively (last_pte_updated = S);
    b: a hidden fault installs X (A set): count 0; 2.6.26 records X, 2.6.27 keeps S;
    c: clear KM_PTE1's pte (F): 2.6.26 sees X accessed -> restart (1, NULL); 2.6.27: S unused -> 1;
    d: a load through KM_PTE2 sets S's A bit (no fault);
    e: clear again: 2.6.26 count 2; 2.6.27 sees S accessed -> restart at 1;
    f: clear again: 2.6.26 count 3 -> F flooded; 2.6.27 count 2."""
    k = kmap_guest(False)
    m = k.machine(f"flood-count:variant={variant}")
    va2 = k.slot(KM_PTE2)[0]
    run(m, k.warm_up())
    ops = (k.set_slot(k.table, KM_PTE2) + [O.load(0, k.guest.kvaddr(0x800000))]
           + k.set_slot(None, KM_PTE1) + [O.load(0, va2)]
           + k.set_slot(None, KM_PTE1) + k.set_slot(None, KM_PTE1))
    assert run(m, ops)["mmu_flooded"] == flooded


def test_flood_count_2620_mechanism_and_misaligned():
    """2.6.20 does not rebuild the spte (no mmu_pte_updated) and has no bytes < 4 rule; 2.6.26 zaps
    a 2-byte aligned write (misaligned |= bytes < 4); both zap a write crossing two ptes."""
    cfg = make_policy("flood-count:variant=2.6.20").mmu_config(False)
    assert not cfg.update_spte_on_write and not cfg.dirty_bit_pte_write
    for variant, zaps in (("2.6.20", 0), ("2.6.26", 1)):
        k = kmap_guest(False)
        m = k.machine(f"flood-count:variant={variant}")
        _setup(k, m)
        run(m, [k.btr(0)])
        vaddr = k.slot()[0] + (k.ptes[1] & 0xFFF)
        assert run(m, [O.store(0, vaddr, 2, 0x0)])["mmu_flooded"] == zaps
    k = kmap_guest(False)
    m = k.machine("flood-count:variant=2.6.20")
    _setup(k, m)
    run(m, [k.btr(0)])
    crossing = k.slot()[0] + (k.ptes[1] & 0xFFF) + 2
    assert run(m, [O.store(0, crossing, 4, 0)])["mmu_flooded"] == 1


def test_flood_count_parameters_validated():
    with pytest.raises(BenchError, match="2.6.27"):
        make_policy("flood-count:variant=2.6.25")
    with pytest.raises(BenchError, match="minimum"):
        make_policy("flood-count:threshold=0")


# ================================================================================= per-page-flood
def test_per_page_flood_counts_per_table_and_leaf_parameter():
    """Three btrs to T, no walk through T between: T's count reaches 3 -> zap; with
    include_leaf=false (the literal 3.x rule) a leaf table is never counted."""
    for spec, zaps in (("per-page-flood:include_leaf=true", 1), ("per-page-flood", 0)):
        k = kmap_guest(False)
        m = k.machine(spec)
        _setup(k, m)
        assert run(m, [k.btr(i) for i in range(3)])["mmu_flooded"] == zaps


def test_per_page_flood_cleared_by_a_walk_through_the_table():
    """btr 0, btr 1 (count 2); the process touches page 0, whose spte the btr dropped (A clear):
    the fault's walk passes through T's shadow page and clears its count; btr 2 -> 1, btr 3 -> 2:
    no flood (flood-count 2.6.26 also restarts here: the hidden fault resets its counter)."""
    k = kmap_guest(False)
    m = k.machine("per-page-flood:include_leaf=true")
    _setup(k, m)
    c = run(m, [k.btr(0), k.btr(1), O.load(0, USER_VA), k.btr(2), k.btr(3)])
    assert c["mmu_flooded"] == 0
    assert run(m, [k.btr(4)])["mmu_flooded"] == 1


def test_per_page_flood_exempts_aligned_one_byte_writes():
    """detect_write_misaligned: a 1-byte write to the first byte of a pte (andb in clear_bit) is
    not misaligned; flood-count 2.6.26 zaps it (bytes < 4)."""
    for spec, zaps in (("per-page-flood:include_leaf=true", 0), ("flood-count", 1)):
        k = kmap_guest(False)
        m = k.machine(spec)
        _setup(k, m)
        run(m, [k.btr(0)])
        vaddr = k.slot()[0] + (k.ptes[1] & 0xFFF)
        assert run(m, [O.store(0, vaddr, 1, 0x47, "and")])["mmu_flooded"] == zaps


# ================================================================================= accessed-clear
@pytest.mark.parametrize("pae", [False, True])
def test_accessed_clear_unshadows_natively_on_btr(pae):
    """The trapping btr becomes exit_ptwrite_unshadow with no emulation; the kmap spte is made
    writable in the same exit, so the next btrs through it run natively (no more exits)."""
    k = kmap_guest(pae)
    m = k.machine("accessed-clear")
    _setup(k, m)
    before = m.counters.as_dict()
    c = run(m, [k.btr(0)])
    assert c["exit_ptwrite_unshadow"] == 1 and c["insn_emulation"] == before["insn_emulation"]
    assert c["mmu_pte_write"] == before["mmu_pte_write"]
    c = run(m, [k.btr(1), k.btr(2)])
    assert c["exits"] == before["exits"] + 1
    assert k.table not in m.by_gfn


def test_accessed_clear_other_writes_go_to_the_fallback():
    """A store of a new pte value is not an accessed-bit clear: flood-count emulates it; a btr of
    a pte whose A is already clear is not one either."""
    k = kmap_guest(False)
    m = k.machine("accessed-clear")
    _setup(k, m)
    vaddr = k.slot()[0] + (k.ptes[1] & 0xFFF)
    c = run(m, [O.store(0, vaddr, 4, (k.table + 100) << 12 | USER_PTE | A | D)])
    assert c["exit_ptwrite_emulate"] == 1 and c["exit_ptwrite_unshadow"] == 0
    run(m, [k.btr(2)])  # clears A of pte 2: unshadowed natively
    assert m.counters.exit_ptwrite_unshadow == 1


def test_accessed_clear_composes_with_xen_batch():
    """accessed-clear:fallback=xen-batch on PAE: the kmap's first half traps and is emulated, the
    second half is emulated in the same exit (xen-batch); the btr unshadows natively."""
    k = kmap_guest(True)
    m = k.machine("accessed-clear:fallback=xen-batch")
    run(m, k.warm_up())
    before = m.counters.as_dict()
    c = run(m, k.set_slot(k.table) + [O.invlpg(0, k.slot()[0])])
    assert c["exits"] - before["exits"] == 1
    assert c["insn_emulation"] - before["insn_emulation"] == 1
    assert c["insn_emulation_extra"] - before["insn_emulation_extra"] == 1
    with pytest.raises(BenchError, match="own fallback"):
        make_policy("accessed-clear:fallback=accessed-clear")
    with pytest.raises(BenchError, match="flood-count"):
        make_policy("accessed-clear:fallback=flod-count")


def test_a_composed_policy_answers_with_its_fallbacks_own_hooks():
    """Every hook a composite does not decide is its fallback's, bound on the instance: the
    executor calls the fallback directly and skips what the fallback leaves at the default (no
    WriteFault for xen-batch, whose fallback never decides writes)."""
    xb = make_policy("xen-batch")
    fb = xb.fallback_policy
    assert xb.on_pte_write == fb.on_pte_write and xb.on_shadow_fault == fb.on_shadow_fault
    decided = {h for h in DECISION_HOOKS + NOTIFICATION_HOOKS if overridden(xb, h)}
    assert decided == {"extra_emulation", "on_pte_write", "on_shadow_fault", "on_guest_fault"}
    ac = make_policy("accessed-clear:fallback=xen-batch")
    assert {h for h in DECISION_HOOKS if overridden(ac, h)} == {
        "on_write_fault", "on_pte_write", "extra_emulation"}
    assert ac.extra_emulation == ac.fallback_policy.extra_emulation
    assert not overridden(make_policy("always-emulate"), "on_write_fault")


# ====================================================================================== xen-batch
@pytest.mark.parametrize("pae,extra_expected", [(True, 1), (False, 0)])
def test_xen_batch_pae_set_pte_is_one_exit(pae, extra_expected):
    """PAE set_pte on a shadowed table: high half traps (1 exit, 1 insn_emulation); the low half
    is emulated in the same exit (insn_emulation_extra 1) and, being a pt write, ends the batch.
    Non-PAE with pae_only: nothing extra."""
    k = kmap_guest(pae)
    m = k.machine("xen-batch")
    run(m, k.warm_up())
    before = m.counters.as_dict()
    c = run(m, k.set_slot(k.table) + [O.invlpg(0, k.slot()[0])])
    assert c["exit_ptwrite_emulate"] - before["exit_ptwrite_emulate"] == 1
    assert c["insn_emulation"] - before["insn_emulation"] == 1
    assert c["insn_emulation_extra"] - before["insn_emulation_extra"] == extra_expected


def test_xen_batch_parameters():
    assert make_policy("xen-batch").fallback_policy.name == "xen-early-unshadow"
    assert make_policy("xen-batch:extra=0,pae_only=false").extra == 0
    with pytest.raises(BenchError, match="minimum"):
        make_policy("xen-batch:extra=-1")


# ============================================================================= xen-early-unshadow
def test_xen_early_unshadow_two_aligned_zero_writes():
    """Two emulated pte-aligned zero writes to T (pte_clear through the kmap) with nothing between:
    the second removes T's shadows. A hidden fault, or a non-zero write, between resets it."""
    def clear(k, i):
        return O.store(0, k.slot()[0] + (k.ptes[i] & 0xFFF), 4, 0)

    k = kmap_guest(False)
    m = k.machine("xen-early-unshadow")
    _setup(k, m)
    run(m, [k.btr(0)])  # shadows F; non-zero write
    c = run(m, [clear(k, 1)])
    assert c["mmu_flooded"] == 0
    c = run(m, [clear(k, 2)])
    assert c["mmu_flooded"] == 1 and k.table not in m.by_gfn

    k = kmap_guest(False)
    m = k.machine("xen-early-unshadow")
    _setup(k, m)
    run(m, [k.btr(0), clear(k, 1), O.load(0, k.guest.kvaddr(0x800000)), clear(k, 2)])
    assert m.counters.mmu_flooded == 0  # the hidden fault reset it
    run(m, [k.btr(3), clear(k, 4)])
    assert m.counters.mmu_flooded == 0  # the btr (non-zero result) reset it


@pytest.mark.parametrize("version, expected", [("3.3.1", [0, 0, 0, 0]), ("3.4.4", [0, 0, 0, 0]),
                                               ("4.2", [0, 0, 1, 1])])
def test_xen_early_unshadow_pae_pte_clear(version, expected):
    """PAE 2.6 pte_clear writes low (offset 0 of the 8-byte gpte: aligned), then high (offset 4:
    zero but not aligned to guest_intpte_t), for two ptes of one table.

    3.3.1 emulate_unmap_dest (``bytes >= 4 && *(u32 *)addr == 0 && aligned`` -> check, *else*
    reset): low 1 checks (last = none) and records the table; high 1 resets; low 2 checks
    against none and records; high 2 resets: never two in a row, no unshadow [0, 0, 0, 0].
    4.2 (commit 43d588d6ae): a non-aligned zero neither checks nor resets, so low 2 finds the
    table recorded by low 1 and removes its shadows: [0, 0, 1, 1] (run() reports the running
    count)."""
    k = kmap_guest(True)
    m = k.machine(f"xen-early-unshadow:version={version}")
    _setup(k, m)
    run(m, [k.btr(0)])
    base = k.slot()[0]
    ops = []
    for i in (1, 2):
        va = base + (k.ptes[i] & 0xFFF)
        ops += [O.store(0, va, 4, 0), O.store(0, va + 4, 4, 0)]
    flooded = [run(m, [op])["mmu_flooded"] for op in ops]
    assert flooded == expected


# ========================================================================================= unsync
def test_unsync_leaf_table_goes_native_and_cr3_resyncs():
    """KVM 2.6.28: the first write to leaf table T through the kmap spte unsyncs T (one exit,
    exit_ptwrite_unsync, no emulation); later writes are native; a cr3 load resyncs T
    (mmu_resync) and write-protects it again, so the next write takes another unsync exit."""
    k = kmap_guest(False)
    m = k.machine("unsync")
    c0 = _setup(k, m)
    c = run(m, [k.btr(0)])
    assert c["exit_ptwrite_unsync"] - c0["exit_ptwrite_unsync"] == 1
    assert c["insn_emulation"] == 0 and c["mmu_unsync"] >= 1
    c1 = run(m, [k.btr(1), k.btr(2)])
    assert c1["exits"] == c["exits"]
    resync = c1["mmu_resync"]
    c2 = run(m, [O.cr3(0, k.proc.cr3)])
    assert c2["mmu_resync"] - resync >= 1 and not any(sp.unsync for sp in m.by_gfn[k.table])
    c3 = run(m, [k.btr(3)])
    assert c3["exit_ptwrite_unsync"] - c2["exit_ptwrite_unsync"] == 1


def test_unsync_invlpg_is_intercepted_and_drops_the_spte():
    k = kmap_guest(False)
    m = k.machine("unsync")
    _setup(k, m)
    c = run(m, [O.invlpg(0, USER_VA)])
    assert c["exit_invlpg"] >= 1
    sp1 = m.roots[0][USER_VA >> 30].children[(USER_VA >> 21) & 0x1FF]
    assert (USER_VA >> 12) & 0x1FF not in sp1.sptes


# ======================================================================================== xen-oos
def _four_tables():
    """A process with four user tables in lowmem (no HIGHPTE), consecutive gfns; the kernel
    writes their ptes through the direct mapping."""
    guest = Guest(False, highmem_pages=64, lowmem_pages=4096, highpte=False)
    proc = guest.new_process()
    vaddrs = [0x08000000 + i * 0x400000 for i in range(4)]
    ptes = [guest.set_pte_direct(proc, va, guest.alloc_low()) for va in vaddrs]
    m = ShadowMachine(guest.mem, guest.mode, [proc.cr3], make_policy("xen-oos"))
    run(m, [O.load(0, va) for va in vaddrs])
    return guest, proc, m, ptes


def test_xen_oos_hash_evicts_as_oos_hash_add():
    """The four tables are gfns 1028, 1030, 1032, 1034 (each followed by its data page), homes
    (gfn % 3) 2, 1, 0, 2. Unsynced in turn (limit 3): 1028 -> slot 2, 1030 -> slot 1, 1032 ->
    slot 0; 1034's home slot 2 holds 1028 at home, so 1028 is punted to slot 0 and that slot's
    occupant 1032 is crushed (resynced). Out of sync after: 1028, 1030, 1034 -- not the oldest
    evicted, Xen's hash (common.c oos_hash_add)."""
    guest, proc, m, ptes = _four_tables()
    gfns = [gpa >> 12 for gpa in ptes]
    assert gfns == [1028, 1030, 1032, 1034]
    for gpa in ptes:
        run(m, [O.btr(0, guest.kvaddr(gpa), 5)])
    assert {sp.gfn for sp in m.unsync_pages} == {1028, 1030, 1034}
    assert m.policy._oos[0] == [1028, 1030, 1034]
    assert m.counters.exit_ptwrite_unsync == 4 and m.counters.mmu_resync == 1
    c = run(m, [O.btr(0, guest.kvaddr(ptes[2]) + 4, 5)])  # 1032 is protected again: unsync exit
    assert c["exit_ptwrite_unsync"] == 5 and c["mmu_resync"] == 2  # ... which crushes 1028
    c = run(m, [O.cr3(0, proc.cr3)])  # a cr3 write resyncs every OOS page of the vCPU
    assert not m.unsync_pages and c["mmu_resync"] == 2 + 3


def test_xen_oos_page_directories_are_emulated():
    """Writes to a page directory (L2) are never unsynced: emulated (with early unshadow)."""
    guest, proc, m, ptes = _four_tables()
    pde_kva = guest.kvaddr(proc.cr3 + 4 * (0x08000000 >> 22))
    c = run(m, [O.btr(0, pde_kva, 6)])
    assert c["exit_ptwrite_emulate"] == 1 and c["exit_ptwrite_unsync"] == 0
    assert make_policy("xen-oos").mmu_config(True).intercept_invlpg
    with pytest.raises(BenchError, match="minimum"):
        make_policy("xen-oos:limit=0")
