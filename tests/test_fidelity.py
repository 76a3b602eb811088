"""Golden counts for the fidelity corrections (docs/model-changes.md), each worked out by hand from
the code the rule comes from; the derivation is in each test's docstring.

Shared setup (tests/_policy_scenarios.py): one process, one highmem user page table T with 8
present, accessed ptes (pages USER_VA + i * 4096); ``_setup`` touches every page (T shadowed)
and kmaps T in the KM_PTE2 fixmap slot.
"""

from __future__ import annotations

import pytest

from _policy_scenarios import KM_PTE2, USER_VA, kmap_guest, run
from bench import ops as O
from bench.guest import USER_PTE, A, D
from bench.registry import make_policy
from workloads._kmap import Kernel


def _setup(k, m):
    vaddr = k.slot(KM_PTE2)[0]
    return run(m, k.touch_all() + k.set_slot(k.table, KM_PTE2) + [O.invlpg(0, vaddr)])


def _delta(before: dict, after: dict, *names: str) -> tuple:
    return tuple(after[n] - before[n] for n in names)


# ======================================================================= 1. Xen batch: instructions
@pytest.mark.parametrize("between, expected", [
    # (ops between btr 0 and btr 1) -> (exits, insn_emulation_extra, ..._non_pt)
    ([], (1, 1, 0)),
    ([O.gap(0, 2)], (1, 3, 2)),
    ([O.gap(0, 4)], (2, 4, 4)),
    ([O.gap(0, 0)], (2, 4, 4)),
    ([O.invlpg(0, 0xC0000000)], (2, 0, 0)),
    ([O.mark(0, 1)], (1, 1, 0)),
])
def test_xen_batch_counts_instructions(between, expected):
    """Xen 3.3 sh_page_fault (PAE): after an emulated page-table write, up to 4 more calls of
    x86_emulate, each the next instruction; stop right after a page-table write
    (last_write_was_pt, shadow_em_ex_pt), count the others (shadow_em_ex_non_pt).

    btr 0 traps on T (1 exit, emulated) and arms the batch with 4 instructions. Then:
    - btr 1 right after it: the next instruction writes T: emulated in the same exit and the
      batch stops: 1 exit, 1 extra, 0 non-pt;
    - a gap of 2 instructions: 2 non-pt emulated, then btr 1 (the 3rd): 1 exit, 3 extra, 2 non-pt;
    - a gap of 4 (or an unknown number, 0): the 4 instructions are all non-pt, the batch ends,
      btr 1 traps by itself: 2 exits, 4 extra, 4 non-pt (btr 1 arms a new batch, unused);
    - invlpg: the shadow emulator has no invlpg hook, emulation fails (shadow_em_ex_fail), the
      batch ends with nothing emulated: btr 1 traps: 2 exits, 0 extra;
    - a MARK is no instruction: as with nothing between."""
    k = kmap_guest(True)
    m = k.machine("xen-batch")
    _setup(k, m)
    before = run(m, [])
    after = run(m, [k.btr(0)] + between + [k.btr(1)])
    assert _delta(before, after, "exits", "insn_emulation_extra",
                  "insn_emulation_extra_non_pt") == expected


def test_xen_batch_never_absorbs_a_user_access():
    """A user-mode access after an emulated kernel write: the kernel's return to user mode (more
    than 4 instructions, then an iret the emulator cannot run) uses the batch: 4 non-pt
    instructions; the user load then runs natively through its present spte (no exit), and it
    is not counted as emulated."""
    k = kmap_guest(True)
    m = k.machine("xen-batch")
    _setup(k, m)
    before = run(m, [])
    after = run(m, [k.btr(0), O.load(0, USER_VA + 4096 * 3)])
    assert _delta(before, after, "exits", "insn_emulation_extra",
                  "insn_emulation_extra_non_pt", "native_load") == (1, 4, 4, 1)


def test_xen_batch_only_for_pae_guests():
    """``#if GUEST_PAGING_LEVELS == 3``: a non-PAE guest gets no batch: btr 0 and btr 1 trap."""
    k = kmap_guest(False)
    m = k.machine("xen-batch")
    _setup(k, m)
    before = run(m, [])
    after = run(m, [k.btr(0), k.btr(1)])
    assert _delta(before, after, "exits", "insn_emulation_extra") == (2, 0)


