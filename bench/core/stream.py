"""The hot-path stream file: a recorded guest run and its initial guest memory, for hotpath.c.

bench/core/reference/README.md documents the layout (all little-endian):

    magic "SBHOTP1\\n"; u64 pae, cpus, tables, words, ops, reads; u64 cr3[cpus];
    tables x (u64 gfn, u32 word[1024]), ascending gfn; words x (u64 word address, u64 value);
    op columns: u8 kind[ops], u16 cpu[ops], u64 addr[ops], i64 arg[ops], u64 value[ops];
    read columns: u64 at[reads], u8 method[reads], u64 gpa[reads], u8 arg[reads], u64 value[reads]

The columns are the recording's packed arrays (bench.recording.OP_FIELDS and READ_FIELDS)
written as they are, without the instruction names (the reference's policy never reads them).
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from bench.errors import BenchError
from bench.files import atomic_write
from bench.machine.memory import GuestMemory
from bench.recording import OP_FIELDS, READ_FIELDS, OpRecording

MAGIC = b"SBHOTP1\n"
OP_COLUMNS = OP_FIELDS[:5]
"""kind, cpu, addr, arg, value (the instruction-name column is not exported)."""
_HEADER = struct.Struct("<8s6Q")


@dataclass
class Stream:
    """A stream file's contents: the guest's mode and cr3s, its memory, the op and read columns."""

    pae: bool
    cr3s: list[int]
    mem: GuestMemory
    ops: tuple[array, ...] = field(default_factory=tuple)
    reads: tuple[array, ...] = field(default_factory=tuple)


def _chunks(recording: OpRecording) -> tuple[Iterator[tuple[array, ...]], Iterator[tuple[array, ...]]]:
    # the recording's packed chunks (read-only use of its internals: the file is those arrays)
    return recording.op_columns(), recording.read_columns()


def _little(a: array) -> array:
    if sys.byteorder == "little":
        return a
    a = array(a.typecode, a)
    a.byteswap()
    return a


def export(path: str, recording: OpRecording, initial: GuestMemory, pae: bool,
           cr3s: list[int]) -> tuple[int, int]:
    """Write ``recording`` and the guest memory it starts from to ``path`` (atomically);
    returns (operations, reads)."""
    for code, size in zip(OP_FIELDS + READ_FIELDS, (1, 2, 8, 8, 8, 2, 8, 1, 8, 1, 8)):
        if array(code).itemsize != size:
            raise BenchError(f"array type {code!r} is not {size} bytes here; cannot export")
    ops = sum(len(chunk[0]) for chunk in _chunks(recording)[0])
    reads = sum(len(chunk[0]) for chunk in _chunks(recording)[1])
    words = sorted((w, v) for w, v in initial.words.items() if v)

    def write(handle: IO) -> None:
        handle.write(_HEADER.pack(MAGIC, int(pae), len(cr3s), len(initial.tables), len(words),
                                  ops, reads))
        handle.write(struct.pack(f"<{len(cr3s)}Q", *cr3s))
        for gfn in sorted(initial.tables):
            handle.write(struct.pack("<Q", gfn))
            _little(initial.tables[gfn]).tofile(handle)
        for w, v in words:
            handle.write(struct.pack("<QQ", w, v))
        for column in range(len(OP_COLUMNS)):
            for chunk in _chunks(recording)[0]:
                _little(chunk[column]).tofile(handle)
        for column in range(len(READ_FIELDS)):
            for chunk in _chunks(recording)[1]:
                _little(chunk[column]).tofile(handle)

    atomic_write(path, write, binary=True)
    return ops, reads


def _read(handle: BinaryIO, code: str, n: int, path: str) -> array:
    a = array(code)
    data = handle.read(n * a.itemsize)
    if len(data) != n * a.itemsize:
        raise BenchError(f"{path}: truncated hot-path stream file")
    a.frombytes(data)
    return _little(a)


def load(path: str) -> Stream:
    """Read a stream file written by ``export`` (a malformed or truncated file is a BenchError)."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        head = handle.read(_HEADER.size)
        if len(head) < _HEADER.size or head[:8] != MAGIC:
            raise BenchError(f"{path}: not a hot-path stream file (expected magic {MAGIC!r})")
        _, pae, cpus, tables, words, ops, reads = _HEADER.unpack(head)
        if pae not in (0, 1) or not 1 <= cpus <= 64:
            raise BenchError(f"{path}: bad header (pae {pae}, cpus {cpus}; want 0/1 and 1..64)")
        cr3s = _read(handle, "Q", cpus, path).tolist()
        mem = GuestMemory()
        for _ in range(tables):
            gfn = _read(handle, "Q", 1, path)[0]
            mem.tables[gfn] = _read(handle, "I", 1024, path)
        pairs = _read(handle, "Q", 2 * words, path)
        mem.words = dict(zip(pairs[0::2], pairs[1::2]))
        op_columns = tuple(_read(handle, code, ops, path) for code in OP_COLUMNS)
        read_columns = tuple(_read(handle, code, reads, path) for code in READ_FIELDS)
        if handle.read(1):
            raise BenchError(f"{path}: trailing bytes after the stream")
    return Stream(bool(pae), cr3s, mem, op_columns, read_columns)
