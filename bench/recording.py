"""A recorded guest run: its operations and every guest-memory read the kernel made between them.

A workload's stream may read guest memory while it generates (bench.workload.GuestRun): the
kernel reads a pte, then decides. So a stream is recorded from a real execution. ``tee`` passes
every operation through to the executor that runs it and keeps a copy; while the workload is
generating (between two operations), its guest memory carries a ``ReadLog`` (bench.machine.memory)
that logs each read (method, gpa, argument, value) with the number of operations executed before it.

``run`` executes the recorded operations on another executor and, at each logged point, repeats
the reads on that executor's guest memory. The workload is deterministic given its random
generator and what it reads, so if every read gives the recorded value the operations are exactly
the ones the workload would have generated on that executor; at the first read that differs
``run`` stops and returns None (the caller then generates the stream for that executor). A
workload that writes guest memory directly while generating cannot be replayed (``usable`` turns
False); nor can a field outside its array type.

Operations and reads are packed into arrays of ``CHUNK`` rows (29 bytes per operation instead of a
tuple's ~130), kept in memory up to ``memory_budget`` bytes and spilled to an anonymous temporary
file beyond it, so recording a long run costs disk, not memory.
"""

from __future__ import annotations

import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from bench.machine.memory import READ, READ32, READ_ENTRY, GuestMemory, ReadLog

CHUNK = 1 << 13
"""Operations per packed chunk (few enough that the cyclic garbage collector, which scans every
live tuple, does not slow the recording down)."""
OP_FIELDS = ("B", "H", "Q", "q", "Q", "H")
"""Array type codes of an operation's kind, cpu, addr, arg, value and insn (an index into the
name table)."""
READ_FIELDS = ("Q", "B", "Q", "B", "Q")
"""A read's operations-before, method (READ32, READ_ENTRY, READ), gpa, argument, value."""
DEFAULT_BUDGET = 128 << 20
"""Bytes of packed chunks kept in memory before the rest goes to a temporary file."""


class _Unpackable(Exception):
    pass


class _ReadCursor:
    """The recorded reads in order, one at a time: ``at`` is the number of operations executed
    before the current one (-1 when none is left)."""

    def __init__(self, chunks: Iterator[tuple[array, ...]]) -> None:
        self.chunks = chunks
        self.ats: list[int] = []
        self.methods: list[int] = []
        self.gpas: list[int] = []
        self.args: list[int] = []
        self.values: list[int] = []
        self.j = 0
        self.at = -1
        self._load()

    def _load(self) -> None:
        self.j = 0
        self.at = -1
        for chunk in self.chunks:
            ats, methods, gpas, args, values = chunk
            if len(ats):
                self.ats, self.methods, self.gpas = ats.tolist(), methods.tolist(), gpas.tolist()
                self.args, self.values = args.tolist(), values.tolist()
                self.at = self.ats[0]
                return

    def agrees(self, mem: GuestMemory) -> bool:
        """Repeat the current read on ``mem`` and move to the next; whether it gave the value
        recorded."""
        j = self.j
        method, gpa, arg, value = self.methods[j], self.gpas[j], self.args[j], self.values[j]
        if method == READ32:
            got = mem.read32(gpa)
        elif method == READ_ENTRY:
            got = mem.read_entry(gpa, arg != 0)
        else:
            got = mem.read(gpa, arg)
        j += 1
        if j < len(self.ats):
            self.j = j
            self.at = self.ats[j]
        else:
            self._load()
        return got == value