def test_kernel_primitives_separate_statements_with_gaps():
    """set_pte's halves are adjacent stores; a kmap_atomic that writes starts with a gap of at
    least 4 instructions (workloads._kmap.KMAP_GAP), so two page_referenced visits are never
    absorbed into one batch."""
    k = kmap_guest(True)
    kernel = Kernel(k.guest, "2.6.20")
    ops, _ = kernel.kmap(0, KM_PTE2, k.table)
    kinds = [op[0] for op in ops]
    assert kinds == [O.COMPUTE, O.STORE, O.STORE]  # gap, high half, low half (no flush in 2.6.20)
    assert ops[0][4] >= 4
    clear = kernel.kunmap(0, KM_PTE2, k.table)
    assert [op[0] for op in clear] == [O.COMPUTE, O.STORE, O.STORE, O.INVLPG]


# ================================================================= 2. Xen early unshadow: versions
def test_xen_version_is_passed_to_a_xen_fallback():
    assert make_policy("xen-batch:version=4.2").fallback_policy.version == "4.2"
    assert make_policy("xen-batch").fallback_policy.version == "3.3.1"
    assert make_policy("xen-oos").version == "3.3.1"
    # a fallback without the parameter is built with its own defaults
    assert make_policy("xen-batch:fallback=flood-count").fallback_policy.name == "flood-count"


# ======================================================================= 3. bypass_guest_pf
def _absent_pte_vaddr() -> int:
    return USER_VA + 8 * 4096  # same table T, pte 8: never set, not present


@pytest.mark.parametrize("spec, expected", [
    ("flood-count", (0, 0, 1)),  # 2.6.26 on VMX: bypass
    ("always-emulate", (0, 0, 1)),
    ("flood-count:variant=2.6.20", (1, 1, 0)),  # no bypass before 2.6.25
    ("xen-early-unshadow", (1, 1, 0)),  # Xen exits on every shadow fault
])
def test_not_present_pte_fault_bypasses_kvm(spec, expected):
    """PAE: T's shadow page was created by the first user access, so FNAME(prefetch_page)
    (2.6.25) made every entry whose gpte is not present shadow_notrap_nonpresent_pte. A load
    through pte 8 (not present) faults with the present bit clear in the error code; with VMX
    bypass_guest_pf (c7addb9020) the fault goes to the guest without an exit.
    (exits, pf_guest, pf_bypassed)."""
    k = kmap_guest(True)
    m = k.machine(spec)
    before = run(m, k.touch_all())
    after = run(m, [O.load(0, _absent_pte_vaddr())])
    assert _delta(before, after, "exits", "pf_guest", "pf_bypassed") == expected


@pytest.mark.parametrize("pae, expected", [(True, (0, 1)), (False, (1, 0))])
def test_not_present_pde_bypasses_only_where_prefetched(pae, expected):
    """A user load 8 MiB above USER_VA: its guest pde is not present. PAE: the page directory's
    shadow page was prefetched (PTTYPE 64 prefetches every level): notrap, bypass. Non-PAE:
    ``PTTYPE == 32 && level > PT_PAGE_TABLE_LEVEL`` gets nonpaging_prefetch_page (all trap): an
    exit and a reflected fault. (exits, pf_bypassed)."""
    k = kmap_guest(pae)
    m = k.machine("flood-count")
    before = run(m, k.touch_all())
    after = run(m, [O.load(0, USER_VA + 0x800000)])
    assert _delta(before, after, "exits", "pf_bypassed") == expected


def test_bypassed_fault_does_not_reset_the_flood_detector():
    """12b7d28fc1: faults that bypass KVM are lost to fault tracking. flood-count 2.6.26, PAE:
    btr 0, btr 1 (count 2), a bypassed fault (no reset: KVM never sees it), btr 2: count 3,
    flooded. Non-PAE, the same fault on a missing pde exits and is reflected, which resets the
    count (a25f7e1f8c): btr 2 restarts at 1, no flood."""
    for pae, far, flooded in ((True, _absent_pte_vaddr(), 1), (False, USER_VA + 0x800000, 0)):
        k = kmap_guest(pae)
        m = k.machine("flood-count")
        _setup(k, m)
        after = run(m, [k.btr(0), k.btr(1), O.load(0, far), k.btr(2)])
        assert after["mmu_flooded"] == flooded, pae


