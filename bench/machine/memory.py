"""Guest physical memory, as 32-bit little-endian words.

Pages the guest kernel uses as page tables are held as dense arrays (the simulator reads and
writes their entries constantly); every other page is held sparsely, one dict entry per written
word, so a guest of millions of data pages costs only what it writes. Unwritten memory reads 0.

A recording (bench.recording) attaches a ``ReadLog`` while the workload generates its next
operation: every read through ``read32``, ``read_entry`` and ``read`` is logged and every write
noted; at other times (the executors' own accesses) ``log`` is None.
"""

from __future__ import annotations

from array import array
from typing import Final

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 4096
_ZERO_PAGE = array("I", bytes(PAGE_SIZE))
READ32: Final = 0
READ_ENTRY: Final = 1
READ: Final = 2
"""How a logged read was made: ``read32``, ``read_entry`` or ``read``."""


class ReadLog:
    """The reads made while a log is attached: ``(at, method, gpa, arg, value)`` with ``at`` the
    operations executed before (set by the recorder), ``arg`` read_entry's pae or read's width;
    ``wrote`` is set by any write."""

    __slots__ = ("at", "reads", "wrote")

    def __init__(self) -> None:
        self.at = 0
        self.reads: list[tuple[int, int, int, int, int]] = []
        self.wrote = False


class GuestMemory:
    """Guest-physical memory addressed by gpa (bytes); words are 4 bytes, little-endian."""

    __slots__ = ("tables", "words", "log")

    def __init__(self) -> None:
        self.tables: dict[int, array[int]] = {}
        self.words: dict[int, int] = {}
        self.log: ReadLog | None = None

    def add_table_page(self, gfn: int) -> array[int]:
        """Hold page ``gfn`` densely (the guest allocated it as a page table); keeps its contents."""
        if self.log is not None:
            self.log.wrote = True
        page = self.tables.get(gfn)
        if page is None:
            page = array("I", _ZERO_PAGE)
            base = gfn << 10
            words = self.words
            for i in range(1024 if words else 0):  # words written before: they move into it
                value = words.pop(base + i, None)
                if value is not None:
                    page[i] = value
            self.tables[gfn] = page
        return page

    # -- word access (the hot path) --------------------------------------------------------
    def _word(self, gpa: int) -> int:
        """The aligned word containing ``gpa``, not logged (the building block of the reads)."""
        page = self.tables.get(gpa >> PAGE_SHIFT)
        return page[(gpa & 0xFFF) >> 2] if page is not None else self.words.get(gpa >> 2, 0)

    def read32(self, gpa: int) -> int:
        """The aligned 4-byte word containing ``gpa``."""
        value = self._word(gpa)
        log = self.log
        if log is not None:
            log.reads.append((log.at, READ32, gpa, 0, value))
        return value

    def write32(self, gpa: int, value: int) -> None:
        if self.log is not None:
            self.log.wrote = True
        page = self.tables.get(gpa >> PAGE_SHIFT)
        if page is not None:
            page[(gpa & 0xFFF) >> 2] = value
        elif value:
            self.words[gpa >> 2] = value
        else:
            self.words.pop(gpa >> 2, None)

    def read_entry(self, gpa: int, pae: bool) -> int:
        """A page-table entry at ``gpa`` (8 bytes under PAE, else 4)."""
        page = self.tables.get(gpa >> PAGE_SHIFT)
        if page is not None:
            i = (gpa & 0xFFF) >> 2
            value = page[i] | (page[i + 1] << 32) if pae else page[i]
        elif pae:
            w = gpa >> 2
            value = self.words.get(w, 0) | (self.words.get(w + 1, 0) << 32)
        else:
            value = self.words.get(gpa >> 2, 0)
        log = self.log
        if log is not None:
            log.reads.append((log.at, READ_ENTRY, gpa, int(pae), value))
        return value

    def write_entry(self, gpa: int, pae: bool, value: int) -> None:
        if pae:
            self.write32(gpa, value & 0xFFFFFFFF)
            self.write32(gpa + 4, value >> 32)
        else:
            self.write32(gpa, value)

    # -- byte-granular access (stores and loads of any width) ------------------------------
    def read(self, gpa: int, width: int) -> int:
        """``width`` bytes at ``gpa`` as an unsigned little-endian integer (may span words)."""
        if width == 4 and not gpa & 3:
            value = self._word(gpa)
        else:
            value = 0
            for i in range(width):
                a = gpa + i
                value |= ((self._word(a & ~3) >> (8 * (a & 3))) & 0xFF) << (8 * i)
        log = self.log
        if log is not None:
            log.reads.append((log.at, READ, gpa, width, value))
        return value

    def write(self, gpa: int, width: int, value: int) -> None:
        if self.log is not None:
            self.log.wrote = True
        if width == 4 and not gpa & 3:
            self.write32(gpa, value & 0xFFFFFFFF)
            return
        for i in range(width):
            a = gpa + i
            word = a & ~3
            shift = 8 * (a & 3)
            old = self._word(word)
            byte = (value >> (8 * i)) & 0xFF
            self.write32(word, (old & ~(0xFF << shift)) | (byte << shift))

    # -- comparison -------------------------------------------------------------------------
    def image(self) -> dict[int, int]:
        """Every non-zero word as {word address: value}: what the guest can see."""
        out = {w: v for w, v in self.words.items() if v}
        for gfn, page in self.tables.items():
            base = gfn << 10
            for i, v in enumerate(page):
                if v:
                    out[base + i] = v
        return out

    def copy(self) -> GuestMemory:
        other = GuestMemory()
        other.words = dict(self.words)
        other.tables = {gfn: array("I", page) for gfn, page in self.tables.items()}
        return other