class _Columns:
    """Rows of one shape packed column-wise into chunks, in memory or in a temporary file."""

    def __init__(self, codes: tuple[str, ...], owner: OpRecording) -> None:
        self.codes = codes
        self.owner = owner
        self.chunks: list[tuple[array, ...] | tuple[int, int]] = []  # arrays, or (offset, n)

    def pack(self, columns: Iterable[Iterable[int]], n: int) -> None:
        """Append ``n`` rows given column by column."""
        try:
            arrays = tuple(array(code, column) for code, column in zip(self.codes, columns))
        except (OverflowError, TypeError) as exc:
            raise _Unpackable from exc
        self.add(arrays, n)

    def add(self, arrays: tuple[array, ...], n: int) -> None:
        """Append ``n`` rows already packed into one array per column."""
        size = sum(a.itemsize * len(a) for a in arrays)
        owner = self.owner
        if owner.held + size <= owner.budget:
            owner.held += size
            self.chunks.append(arrays)
            return
        handle = owner.spill_file()
        offset = handle.seek(0, 2)
        for a in arrays:
            a.tofile(handle)
        self.chunks.append((offset, n))

    def columns(self) -> Iterator[tuple[array, ...]]:
        for chunk in self.chunks:
            if len(chunk) != 2:
                yield chunk  # type: ignore[misc]
                continue
            offset = int(chunk[0])  # type: ignore[arg-type]
            n = int(chunk[1])  # type: ignore[arg-type]
            handle = self.owner.spill_file()
            handle.seek(offset)
            arrays = []
            for code in self.codes:
                a = array(code)
                a.fromfile(handle, n)
                arrays.append(a)
            yield tuple(arrays)


