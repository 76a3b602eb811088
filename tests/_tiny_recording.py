"""A tiny recording of a non-PAE guest written with bench.record.format's writer, small enough to
derive its replay's counts by hand (tests/test_guest_replay.py).

Guest physical memory: the page directory D at 0x1000, the user page table T at 0x2000 (mapping
0x08000000..), the page table M at 0x3000 (mapping the scenario's mark page 0x5B000000).
D's entry 768 is a 4-MiB kernel page mapping physical 0..4 MiB at 0xC0000000 (the direct map), so
the kernel writes T through 0xC0002000.
"""

from __future__ import annotations

import io
from pathlib import Path

from bench.record import format as F
from bench.record.format import Event, encode_event, write_recording

D, T, M = 0x1000, 0x2000, 0x3000
USER_VA = 0x08000000
MARK_VA = 0x5B000000
KERNEL_LARGE = 0x1E3  # P RW A D PS G
USER_PDE = 0x067  # P RW US A D
USER_PTE = 0x067
DATA0, DATA1, DATA2, MARK_PAGE = 0x100000, 0x101000, 0x102000, 0x200000
HEADER = {"arch": "i386", "paging_levels": 2, "entry_bytes": 4, "page_offset": 0xC0000000,
          "provenance": {"scenario": "tiny"}, "phases": ["one"], "symbols": []}


def _page(entries: dict[int, int]) -> bytes:
    out = bytearray(4096)
    for i, v in entries.items():
        out[4 * i:4 * i + 4] = v.to_bytes(4, "little")
    return bytes(out)


def events() -> list[Event]:
    d = _page({USER_VA >> 22: T | USER_PDE, MARK_VA >> 22: M | USER_PDE, 768: KERNEL_LARGE})
    t = _page({0: DATA0 | USER_PTE, 1: DATA1 | USER_PTE})
    m = _page({0: MARK_PAGE | USER_PTE})
    return [
        Event(F.TABLE, 2, 0, F.SNAPSHOT, 4096, 0, 0, D, 0, 0, d),
        Event(F.TABLE, 1, 0, F.SNAPSHOT, 4096, 0, 0, T, USER_VA, 0, t),
        Event(F.TABLE, 1, 0, F.SNAPSHOT, 4096, 0, 0, M, MARK_VA, 0, m),
        Event(F.MARK, 0, 0, 0, 1, 1000, 0x08048000, 0, MARK_VA + 8, 1),
        # 1. the user reads its page (a TLB miss)
        Event(F.WALK, 0, 1, F.USER, 0, 1001, 0x08048010, 0, USER_VA, 0),
        # 2. the kernel maps a third page: a 4-byte mov to T's entry 2 through the direct map
        Event(F.STORE, 4, 1, 0, 1, 1011, 0xC1000000, T + 8, 0xC0000000 + T + 8,
              DATA2 | USER_PTE),
        # 3. the user writes its second page (a TLB miss: a write walk)
        Event(F.WALK, 0, 1, F.USER | F.WRITE, 0, 1021, 0x08048020, 0, USER_VA + 0x1000, 0),
        # 4. the kernel clears the accessed bit of the first page's pte (a locked btr), and
        #    flushes it (the inferred address of the last pte store)
        Event(F.STORE, 4, 7, F.LOCKED, 1, 1031, 0xC1000100, T, 0xC0000000 + T,
              (DATA0 | USER_PTE) & ~0x20),
        Event(F.INVLPG, 0, 0, F.INFERRED, 0, 1032, 0xC1000104, 0, USER_VA, 0),
        # 5. the user reads its first page again
        Event(F.WALK, 0, 1, F.USER, 0, 1040, 0x08048030, 0, USER_VA + 4, 0),
        Event(F.MARK, 0, 0, 0, 0, 1100, 0x08048040, 0, MARK_VA, 0),
    ]


def write(path: Path, evs: list[Event] | None = None) -> Path:
    body = b"".join(encode_event(e) for e in (evs if evs is not None else events()))
    write_recording(path, HEADER, io.BytesIO(body))
    return path
