"""The shipped real-guest recordings (recordings/) against what the kernel code must produce.

Worked out from Linux 6.1 (the Debian kernels the recordings name):
- kmap_local of a highmem page (mm/highmem.c __kmap_local_pfn_prot -> set_pte_at): under PAE
  native_set_pte writes pte_high, then pte_low (arch/x86/include/asm/pgtable-3level.h), two 4-byte
  stores; kunmap_local_indexed -> pte_clear -> native_pte_clear writes pte_low = 0, then
  pte_high = 0, and flushes the slot with invlpg (arch/x86/mm/tlb.c native_flush_tlb_one_user).
  Without PAE each is one 4-byte store (pgtable-2level.h).
- reclaim clears accessed bits with ptep_clear_flush_young -> ptep_test_and_clear_young ->
  test_and_clear_bit(_PAGE_BIT_ACCESSED = 5): a 4-byte btr (lock patched out on one CPU).
- fork write-protects the parent's ptes for copy-on-write (copy_page_range -> ptep_set_wrprotect
  -> clear_bit(_PAGE_BIT_RW = 1): a 1-byte `and`); the child's tables are filled before its pgd is
  ever loaded, so they appear as table events with their contents, not as stores; exit zaps the
  ptes and frees the tables (untable events).
No QEMU is needed: the files are in the repository.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

import pytest

from bench.record import format as F

from _recording_util import RECORDINGS, released_after_module, symbol_lookup

ROOT = RECORDINGS


@lru_cache(maxsize=None)
def load(name: str):
    rec = F.open_recording(ROOT / name)
    return rec, list(rec.events()), symbol_lookup(rec)


_release_events = released_after_module(load)


RECLAIM = ["reclaim-686-pae.rec", "reclaim-686.rec"]
FORK = ["fork-exit-686-pae.rec", "fork-exit-686.rec"]


@pytest.mark.parametrize("name", RECLAIM + FORK)
def test_provenance(name):
    rec, events, _ = load(name)
    prov = rec.header["provenance"]
    pae = name.endswith("-686-pae.rec")
    assert prov["kernel_package"].endswith("-686-pae" if pae else "-686")
    assert prov["scenario"] == name.split("-686")[0]
    assert rec.header["arch"] == ("i386-pae" if pae else "i386")
    assert rec.header["entry_bytes"] == (8 if pae else 4)
    assert "nokaslr" in prov["guest_cmdline"] and prov["icount"] is False
    assert prov["qemu"].startswith("QEMU emulator version")
    marks = [e.aux for e in events if e.kind == F.MARK]
    assert marks == list(range(1, len(rec.header["phases"]) + 1)) + [0]


@pytest.mark.parametrize("name", RECLAIM + FORK)
def test_kmap_local_pairs(name):
    _, events, sym = load(name)
    pae = name.endswith("-686-pae.rec")
    stores = [e for e in events if e.kind == F.STORE]
    maps = [e for e in stores if sym(e.pc) == "__kmap_local_pfn_prot"]
    unmaps = [e for e in stores if sym(e.pc) == "kunmap_local_indexed"]
    per = 2 if pae else 1
    assert maps and len(maps) % per == 0 and len(unmaps) % per == 0
    assert abs(len(maps) - len(unmaps)) <= per * 4  # a kmap live across a phase boundary
    assert all(e.arg == 4 and e.aux == 1 for e in maps + unmaps)
    index = {id(e): i for i, e in enumerate(events) if e.kind == F.STORE}
    checked = 0
    for e in unmaps[::per]:
        i = index[id(e)]
        pair = events[i:i + per]
        assert [p.kind for p in pair] == [F.STORE] * per
        assert [p.pa - e.pa for p in pair] == ([0, 4] if pae else [0])  # low half first
        assert all(p.value == 0 for p in pair)
        j = i + per
        while events[j].kind == F.WALK:
            j += 1
        nxt = events[j]
        assert nxt.kind == F.INVLPG and nxt.flags & F.INFERRED
        assert nxt.va >= 0xFF000000  # the fixmap slot the pte maps
        checked += 1
    for e in maps[::per]:
        i = index[id(e)]
        pair = [x for x in events[i:i + per + 2] if x.kind == F.STORE][:per]
        if pae:
            assert [p.pa - e.pa for p in pair] == [0, -4]  # high half, then low
            assert pair[1].value & 1  # the low half carries the present bit
        else:
            assert pair[0].value & 1
    assert checked == len(unmaps) // per


@pytest.mark.parametrize("name", RECLAIM)
def test_reclaim_clears_accessed_bits_through_kmaps(name):
    rec, events, sym = load(name)
    proof = rec.header["proof"]["checked"]
    assert min(proof["pgscan"], proof["pgsteal"], proof["pswpout"], proof["pswpin"]) > 0
    young = [e for e in events if e.kind == F.STORE and sym(e.pc) == "ptep_clear_flush_young"]
    assert young
    for e in young:
        assert F.INSN_NAMES[e.insn] == "btr" and e.arg == 4 and e.aux == 1
        assert not e.value & (1 << 5)  # the accessed bit is clear after the store
        assert e.va >= 0xFF000000  # through the kmap_local fixmap slot (HIGHPTE)
    writers = Counter(sym(e.pc) for e in events if e.kind == F.STORE)
    assert writers["try_to_unmap_one"] > 0 and writers["do_swap_page"] > 0


@pytest.mark.parametrize("name", FORK)
def test_fork_exit_copies_zaps_and_frees_tables(name):
    rec, events, sym = load(name)
    assert rec.header["proof"]["checked"]["children_ok"] == 16
    wrprotect = [e for e in events if e.kind == F.STORE and sym(e.pc) == "copy_page_range"]
    assert len(wrprotect) >= 16
    for e in wrprotect:
        assert F.INSN_NAMES[e.insn] == "and" and e.arg == 1 and e.aux == 1
        assert e.value & 1 and not e.value & 2  # still present, no longer writable
    kinds = Counter(e.kind for e in events)
    assert kinds[F.UNTABLE] > 0 and kinds[F.TABLE] > kinds[F.UNTABLE] // 2
    # every table event carries its contents; pdpt slots only under PAE
    sizes = {len(e.payload) for e in events if e.kind == F.TABLE}
    assert sizes == ({32, 4096} if name.endswith("-686-pae.rec") else {4096})
