"""Operation traces as text: save a run's guest and operations, replay them, or read other tools'.

Format (version 1; docs/trace-format.md): one directive or operation per line, ``#`` starts a
comment, numbers are decimal or 0x-hex::

    shadowbench-trace 1            first line
    mode pae|nonpae                paging mode
    cpus N                         number of vCPUs
    table GFN                      this page is a page table (held densely)
    word GPA VALUE                 initial 4-byte memory word (aligned gpa)
    cr3 CPU VALUE                  initial cr3 of a vCPU (every vCPU needs one)
    ops                            operations follow, one per line:
    CPU store VADDR WIDTH VALUE [INSN]
    CPU btr VADDR BIT  |  CPU bts VADDR BIT
    CPU load VADDR WIDTH
    CPU invlpg VADDR   |  CPU cr3 VALUE  |  CPU compute CYCLES [INSNS]  |  CPU mark PHASE

Reading streams: operations are parsed lazily, so a trace of any length replays in constant
memory. Every malformed line raises BenchError naming the file and line.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bench.errors import BenchError
from bench.machine.memory import GuestMemory
from bench.machine.native import check_op
from bench.machine.paging import Mode, mode_for
from bench.ops import (BTR, BTS, COMPUTE, CR3, INVLPG, KIND_BY_NAME, KIND_NAMES, LOAD, MARK,
                       STORE, STORE_INSNS)

MAGIC = "shadowbench-trace"
VERSION = 1
MAX_COMPUTE = 10**12
"""The most cycles one ``compute`` operation may stand for (over five minutes at 3 GHz)."""
MAX_PHASE = 2**31 - 1
PHYS_BITS = {False: 32, True: 36}
"""Guest-physical address bits without and with PAE (a table's gfn and a word's gpa)."""


@dataclass
class TraceGuest:
    """The guest a trace describes: memory, paging mode, vCPU count (what the executors need)."""

    mem: GuestMemory
    mode: Mode
    cpus: int

    @property
    def pae(self) -> bool:
        return self.mode.pae


def format_op(op: tuple) -> str:
    kind, cpu, addr, arg, value, insn = op
    name = KIND_NAMES[kind]
    if kind == STORE:
        return f"{cpu} store {addr:#x} {arg} {value:#x} {insn}"
    if kind in (BTR, BTS):
        return f"{cpu} {name} {addr:#x} {arg}"
    if kind == LOAD:
        return f"{cpu} load {addr:#x} {arg}"
    if kind in (INVLPG, CR3):
        return f"{cpu} {name} {addr:#x}"
    if kind == COMPUTE and value:
        return f"{cpu} {name} {arg} {value}"
    return f"{cpu} {name} {arg}"


def write_trace(path: str | os.PathLike, mem: GuestMemory, mode: Mode, cr3s: list[int],
                ops: Iterable[tuple]) -> int:
    """Write the guest's current memory and the operations (atomically). Returns ops written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w") as out:
            out.write(f"{MAGIC} {VERSION}\nmode {'pae' if mode.pae else 'nonpae'}\n")
            out.write(f"cpus {len(cr3s)}\n")
            for gfn in sorted(mem.tables):
                out.write(f"table {gfn:#x}\n")
            for word, value in sorted(mem.image().items()):
                out.write(f"word {word << 2:#x} {value:#x}\n")
            for cpu, cr3 in enumerate(cr3s):
                out.write(f"cr3 {cpu} {cr3:#x}\n")
            out.write("ops\n")
            for op in ops:
                out.write(format_op(op) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return n


def _int(text: str, where: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise BenchError(f"{where}: {what} {text!r} is not a number") from None


def parse_op(line: str, where: str, cpus: int) -> tuple:
    """One operation line -> op tuple (BenchError naming ``where`` if malformed)."""
    fields = line.split()
    if len(fields) < 2:
        raise BenchError(f"{where}: expected 'CPU KIND ...', got {line.strip()!r}")
    cpu = _int(fields[0], where, "cpu")
    kind = KIND_BY_NAME.get(fields[1])
    if kind is None:
        raise BenchError(f"{where}: unknown operation {fields[1]!r} (valid: {', '.join(KIND_NAMES)})")
    args = fields[2:]
    expected = {STORE: (3, 4), BTR: (2, 2), BTS: (2, 2), LOAD: (2, 2), INVLPG: (1, 1), CR3: (1, 1),
                COMPUTE: (1, 2), MARK: (1, 1)}[kind]
    if not expected[0] <= len(args) <= expected[1]:
        raise BenchError(f"{where}: {fields[1]} takes {expected[0]} argument(s), got {len(args)}")
    nums = [_int(a, where, "argument") for a in args[:3 if kind == STORE else len(args)]]
    if any(n < 0 for n in nums):
        raise BenchError(f"{where}: negative number in {line.strip()!r}")
    if kind == STORE:
        insn = args[3] if len(args) == 4 else "mov"
        if insn not in STORE_INSNS:
            raise BenchError(f"{where}: unknown instruction class {insn!r} (valid: {', '.join(STORE_INSNS)})")
        op = (STORE, cpu, nums[0], nums[1], nums[2], insn)
        if nums[2] >> (8 * nums[1]):
            raise BenchError(f"{where}: value {nums[2]:#x} does not fit in {nums[1]} bytes")
    elif kind in (BTR, BTS):
        op = (kind, cpu, nums[0], nums[1], 0, KIND_NAMES[kind])
    elif kind == LOAD:
        op = (LOAD, cpu, nums[0], nums[1], 0, "mov")
    elif kind == INVLPG:
        op = (INVLPG, cpu, nums[0], 0, 0, "invlpg")
    elif kind == CR3:
        op = (CR3, cpu, nums[0], 0, 0, "mov-cr3")
    elif kind == COMPUTE:
        op = (COMPUTE, cpu, 0, nums[0], nums[1] if len(nums) == 2 else 0, "compute")
    else:
        op = (MARK, cpu, 0, nums[0], 0, "mark")
    if op[2] > 0xFFFFFFFF:
        what = "cr3 value" if kind == CR3 else "address"
        raise BenchError(f"{where}: {what} {op[2]:#x} does not fit in 32 bits")
    if kind == COMPUTE and op[3] > MAX_COMPUTE:
        raise BenchError(f"{where}: compute {op[3]} is above the maximum {MAX_COMPUTE} cycles")
    if kind == COMPUTE and op[4] > MAX_COMPUTE:
        raise BenchError(f"{where}: compute of {op[4]} instructions is above the maximum "
                         f"{MAX_COMPUTE}")
    if kind == MARK and op[3] > MAX_PHASE:
        raise BenchError(f"{where}: mark phase {op[3]} is above the maximum {MAX_PHASE}")
    try:
        check_op(kind, cpu, op[2], op[3], cpus)
    except BenchError as err:
        raise BenchError(f"{where}: {err}") from None
    return op


def read_trace(path: str | os.PathLike) -> tuple[TraceGuest, list[int], Iterator[tuple]]:
    """Read the header now (guest, cr3s) and return a lazy iterator over the operations."""
    name = str(path)
    try:
        handle = open(path, encoding="utf-8")
    except OSError as err:
        raise BenchError(f"cannot read trace {name}: {err.strerror}") from None
    try:
        guest, cr3s, lineno = _read_header(handle, name)
    except BaseException:
        handle.close()
        raise
    return guest, cr3s, _read_ops(handle, name, lineno, guest.cpus)


def _read_header(handle: TextIO, name: str) -> tuple[TraceGuest, list[int], int]:
    mem = GuestMemory()
    mode: Mode | None = None
    cpus = 0
    cr3: dict[int, int] = {}
    lineno = 0
    words: list[tuple[int, int]] = []
    tables: list[tuple[str, int]] = []
    for lineno, line in _lines(handle, name, 1):
        where = f"{name}:{lineno}"
        if lineno == 1:
            if line != f"{MAGIC} {VERSION}":
                raise BenchError(f"{where}: not a shadowbench trace (expected '{MAGIC} {VERSION}')")
            continue
        if not line:
            continue
        fields = line.split()
        key, args = fields[0], fields[1:]
        if key == "ops":
            break
        if key == "mode":
            if args not in (["pae"], ["nonpae"]):
                raise BenchError(f"{where}: mode must be pae or nonpae")
            mode = mode_for(args[0] == "pae")
        elif key == "cpus":
            if len(args) != 1 or not 1 <= _int(args[0], where, "cpus") <= 64:
                raise BenchError(f"{where}: cpus must be one number 1..64")
            cpus = int(args[0], 0)
        elif key == "table" and len(args) == 1:
            gfn = _int(args[0], where, "gfn")
            if not 0 <= gfn < 1 << (PHYS_BITS[True] - 12):
                raise BenchError(f"{where}: table gfn {gfn:#x} is beyond 36-bit guest memory")
            tables.append((where, gfn))
        elif key == "word" and len(args) == 2:
            gpa, value = _int(args[0], where, "gpa"), _int(args[1], where, "value")
            if gpa & 3 or gpa < 0 or not 0 <= value <= 0xFFFFFFFF:
                raise BenchError(f"{where}: word needs an aligned gpa and a 32-bit value")
            words.append((gpa, value))
        elif key == "cr3" and len(args) == 2:
            value = _int(args[1], where, "cr3")
            if not 0 <= value <= 0xFFFFFFFF:
                raise BenchError(f"{where}: cr3 {value:#x} does not fit in 32 bits")
            cr3[_int(args[0], where, "cpu")] = value
        else:
            raise BenchError(f"{where}: unknown or malformed directive {line!r}")
    else:
        raise BenchError(f"{name}: no 'ops' line (the trace has no operation section)")
    if mode is None or not cpus:
        raise BenchError(f"{name}: the header needs 'mode' and 'cpus' lines")
    if sorted(cr3) != list(range(cpus)):
        raise BenchError(f"{name}: every cpu 0..{cpus - 1} needs one 'cr3' line")
    bits = PHYS_BITS[mode.pae]
    for where, gfn in tables:
        if gfn >= 1 << (bits - 12):
            raise BenchError(f"{where}: table gfn {gfn:#x} is beyond {bits}-bit guest memory")
        mem.add_table_page(gfn)
    for gpa, value in words:
        if gpa >= 1 << bits:
            raise BenchError(f"{name}: word at gpa {gpa:#x} is beyond {bits}-bit guest memory")
        mem.write32(gpa, value)
    return TraceGuest(mem, mode, cpus), [cr3[c] for c in range(cpus)], lineno


def _lines(handle: TextIO, name: str, first: int) -> Iterator[tuple[int, str]]:
    """``(line number, text without comment)`` from ``first`` on; bytes that are not UTF-8 are a
    BenchError (the file is decoded in blocks, so no line number is given)."""
    try:
        for lineno, raw in enumerate(handle, first):
            yield lineno, raw.split("#", 1)[0].strip()
    except UnicodeDecodeError:
        raise BenchError(f"{name}: not UTF-8 text") from None


def check_trace(path: str | os.PathLike) -> int:
    """Read a whole trace, header and every operation, in constant memory; the first malformed
    or out-of-range line is a BenchError. Returns the number of operations."""
    _, _, ops = read_trace(path)
    n = 0
    for _ in ops:
        n += 1
    return n


def _read_ops(handle: TextIO, name: str, lineno: int, cpus: int) -> Iterator[tuple]:
    with handle:
        for lineno, line in _lines(handle, name, lineno + 1):
            if line:
                yield parse_op(line, f"{name}:{lineno}", cpus)
