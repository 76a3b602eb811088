"""A recording (bench.record.format) as guest operations (bench.ops): a real kernel's page-table
traffic, streamed, for every executor and policy (the ``guest`` workload, workloads/guest.py).

How each event becomes operations (docs/real-guests.md, "How a recording is replayed", gives the
reasons and the measured consequences):

- the snapshot (``table`` events flagged ``snapshot``, before the first mark) is the guest's
  memory when the run starts: every tracked table frame, held densely, with its recorded bytes;
  the vCPU's first cr3 is the snapshot root under which the first mark's user address is mapped
  (the PTI user copy, root + 0x1000, when both copies map it);
- ``store``: a STORE of the recorded width and bytes at the recorded *virtual* address (the
  executors translate it through the guest tables, which give the recorded physical address for
  every store of the shipped recordings: docs/real-guests.md; tests/test_guest_replay.py checks
  it on a prefix of each); a 4-byte
  ``btr`` becomes a locked BTR of the bit it cleared (bit 5 when the value has A clear); the
  classes the emulator distinguishes (mov, xchg, cmpxchg, cmpxchg8b, or, and) keep their class,
  the rest (stos, movs, xadd, add, sub, push, bts, other) are STOREs of class mov;
- ``cr3``: a CR3 load, made after the ``table`` events that follow it (the tables it links
  were filled under the previous cr3, before the load); ``invlpg``: an INVLPG of the inferred address;
- ``walk``: a LOAD (read or fetch) or a 1-byte STORE of 0 (write) at the accessed address, since
  a walk is an access the TLB model says walks the tables; walks at the instruction count of a
  following ``store`` to the same page are that store's own walk and are dropped (the STORE
  walks);
- ``table`` after the start (a frame linked into a tracked hierarchy, with its contents then):
  the words in which guest memory differs from the recorded contents (written while the
  recorder did not track the frame) are written by 4-byte mov STOREs, through the direct map for
  lowmem frames, else through the last kmap_local slot the kernel used (mapped, written,
  unmapped and flushed, as kmap_local does); ``untable``: nothing (the shadow MMU decides when
  it stops shadowing a frame);
- ``mark``: a MARK when a phase ends (arg: the phase that ended);
- the instruction counts between events become gaps (bench.ops.gap) that cost no native cycles.

Only a bounded state is kept (the tables' virtual bases and levels, a few pending walks; the
decoder's buffers are bounded by bench.record.format.CHUNK), so memory does not grow with the
recording's length (``python -m bench.perf --replay-memory`` measures it, docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bench
from bench.errors import BenchError
from bench.guest import Guest
from bench.machine.paging import A, D, P, RW
from bench.ops import BTR, CR3, INVLPG, LOAD, MARK, PAGE_OFFSET, STORE, gap
from bench.record import format as fmt

def _shipped_dir() -> Path:
    package = Path(bench.__file__).resolve().parent
    installed = package / "_recordings"
    return installed if installed.is_dir() else package.parent / "recordings"


SHIPPED_DIR = _shipped_dir()
"""The recordings shipped with shadowbench (recordings/README.md): an installed package's copy
(bench/_recordings/, which setup.py's build_py writes), else the checkout's recordings/ beside the
``bench`` package in use (found from it, not from this module, which may be the compiled build's,
bench._compiled)."""
DIRECT_END = 0xF7800000
"""End of the 6.1 i386 kernel's direct map as the recorder sees it (docs/recording.md)."""
PTI_USER_OFFSET = 0x1000
"""PTI's user copy of a pgd is the page after the kernel's (PTI_USER_PGTABLE_MASK, 6.1)."""
KMAP_PROT = P | RW | A | D
STORE_CLASSES = {"mov", "xchg", "cmpxchg", "cmpxchg8b", "or", "and"}


def shipped() -> dict[str, Path]:
    """Shipped recording names (file stem) -> path."""
    if not SHIPPED_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.rec"))}


def resolve(name_or_path: str) -> Path:
    """A shipped recording's name, or a path; BenchError naming the shipped ones if neither."""
    if not name_or_path:
        raise BenchError("workload guest needs a recording: a shipped name ("
                         + ", ".join(shipped()) + ") or a path (guest:FILE.rec)")
    known = shipped()
    if name_or_path in known:
        return known[name_or_path]
    path = Path(name_or_path)
    if path.exists() or "/" in name_or_path or name_or_path.endswith(".rec"):
        return path
    names = ", ".join(known) if known else f"none: no recordings in {SHIPPED_DIR}"
    raise BenchError(f"unknown recording {name_or_path!r}: not a file, and not a shipped "
                     f"recording (shipped: {names}; or a path to a .rec file)")


def check(path: Path) -> fmt.Recording:
    """Open and read the whole recording once (RecordingError at the first problem), so a bad
    file fails before anything is simulated."""
    rec = fmt.open_recording(path)
    kinds, snapshot = rec.tally()
    marks = kinds[fmt.MARK]
    if rec.header.get("entry_bytes") not in (4, 8):
        raise fmt.RecordingError(f"{path}: header entry_bytes {rec.header.get('entry_bytes')!r} "
                                 f"is not 4 or 8 (an i386 recording)")
    vcpus = (rec.header.get("provenance") or {}).get("vcpus", 1)
    if vcpus != 1:
        raise fmt.RecordingError(f"{path}: a recording of {vcpus!r} vCPUs; the replay handles "
                                 "one (the recorder makes one)")
    if not marks or not snapshot:
        raise fmt.RecordingError(f"{path}: the recording has no {'mark' if not marks else 'snapshot'}"
                                 " events; nothing to replay")
    return rec


class Replayer:
    """Streams one recording's operations for one vCPU (the shipped recordings have one).

    ``limit`` stops after that many events after the snapshot (0: all) and closes the phase
    with a MARK; ``stats`` counts what the replay approximated (docs/real-guests.md)."""

    def __init__(self, path: Path, limit: int = 0) -> None:
        self.rec = fmt.open_recording(path)
        header = self.rec.header
        self.pae = header["entry_bytes"] == 8
        self.guest = Guest(self.pae, 0, cpus=1, kernel_tables=False)
        self.limit = limit
        self.vbase: dict[int, int] = {}  # table frame -> first virtual address it maps
        self.level: dict[int, int] = {}  # table frame -> its level when it last became one
        self.stats: dict[str, int] = {}
        self.snapshot_events = 0
        self.cr3 = self._load_snapshot()
        self.kmap: tuple[int, int, int] | None = None  # (pte va, pte pa, mapped va)

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    # -- the start: the snapshot and the first cr3 ---------------------------------------------
    def _load_snapshot(self) -> int:
        mem = self.guest.mem
        roots: list[int] = []
        levels = int(self.rec.header["paging_levels"])
        mark_va = None
        for e in self.rec.events():
            if e.kind == fmt.MARK:
                mark_va = e.va
                break
            self.snapshot_events += 1
            if e.kind != fmt.TABLE:
                continue
            page = mem.add_table_page(e.pa >> 12)
            base = (e.pa & 0xFFF) >> 2
            for i in range(len(e.payload) // 4):
                page[base + i] = int.from_bytes(e.payload[4 * i:4 * i + 4], "little")
            self.vbase[e.pa >> 12] = e.va
            self.level[e.pa >> 12] = e.arg
            if e.arg == levels:
                roots.append(e.pa)
        if mark_va is None:
            raise fmt.RecordingError(f"{self.rec.path}: no mark event: nothing to replay")
        mapping = [r for r in roots if self._translate(r, mark_va, user=True) is not None]
        if not mapping:
            raise fmt.RecordingError(f"{self.rec.path}: no snapshot root maps the first mark's "
                                     f"address {mark_va:#x}; cannot tell the first cr3")
        for r in mapping:  # user mode: PTI's user copy of a pair
            if r + PTI_USER_OFFSET in mapping:
                return r + PTI_USER_OFFSET
        return mapping[-1]

    def _translate(self, cr3: int, va: int, user: bool) -> int | None:
        """The gpa ``va`` maps to under ``cr3`` (reads through GuestMemory.read_entry, so the
        shared-run recording sees them); None if not mapped."""
        mem, pae = self.guest.mem, self.pae
        if pae:
            pdpte = mem.read_entry((cr3 & 0xFFFFFFE0) + ((va >> 30) << 3), True)
            if not pdpte & P:
                return None
            pde_gpa = (pdpte & 0x000FFFFFFFFFF000) + (((va >> 21) & 0x1FF) << 3)
            mask, pte_shift, large = 0x000FFFFFFFFFF000, 9, 21
        else:
            pde_gpa = (cr3 & 0xFFFFF000) + ((va >> 22) << 2)
            mask, pte_shift, large = 0xFFFFF000, 10, 22
        pde = mem.read_entry(pde_gpa, pae)
        if not pde & P or (user and not pde & 4):
            return None
        if pde & 0x80:
            return (pde & mask & ~((1 << large) - 1)) + (va & ((1 << large) - 1))
        esize = 8 if pae else 4
        pte = mem.read_entry((pde & mask) + ((va >> 12) & ((1 << pte_shift) - 1)) * esize, pae)
        if not pte & P or (user and not pte & 4):
            return None
        return (pte & mask) + (va & 0xFFF)

    # -- the operations -----------------------------------------------------------------------
    def ops(self) -> Iterator[tuple[int, int, int, int, int, str]]:
        events = self.rec.events()
        for _ in range(self.snapshot_events):
            next(events)
        names = fmt.INSN_NAMES
        phase = 0
        last_icount = -1
        pending: list[Any] = []  # walks at the current instruction count
        n = 0
        held_cr3 = -1  # a cr3 load is executed after the tables it links (filled before it)
        for e in events:
            if self.limit and n >= self.limit:
                self._count("prefix_events", n)
                break
            n += 1
            kind = e.kind
            if held_cr3 >= 0 and kind != fmt.TABLE:
                self.cr3 = held_cr3
                yield (CR3, 0, held_cr3, 0, 0, "mov-cr3")
                held_cr3 = -1
            if pending and (e.icount != pending[0].icount or kind != fmt.WALK):
                if kind == fmt.STORE and e.icount == pending[0].icount:
                    page = e.va >> 12
                    kept = [w for w in pending if w.va >> 12 != page]
                    self._count("walks_of_a_store", len(pending) - len(kept))
                    pending = kept
                for w in pending:
                    yield self._walk_ops(w)
                pending = []
            if kind != fmt.TABLE and kind != fmt.UNTABLE and e.icount:
                if last_icount >= 0 and e.icount - last_icount > 1:
                    yield gap(0, e.icount - last_icount - 1)
                if last_icount < e.icount:
                    last_icount = e.icount
            if kind == fmt.STORE:
                yield self._store_op(e, names)
                if e.aux == 1:
                    self._note_kmap(e)
            elif kind == fmt.WALK:
                pending.append(e)
            elif kind == fmt.CR3:
                held_cr3 = e.value
            elif kind == fmt.INVLPG:
                yield (INVLPG, 0, e.va, 0, 0, "invlpg")
            elif kind == fmt.TABLE:
                self.vbase[e.pa >> 12] = e.va
                self.level[e.pa >> 12] = e.arg
                for op in self._table_ops(e):
                    yield op
            elif kind == fmt.MARK:
                if phase:
                    yield (MARK, 0, 0, phase, 0, "mark")
                phase = e.aux
                if not phase:
                    break
        if held_cr3 >= 0:
            yield (CR3, 0, held_cr3, 0, 0, "mov-cr3")
        for w in pending:
            yield self._walk_ops(w)
        if phase:
            yield (MARK, 0, 0, phase, 0, "mark")  # a prefix ends inside a phase

    def _store_op(self, e: fmt.Event, names: tuple[str, ...]) -> tuple[int, int, int, int, int, str]:
        insn = names[e.insn] if e.insn < len(names) else "other"
        if insn == "btr" and e.arg == 4 and not e.va & 3:
            bit = 5 if not e.value & 0x20 else _lowest_clear(e.value)
            if bit != 5:
                self._count("btr_not_accessed")
            return (BTR, 0, e.va, bit, 0, "btr")
        if insn not in STORE_CLASSES:
            self._count(f"store_{insn}_as_mov")
            insn = "mov"
        return (STORE, 0, e.va, e.arg, e.value, insn)

    def _note_kmap(self, e: fmt.Event) -> None:
        """A pte store into a kernel table mapping outside the direct map: a kmap_local slot."""
        base = self.vbase.get(e.pa >> 12)
        if base is None:
            return
        esize = 8 if self.pae else 4
        mapped = base + ((e.pa & 0xFFF) // esize) * 4096
        if mapped >= DIRECT_END:
            self.kmap = (e.va - (e.pa & (esize - 1)), e.pa - (e.pa & (esize - 1)), mapped)

    @staticmethod
    def _walk_ops(w: fmt.Event) -> tuple[int, int, int, int, int, str]:
        if w.flags & fmt.WRITE:
            return (STORE, 0, w.va, 1, 0, "mov")
        return (LOAD, 0, w.va, 1, 0, "mov")

    def _table_ops(self, e: fmt.Event) -> list[tuple[int, int, int, int, int, str]]:
        """STOREs that make the frame's memory the recorded contents (only the differing words)."""
        mem = self.guest.mem
        writes = []
        for i in range(len(e.payload) // 4):
            want = int.from_bytes(e.payload[4 * i:4 * i + 4], "little")
            if mem.read32(e.pa + 4 * i) != want:
                writes.append((e.pa + 4 * i, want))
        if not writes:
            return []
        self._count("table_words_rewritten", len(writes))
        direct = PAGE_OFFSET + e.pa
        if direct < DIRECT_END and self._translate(self.cr3, direct, False) == e.pa:
            self._count("tables_rewritten_direct")
            return [(STORE, 0, PAGE_OFFSET + gpa, 4, v, "mov") for gpa, v in writes]
        if self.kmap is None:
            raise BenchError(f"{self.rec.path}: table {e.pa:#x} needs writing before any "
                             "kmap_local slot was seen; cannot replay it")
        pte_va, pte_pa, slot = self.kmap
        old = mem.read_entry(pte_pa, self.pae)
        new = (e.pa & ~0xFFF) | KMAP_PROT
        ops: list[tuple[int, int, int, int, int, str]] = []
        if self.pae:
            ops += [(STORE, 0, pte_va + 4, 4, new >> 32, "mov"), (STORE, 0, pte_va, 4, new & 0xFFFFFFFF, "mov")]
        else:
            ops.append((STORE, 0, pte_va, 4, new, "mov"))
        ops += [(STORE, 0, slot + (gpa & 0xFFF), 4, v, "mov") for gpa, v in writes]
        if self.pae:
            ops += [(STORE, 0, pte_va, 4, old & 0xFFFFFFFF, "mov"), (STORE, 0, pte_va + 4, 4, old >> 32, "mov")]
        else:
            ops.append((STORE, 0, pte_va, 4, old, "mov"))
        ops.append((INVLPG, 0, slot, 0, 0, "invlpg"))
        self._count("tables_rewritten_kmap")
        return ops


def _lowest_clear(value: int) -> int:
    for bit in range(32):
        if not value >> bit & 1:
            return bit
    return 0