def test_emulated_clear_makes_the_spte_notrap():
    """2.4 pte_clear of pte 3 through the slot (PAE: high half, then low): kvm_mmu_pte_write
    re-reads the whole gpte; after the low half it is not present, so update_pte sets
    shadow_notrap_nonpresent_pte. The process's next access to page 3 faults without an exit."""
    k = kmap_guest(True)
    m = k.machine("always-emulate")
    _setup(k, m)
    va = k.slot(KM_PTE2)[0] + (k.ptes[3] & 0xFFF)
    run(m, [O.store(0, va + 4, 4, 0), O.store(0, va, 4, 0)])
    before = run(m, [])
    after = run(m, [O.load(0, USER_VA + 3 * 4096)])
    assert _delta(before, after, "exits", "pf_bypassed") == (0, 1)


# ============================================================ 4. user-mode writes to a page table
@pytest.mark.parametrize("spec, expected", [
    # (exit_ptwrite_emulate, exit_ptwrite_unshadow, exit_hidden_fault, T still shadowed)
    ("flood-count:variant=2.6.20", (0, 0, 1, False)),
    ("flood-count", (1, 0, 0, True)),
    ("flood-count:variant=2.6.27", (1, 0, 0, True)),
    ("xen-early-unshadow", (0, 1, 1, False)),
])
def test_user_mode_write_to_a_page_table(spec, expected):
    """The process maps its own page table T writable (a guest that lets user mode write page
    tables, e.g. Xenner) and stores to it.

    2.6.20-2.6.25 mmu_set_spte: ``if (user_fault) { mmu_unshadow(); goto unshadowed; }``: the
    fault installs a writable spte and unshadows T: one hidden-fault exit. 2.6.26 (6bf6a9532f
    removed the branch): the spte is read-only, the write is a ptwrite, emulated: one exit, T
    stays shadowed. Xen 3.3: "We do not emulate user writes": sh_remove_shadows, the guest
    re-executes and faults once more (now a plain hidden fault): two exits."""
    k = kmap_guest(True)
    va_t = USER_VA + 0x800000  # mapped by another table (T does not map itself)
    k.guest.set_pte_direct(k.proc, va_t, k.table, USER_PTE | A | D)
    m = k.machine(spec)
    before = run(m, k.touch_all())
    pte7 = k.ptes[7] & 0xFFF
    value = k.guest.mem.read32(k.ptes[7])
    after = run(m, [O.store(0, va_t + pte7, 4, value)])
    got = _delta(before, after, "exit_ptwrite_emulate", "exit_ptwrite_unshadow",
                 "exit_hidden_fault")
    assert got + (k.table in m.by_gfn,) == expected


# ======================================================================= 5. 2.6.28 resync zaps
@pytest.mark.parametrize("keep, zapped", [(False, 1), (True, 0)])
def test_resync_zaps_a_page_with_no_present_spte(keep, zapped):
    """unsync (2.6.28): btr 0 through the slot unsyncs T (the slot's spte becomes writable). The
    kernel then clears ptes natively (no exits). A cr3 load syncs T: FNAME(sync_page) drops every
    spte whose gpte is no longer present and returns ``!nr_present``; kvm_sync_page zaps T when
    none is left (mmu_shadow_zapped + 1, T no longer shadowed). Keeping pte 7 keeps T."""
    k = kmap_guest(False)
    m = k.machine("unsync")
    _setup(k, m)
    run(m, [k.btr(0)])
    assert m.counters.exit_ptwrite_unsync == 1
    slot = k.slot(KM_PTE2)[0]
    clears = [O.store(0, slot + (k.ptes[i] & 0xFFF), 4, 0) for i in range(8 if not keep else 7)]
    before = run(m, clears)
    after = run(m, [O.cr3(0, k.proc.cr3)])
    assert _delta(before, after, "exits") == (1,)  # only the cr3 load
    assert after["mmu_shadow_zapped"] - before["mmu_shadow_zapped"] == zapped
    assert (k.table in m.by_gfn) == keep


