"""The shipped demand-paging, shared-file and mixed recordings against what Linux 6.1 must do.

Worked out from the kernel code (the Debian 6.1 kernels the recordings name; HIGHPTE, so every
user pte store goes through a kmap_local fixmap slot at 0xFF000000 and above):
- A write fault on a never-present anonymous pte (mm/memory.c do_anonymous_page, inlined into
  handle_mm_fault) stores one pte: `mk_pte(page, vma->vm_page_prot)`, then pte_mkwrite and
  pte_mkdirty for a writable vma, so present, RW, user, accessed and dirty (0x67) are set.
  set_pte_at is native_set_pte: under PAE two 4-byte stores, pte_high then pte_low
  (arch/x86/include/asm/pgtable-3level.h); without PAE one 4-byte store (pgtable-2level.h).
  A pte table the fault needs is installed first (pmd_install -> pmd_populate -> set_pmd): under
  PAE an 8-byte cmpxchg8b (pxx_xchg64), without PAE a 4-byte store to the page directory.
  MADV_NOHUGEPAGE keeps transparent huge pages out (do_huge_pmd_anonymous_page is not taken).
- munmap (zap_pte_range -> ptep_get_and_clear_full -> native_ptep_get_and_clear, CONFIG_SMP)
  clears each pte once with an atomic exchange: under PAE arch_atomic64_xchg, the cmpxchg8b loop
  of arch/x86/lib/atomic64_cx8_32.S (atomic64_xchg_cx8), whose first cmpxchg8b fails and, as a
  failing cmpxchg8b does, writes the pte back unchanged before the second stores 0; without PAE
  a 4-byte xchg; free_pgtables then unlinks the emptied pte tables (untable events).
- A write fault on a MAP_SHARED tmpfs page already in the page cache (do_shared_fault ->
  finish_fault -> do_set_pte) maps that page in the faulting process's own pte, with the same
  bits; so N processes mapping one file make N ptes, in N different pte tables, to every one of
  the file's page-cache pages (rmap's i_mmap walk; the pte_chain case of 2.6's rmap).
No QEMU is needed: the files are in the repository.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import lru_cache

import pytest

from bench.record import format as F

from _recording_util import RECORDINGS, released_after_module, symbol_lookup

ROOT = RECORDINGS
PTE_BITS = 0x67  # present, RW, user, accessed, dirty
FIXMAP = 0xFF000000


@lru_cache(maxsize=None)
def load(name: str):
    """The recording, its events split by phase (phase number -> events) and a pc -> symbol."""
    rec = F.open_recording(ROOT / name)
    sym = symbol_lookup(rec)
    phases: dict[int, list[F.Event]] = defaultdict(list)
    phase = 0
    events = list(rec.events())
    for e in events:
        if e.kind == F.MARK:
            phase = e.aux
        phases[phase].append(e)
    return rec, events, phases, sym


_release_events = released_after_module(load)


def pte_stores(events, eb: int):
    """(event, user va the pte maps) for every store to a level-1 table with a user va, tracking
    which virtual range each table frame maps from its table events."""
    base: dict[int, int] = {}
    out = []
    for e in events:
        if e.kind == F.TABLE and e.arg == 1:
            base[e.pa >> 12] = e.va
        elif e.kind == F.STORE and e.aux == 1 and (e.pa >> 12) in base:
            va = base[e.pa >> 12] + ((e.pa & 0xFFF) // eb) * 4096
            if va < 0xC0000000:
                out.append((e, va))
    return out


def phase_events(name: str, *numbers: int):
    """The events of the given phases, preceded by every table event before them (to know which
    va each table maps)."""
    _, events, phases, _ = load(name)
    first = min(numbers)
    earlier = [e for p, evs in phases.items() if p < first or (p == 0 and first > 0)
               for e in evs if e.kind == F.TABLE]
    return earlier + [e for n in numbers for e in phases[n]]


def mapped_by_faults(name: str, phase: int, writer: str, start: int, pages: int):
    """The user va -> pte value of every pte of the ``pages`` from ``start`` that a fault handler
    (``writer``) made present in ``phase``, checking each is one 8-byte pte written as two 4-byte halves (PAE: high, then low)
    or one 4-byte store."""
    rec, _, _, sym = load(name)
    eb = rec.header["entry_bytes"]
    stores = [(e, va) for e, va in pte_stores(phase_events(name, phase), eb)
              if start <= va < start + pages * 4096]
    assert stores and {sym(e.pc) for e, _ in stores} == {writer}
    made: dict[int, int] = {}
    count = Counter(va for _, va in stores)
    assert set(count.values()) == {eb // 4}  # PAE: two stores per pte; 686: one
    by_va = defaultdict(list)
    for e, va in stores:
        by_va[va].append(e)
    for va, pair in by_va.items():
        assert all(e.arg == 4 and F.INSN_NAMES[e.insn] == "mov" and e.va >= FIXMAP for e in pair)
        if eb == 8:
            high, low = pair
            assert high.pa == low.pa + 4  # pte_high first, then pte_low
            assert high.icount < low.icount
            value = low.value
        else:
            value = pair[0].value
        assert value & PTE_BITS == PTE_BITS
        made[va] = value
    return made


def cleared_by_zap(name: str, phase: int):
    """(pte address, user va) -> count of atomic pte clears (ptep_get_and_clear's exchange) in
    ``phase``. Under PAE the exchange is atomic64_xchg_cx8's cmpxchg8b loop entered with a guess
    that is not the pte: the first cmpxchg8b fails, and a failing cmpxchg8b writes the
    destination back unchanged (a store a shadow MMU traps too); the second stores 0."""
    rec, _, _, sym = load(name)
    eb = rec.header["entry_bytes"]
    cleared = Counter()
    last: dict[int, F.Event] = {}
    for e, va in pte_stores(phase_events(name, phase), eb):
        insn = F.INSN_NAMES[e.insn]
        if e.value == 0 and ((eb == 8 and insn == "cmpxchg8b" and e.arg == 8) or
                             (eb == 4 and insn == "xchg" and e.arg == 4)):
            assert e.va >= FIXMAP
            if eb == 8:
                before = last.get(e.pa)
                assert before is not None and F.INSN_NAMES[before.insn] == "cmpxchg8b"
                assert before.value & 1 and sym(before.pc) == sym(e.pc) == "atomic64_xchg_cx8"
            cleared[e.pa, va] += 1
        last[e.pa] = e
    return cleared


def check_demand(name: str, touch: int, unmap: int, pages: int) -> None:
    rec, _, phases, sym = load(name)
    eb = rec.header["entry_bytes"]
    start = int(rec.header["proof"]["scenario_output"]["demand.va"])
    made = mapped_by_faults(name, touch, "handle_mm_fault", start, pages)
    region = sorted(made)
    # one pte per 4 KiB page of the mapping: no huge page served any of it
    assert region == [start + i * 4096 for i in range(pages)]
    assert len({v >> 12 for v in made.values()}) == pages  # a frame of its own each
    # the pte tables the faults needed: installed by pmd_install, each linking a new table
    installs = [e for e in phases[touch] if e.kind == F.STORE and sym(e.pc) == "pmd_install"]
    new_tables = [e for e in phases[touch] if e.kind == F.TABLE and e.arg == 1]
    span = 2 << 20 if eb == 8 else 4 << 20
    assert len(installs) <= pages * 4096 // span + 1
    if pages * 4096 > 2 * span:
        assert installs  # the mapping needed tables of its own
    for e in installs:
        assert e.aux == 2 and e.arg == eb and e.value & 1
        assert F.INSN_NAMES[e.insn] == ("cmpxchg8b" if eb == 8 else "mov")
    assert {e.value & ~0xFFF for e in installs} <= {e.pa for e in new_tables}
    cleared = Counter(va for (_, va), n in cleared_by_zap(name, unmap).items() for _ in range(n))
    assert {va: cleared[va] for va in region} == {va: 1 for va in region}
    untabled = {e.pa for e in phases[unmap] if e.kind == F.UNTABLE and e.arg == 1}
    assert {e.value & ~0xFFF for e in installs} <= untabled  # free_pgtables frees them


def check_shared(name: str, map_phase: int, unmap_phase: int, children: int, pages: int) -> None:
    made_by = defaultdict(list)  # page-cache frame -> the user ptes that map it
    rec, _, _, sym = load(name)
    eb = rec.header["entry_bytes"]
    out = rec.header["proof"]["scenario_output"]
    start = int(out["shared.va"])
    assert out["shared.va"] and out["shared.va_same"] == "1"  # every child mapped it there
    stores = [(e, va) for e, va in pte_stores(phase_events(name, map_phase), eb)
              if start <= va < start + pages * 4096]
    assert {sym(e.pc) for e, _ in stores} == {"do_set_pte"}  # finish_fault's, nothing else
    for e, va in stores:
        assert e.arg == 4 and F.INSN_NAMES[e.insn] == "mov" and e.va >= FIXMAP
        if e.value & 1:  # the low half (PAE) or the whole pte: present
            assert e.value & PTE_BITS == PTE_BITS
            made_by[e.value >> 12].append(e.pa)
    assert len(made_by) == pages  # the file's pages
    for frame, ptes in made_by.items():
        assert len(ptes) == children  # each mapped by one pte of every child
        assert len({pa >> 12 for pa in ptes}) == children  # in as many different pte tables
    per_pte = Counter(pa for ptes in made_by.values() for pa in ptes)
    assert set(per_pte.values()) == {1}
    if eb == 8:  # each present low half follows its high half
        highs = {e.pa - 4 for e, _ in stores if not e.value & 1 and e.pa & 4}
        assert set(per_pte) <= highs
    cleared = Counter(pa for (pa, _), n in cleared_by_zap(name, unmap_phase).items()
                      for _ in range(n))
    assert {pa: cleared[pa] for pa in per_pte} == {pa: 1 for pa in per_pte}  # munmap: once each


DEMAND = ["demand-paging-686-pae.rec", "demand-paging-686.rec"]
SHARED = ["shared-file-686-pae.rec", "shared-file-686.rec"]
MIXED = ["mixed-686-pae.rec", "mixed-686.rec"]
ALL = [n for n in DEMAND + SHARED + MIXED if (ROOT / n).exists()]


def test_the_recordings_are_shipped():
    assert ALL == DEMAND + SHARED + MIXED


@pytest.mark.parametrize("name", ALL)
def test_provenance_and_phases(name):
    rec, events, _, _ = load(name)
    prov = rec.header["provenance"]
    pae = name.endswith("-686-pae.rec")
    assert prov["kernel_package"].endswith("-686-pae" if pae else "-686")
    assert prov["scenario"] == name.split("-686")[0]
    assert rec.header["entry_bytes"] == (8 if pae else 4)
    assert prov["icount"] is True and prov["deterministic"] is True
    assert "-icount" in prov["qemu_command"]
    marks = [e.aux for e in events if e.kind == F.MARK]
    assert marks == list(range(1, len(rec.header["phases"]) + 1)) + [0]


@pytest.mark.parametrize("name", [n for n in ALL if n in DEMAND])
def test_demand_paging_one_pte_per_page(name):
    rec = load(name)[0]
    proof = rec.header["proof"]["checked"]
    pages = int(rec.header["provenance"]["scenario_settings"]["SB_MB"]) * 256
    assert proof["demand.pages"] == proof["demand.minflt"] == pages
    assert proof["demand.thp_fault_alloc"] == 0 and proof["demand.pgfault"] >= pages
    assert rec.header["phases"] == ["touch", "unmap"]
    check_demand(name, 1, 2, pages)


@pytest.mark.parametrize("name", [n for n in ALL if n in SHARED])
def test_shared_file_every_page_mapped_by_every_child(name):
    rec = load(name)[0]
    settings = rec.header["provenance"]["scenario_settings"]
    children, pages = int(settings["SB_CHILDREN"]), int(settings["SB_KB"]) // 4
    proof = rec.header["proof"]["checked"]
    assert proof["shared.children_ok"] == proof["shared.smaps_seen"] == children
    assert proof["shared.minflt_min"] == proof["shared.minflt_max"] == pages
    assert proof["shared.shared_kb_min"] == proof["shared.rss_kb_min"] == pages * 4
    assert rec.header["phases"] == ["map", "unmap"]
    check_shared(name, 1, 2, children, pages)


@pytest.mark.parametrize("name", [n for n in ALL if n in MIXED])
def test_mixed_each_part_in_its_phases(name):
    rec, _, phases, sym = load(name)
    s = rec.header["provenance"]["scenario_settings"]
    names = rec.header["phases"]
    assert names == ["demand-touch", "demand-unmap", "fork-setup", "fork-exit", "shared-setup",
                     "shared-map", "shared-unmap", "reclaim-fill", "reclaim"]
    check_demand(name, 1, 2, int(s["SB_DEMAND_MB"]) * 256)
    wrprotect = [e for e in phases[4] if e.kind == F.STORE and sym(e.pc) == "copy_page_range"]
    assert len(wrprotect) >= int(s["SB_FORK_CHILDREN"])
    assert all(F.INSN_NAMES[e.insn] == "and" and e.arg == 1 and not e.value & 2 for e in wrprotect)
    check_shared(name, 6, 7, int(s["SB_SHARED_CHILDREN"]), int(s["SB_SHARED_KB"]) // 4)
    young = [e for p in (8, 9) for e in phases[p]
             if e.kind == F.STORE and sym(e.pc) == "ptep_clear_flush_young"]
    assert young and all(F.INSN_NAMES[e.insn] == "btr" and not e.value & 0x20 for e in young)
    proof = rec.header["proof"]["checked"]
    assert min(proof[f"reclaim.{k}"] for k in ("pgscan", "pgsteal", "pswpout", "pswpin")) > 0


def test_inspect_shows_the_proof_and_the_phases(capsys):
    from bench.__main__ import main
    assert main(["inspect", str(ROOT / "demand-paging-686.rec")]) == 0
    out = capsys.readouterr().out
    assert "scenario proof (checked): demand.minflt 4,096, demand.pages 4,096" in out
    assert "demand.va=" in out and "-icount yes (deterministic)" in out
    header = next(line for line in out.splitlines() if line.split()[:1] == ["start"])
    assert header.split() == ["start", "touch", "unmap"]