class OpRecording:
    """The operations of one run, in order (MARKs included), and the reads between them."""

    def __init__(self, memory_budget: int = DEFAULT_BUDGET) -> None:
        self.count = 0
        self.usable = True
        self.budget = memory_budget
        self.held = 0
        self._file: BinaryIO | None = None
        self._ops = _Columns(OP_FIELDS, self)
        self._reads = _Columns(READ_FIELDS, self)
        self._insn_ids: dict[str, int] = {}
        self._insns: list[str] = []

    def spill_file(self) -> BinaryIO:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="shadowbench-run-")
        return self._file

    # -- recording -----------------------------------------------------------------------------
    def tee(self, ops: Iterable[tuple], mem: GuestMemory) -> Iterator[tuple]:
        """Yield ``ops`` one at a time (each is executed before the next is generated) and keep
        them, with the reads of ``mem`` the workload makes while generating; the recording is
        complete when the iterator is exhausted."""
        log = ReadLog()
        reads = log.reads
        source = iter(ops)
        buf: list[tuple] = []
        append = buf.append
        count = 0
        while True:
            log.at = count
            mem.log = log
            try:
                op = next(source, None)
            finally:
                mem.log = None
            if op is None:
                break
            append(op)
            count += 1
            yield op
            if len(buf) == CHUNK:
                self._pack(buf, reads)
                buf.clear()
                reads.clear()
        self._pack(buf, reads)
        if log.wrote:
            self._drop()

    def tee_native(self, executor: Any, ops: Iterable[tuple], mem: GuestMemory) -> None:
        """What ``tee`` feeding ``executor`` does, in one call: ``executor`` is the native
        core's executor (bench.core.NativeExecution.executor), which pulls each operation with
        the ReadLog attached, executes it and hands this recording the packed columns of each
        chunk (``_pack_columns``); a native scan stream (bench.core.generators) reads guest
        memory through the executor instead and its reads come packed too
        (``_pack_read_columns``). The recording is complete when it returns."""
        log = ReadLog()
        executor.run_tee(iter(ops), mem, log, self._insn_ids, self._insns, self._pack_columns,
                         CHUNK, self._pack_read_columns)
        if log.wrote:
            self._drop()

    def _pack_columns(self, columns: tuple[array, ...] | None, n: int,
                      reads: list[tuple]) -> None:
        """A chunk from the native executor: ``n`` operations already packed (None: one could
        not be), and the reads made while generating them (cleared here, as ``tee`` does)."""
        self.count += n
        if self.usable:
            if columns is None:
                self._drop()
            else:
                try:
                    if n:
                        self._ops.add(columns, n)
                    if reads:
                        self._reads.pack(zip(*reads), len(reads))
                except (_Unpackable, ValueError):
                    self._drop()
        reads.clear()

    def _pack_read_columns(self, columns: tuple[array, ...], n: int) -> None:
        """``n`` reads from the native executor already packed into READ_FIELDS columns (a
        native scan stream's, which reads guest memory through the executor)."""
        if self.usable:
            self._reads.add(columns, n)

    def _pack(self, ops: list[tuple], reads: list[tuple]) -> None:
        self.count += len(ops)
        if not self.usable:
            return
        ids, names = self._insn_ids, self._insns
        try:
            if ops:
                kinds, cpus, addrs, args, values, insns = zip(*ops)
                for name in set(insns):
                    if name not in ids:
                        ids[name] = len(names)
                        names.append(name)
                self._ops.pack((kinds, cpus, addrs, args, values, map(ids.__getitem__, insns)),
                               len(ops))
            if reads:
                self._reads.pack(zip(*reads), len(reads))
        except (_Unpackable, ValueError):  # ValueError: operations that are not 6-tuples
            self._drop()

    def _drop(self) -> None:
        self.usable = False
        self._ops.chunks.clear()
        self._reads.chunks.clear()

    # -- replaying -----------------------------------------------------------------------------
    def _op_columns(self) -> Iterator[tuple[array, ...]]:
        """The operations' packed chunks (only of a usable recording)."""
        if not self.usable:
            raise ValueError("this run could not be recorded; generate the stream again")
        return self._ops.columns()

    def op_columns(self) -> Iterator[tuple[array, ...]]:
        """The operations' packed columns, chunk by chunk (``OP_FIELDS`` types; the insn column
        indexes ``insn_names()``): what the native core (bench.core) replays directly."""
        return self._op_columns()

    def read_columns(self) -> Iterator[tuple[array, ...]]:
        """The recorded reads' packed columns, chunk by chunk (``READ_FIELDS`` types)."""
        return self._reads.columns()

    def insn_names(self) -> list[str]:
        """The instruction classes the insn column indexes."""
        return list(self._insns)

    def replay(self) -> Iterator[tuple]:
        """The recorded operations as ``(kind, cpu, addr, arg, value, insn)`` tuples."""
        name = self._insns.__getitem__
        for kinds, cpus, addrs, args, values, ids in self._op_columns():
            yield from zip(kinds, cpus, addrs, args, values, map(name, ids))

    def run(self, step: Callable[[tuple], Any], mem: GuestMemory) -> int | None:
        """Execute the recorded operations with ``step`` (an executor on ``mem``), repeating the
        recorded reads on ``mem`` where the workload made them. Returns the number of operations,
        or None at the first read that differs (the workload would have gone another way).

        This loop runs once per operation of every replayed cell, so it works chunk by chunk on
        lists (``array.tolist`` converts a column in one call; indexing a list costs less than
        indexing an array)."""
        op_chunks = self._op_columns()
        names = self._insns
        reads = _ReadCursor(self._reads.columns())
        done = 0
        for kinds, cpus, addrs, args, values, ids in op_chunks:
            kind_l, cpu_l, addr_l = kinds.tolist(), cpus.tolist(), addrs.tolist()
            arg_l, value_l, id_l = args.tolist(), values.tolist(), ids.tolist()
            for i in range(len(kind_l)):
                while reads.at == done:
                    if not reads.agrees(mem):
                        return None
                step((kind_l[i], cpu_l[i], addr_l[i], arg_l[i], value_l[i], names[id_l[i]]))
                done += 1
        while reads.at == done:  # reads after the last operation (the stream's end)
            if not reads.agrees(mem):
                return None
        return done

    def close(self) -> None:
        """Drop the recording (and its temporary file)."""
        self._ops.chunks.clear()
        self._reads.chunks.clear()
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> OpRecording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