# ======================================================================= 6. smaller ones
@pytest.mark.parametrize("kernel, high_first", [
    ("rhel3", True), ("2.4", True), ("2.6.12", True), ("2.6.20", False), ("2.6-proposed", False)])
def test_pae_pte_clear_order_per_kernel(kernel, high_first):
    """2.4 and 2.6.12: ``set_pte(ptep, __pte(0))`` writes pte_high, then pte_low; native_pte_clear
    (6e5882cfa2, 2006) writes low, then high."""
    k = kmap_guest(True)
    ops = Kernel(k.guest, kernel).pte_clear(0, 0xC0001000)
    assert [op[2] for op in ops] == ([0xC0001004, 0xC0001000] if high_first
                                     else [0xC0001000, 0xC0001004])


@pytest.mark.parametrize("variant, refault", [("2.6.20", 1), ("2.6.26", 0)])
def test_2620_has_no_quadrant_filter(variant, refault):
    """Non-PAE: T's 1024 gptes are shadowed by two pages, quadrant 0 (gptes 0-511) and quadrant 1
    (512-1023). A page mapped by gpte 512 (USER_VA + 2 MiB) is touched: spte 0 of the quadrant-1
    page. btr 0 writes gpte 0. 2.6.26 updates only the quadrant-0 page. 2.6.20's
    kvm_mmu_pre_write zaps ``page_offset = (offset << 1) & ~PAGE_MASK`` (spte 0) in every shadow
    page of T, so the quadrant-1 spte is lost too and the next access to that page takes one
    more hidden fault."""
    k = kmap_guest(False)
    far = USER_VA + 0x200000
    k.guest.set_pte_direct(k.proc, far, k.guest.alloc_high())
    m = k.machine(f"flood-count:variant={variant}")
    _setup(k, m)
    run(m, [O.load(0, far)])
    before = run(m, [k.btr(0)])
    after = run(m, [O.load(0, far)])
    assert _delta(before, after, "exit_hidden_fault") == (refault,)


def test_per_page_flood_default_is_the_3x_rule():
    """K36 detect_write_flooding skips leaf pages; the default follows it (include_leaf=false)."""
    assert make_policy("per-page-flood").include_leaf is False


def test_trace_compute_carries_an_instruction_count():
    """docs/trace-format.md: ``CPU compute CYCLES [INSNS]`` (INSNS defaults to 0, unknown)."""
    from bench.trace import format_op, parse_op

    assert parse_op("0 compute 0 12", "t:1", 1) == (O.COMPUTE, 0, 0, 0, 12, "compute")
    assert parse_op("0 compute 250", "t:1", 1) == (O.COMPUTE, 0, 0, 250, 0, "compute")
    assert format_op(O.gap(0, 12)) == "0 compute 0 12"
    assert parse_op(format_op(O.compute(0, 7, 3)), "t:1", 1) == tuple(O.compute(0, 7, 3))


@pytest.mark.parametrize("spec, expected", [("flood-count", (0, 1)),
                                            ("flood-count:variant=2.6.20", (1, 0))])
def test_not_present_pdpte_bypasses(spec, expected):
    """PAE: mmu_alloc_roots sets ``pae_root[i] = 0`` for a pdpte that is not present (2.6.25
    mmu.c), an entry without reserved bits: a fault through it has the present bit clear in its
    error code and bypasses KVM where bypass_guest_pf is on. (exits, pf_bypassed)."""
    k = kmap_guest(True)
    k.guest.mem.write_entry(k.proc.cr3 + 8, True, 0)  # pdpte 1 (1-2 GiB) not present
    m = k.machine(spec)
    before = run(m, [])
    after = run(m, [O.load(0, 0x40000000)])
    assert _delta(before, after, "exits", "pf_bypassed") == expected


def test_report_names_every_policy_parameter():
    """A published row must say which release it ran: report.md lists every policy's parameters,
    defaults included (xen-batch's version, flood-count's variant)."""
    from bench.report import policies_table

    records = [{"policy_label": "xen-batch", "policy_params": {"version": "3.3.1", "extra": 4}},
               {"policy_label": "flood-count", "policy_params": {"variant": "2.6.26"}}]
    text = "\n".join(policies_table(records))
    assert "| xen-batch | extra=4, version=3.3.1 |" in text
    assert "| flood-count | variant=2.6.26 |" in text
