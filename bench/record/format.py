"""The recording file format (version 1): a guest's page-table traffic, compact and versioned.

Layout (docs/recording.md has the full description)::

    offset 0   8 bytes   magic b"SBREC\\0\\r\\n"
    offset 8   u16 LE    format version (1)
    offset 10  u16 LE    reserved, 0
    offset 12  u32 LE    header length H
    offset 16  H bytes   header: UTF-8 JSON object (provenance, proof, symbols, counts, ...)
    offset 16+H          body: one xz stream (Python's lzma, standard library) of events

An event is 48 bytes, little-endian (``EVENT``): kind, arg, insn, flags (u8 each), aux (u32),
icount, pc, pa, va, value (u64 each). A TABLE event is followed by ``aux`` bytes: the table's
contents when it became a table (or when recording started). Every address is 64 bits and a
table's level is a byte, so a 4- or 5-level x86-64 guest fits without a format change; the
header's ``arch``, ``paging_levels`` and ``entry_bytes`` say how to read entries.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from bench.errors import BenchError

MAGIC = b"SBREC\x00\r\n"
VERSION = 1
PREAMBLE = struct.Struct("<8sHHI")
EVENT = struct.Struct("<BBBBIQQQQQ")
"""kind, arg, insn, flags, aux, icount, pc, pa, va, value."""
assert EVENT.size == 48

TABLE, UNTABLE, STORE, CR3, INVLPG, WALK, MARK = range(7)
KIND_NAMES = ("table", "untable", "store", "cr3", "invlpg", "walk", "mark")
"""Event kinds. Fields per kind (unused fields are 0):

- table: arg level (1 = pte table, 2 = pmd/pd, 3 = PAE pdpt), aux payload bytes (4096, or 32 for
  a PAE pdpt slot), pa the table's physical address, va the first virtual address it maps,
  flags SNAPSHOT when it was a table already when recording started.
- untable: arg level, pa, va: the frame was unlinked from every tracked parent.
- store: arg width (1, 2, 4, 8), insn class, flags (USER, LOCKED), aux the table's level, pc,
  pa and va of the store, value the bytes stored (little-endian, ``width`` bytes).
- cr3: value the loaded CR3, pa its page-table base.
- invlpg: pc, va (INFERRED: the address the last pte store mapped; the plugin API gives no
  registers).
- walk: an access the bounded TLB model says walks the tables: va, pc, flags USER/WRITE/FETCH,
  insn class of a data access.
- mark: aux and value the phase number (0: end of recording), pc, va the marked address.
"""
USER, WRITE, FETCH, INFERRED, LOCKED, SNAPSHOT = 1, 2, 4, 8, 16, 32
FLAG_NAMES = {USER: "user", WRITE: "write", FETCH: "fetch", INFERRED: "inferred",
              LOCKED: "locked", SNAPSHOT: "snapshot"}
INSN_NAMES = ("other", "mov", "xchg", "cmpxchg", "cmpxchg8b", "or", "and", "btr", "bts", "stos",
              "movs", "xadd", "add", "sub", "push")
"""Instruction classes (bench/record/plugin/sbtrace.c classify)."""
PAYLOAD_SIZES = (32, 4096)
CHUNK = 1 << 20


class RecordingError(BenchError):
    """A malformed, truncated or wrong-version recording (the message names the byte offset)."""


@dataclass
class Event:
    """One recorded event (the fields of EVENT, then a table event's payload). Not frozen: mypyc
    compiles a plain dataclass as a native class (a frozen one stays interpreted, and setting its
    fields through object.__setattr__ was most of a replay's time); nothing changes an event."""

    kind: int
    arg: int
    insn: int
    flags: int
    aux: int
    icount: int
    pc: int
    pa: int
    va: int
    value: int
    payload: bytes = b""

    @property
    def kind_name(self) -> str:
        return KIND_NAMES[self.kind]


def encode_event(event: Event) -> bytes:
    return EVENT.pack(event.kind, event.arg, event.insn, event.flags, event.aux, event.icount,
                      event.pc, event.pa, event.va, event.value) + event.payload


class EventStream:
    """Decode a body (uncompressed event bytes) fed in pieces; errors name the body offset.
    ``count`` is the number of events decoded (``feed``) or checked (``tally``) so far."""

    def __init__(self) -> None:
        self.buf = b""
        self.offset = 0  # body offset of buf[0]
        self.count = 0

    def _size_at(self, buf: bytes, pos: int) -> int:
        """The bytes of the event at ``pos`` of ``buf`` (a whole 48-byte event is there), its
        payload included; 0 when ``buf`` ends inside the payload. RecordingError if the event
        is malformed."""
        kind = buf[pos]
        if kind >= len(KIND_NAMES):
            raise RecordingError(f"unknown event kind {kind} at event-stream byte offset "
                                 f"{self.offset + pos}")
        if kind == TABLE:
            n = int.from_bytes(buf[pos + 4:pos + 8], "little")
            if n not in PAYLOAD_SIZES:
                raise RecordingError(f"table event with a {n}-byte payload at event-stream "
                                     f"byte offset {self.offset + pos} (valid: 32, 4096)")
            return EVENT.size + n if len(buf) - pos >= EVENT.size + n else 0
        if kind == STORE and buf[pos + 1] not in (1, 2, 4, 8):
            raise RecordingError(f"store of width {buf[pos + 1]} at event-stream byte offset "
                                 f"{self.offset + pos} (valid: 1, 2, 4, 8)")
        return EVENT.size

    def _keep(self, buf: bytes, pos: int) -> None:
        self.buf = buf[pos:]
        self.offset += pos

    def feed(self, data: bytes) -> Iterator[Event]:
        buf = self.buf + data
        pos = 0
        size = EVENT.size
        while len(buf) - pos >= size:
            n = self._size_at(buf, pos)
            if not n:
                break
            fields = EVENT.unpack_from(buf, pos)
            self.count += 1
            yield Event(fields[0], fields[1], fields[2], fields[3], fields[4], fields[5],
                        fields[6], fields[7], fields[8], fields[9],
                        buf[pos + size:pos + n] if n > size else b"")
            pos += n
        self._keep(buf, pos)

    def tally(self, data: bytes, kinds: list[int]) -> int:
        """Check the events of ``data`` as ``feed`` decodes them, without decoding them:
        ``kinds[k]`` counts the events of kind ``k``. Returns the snapshot tables among them
        (TABLE events with the SNAPSHOT flag)."""
        buf = self.buf + data
        pos = 0
        snapshots = 0
        while len(buf) - pos >= EVENT.size:
            n = self._size_at(buf, pos)
            if not n:
                break
            kind = buf[pos]
            kinds[kind] += 1
            if kind == TABLE and buf[pos + 3] & SNAPSHOT:
                snapshots += 1
            self.count += 1
            pos += n
        self._keep(buf, pos)
        return snapshots

    def finish(self) -> None:
        if self.buf:
            raise RecordingError(f"event stream ends inside an event at event-stream byte offset "
                                 f"{self.offset}")


@dataclass
class Recording:
    """An open recording: its header and a way to iterate its events (re-readable)."""

    path: Path
    header: dict[str, Any]
    body_offset: int

    def events(self) -> Iterator[Event]:
        """The events in order; RecordingError on a corrupt, truncated or inconsistent body."""
        stream = EventStream()
        for raw in self.body(stream):
            try:
                yield from stream.feed(raw)
            except RecordingError as exc:
                raise RecordingError(f"{self.path}: {exc}") from None

    def tally(self) -> tuple[list[int], int]:
        """Read the whole body and check it as ``events`` does, without decoding the events:
        (events per kind, snapshot tables); RecordingError at the first problem."""
        stream = EventStream()
        kinds = [0] * len(KIND_NAMES)
        snapshots = 0
        for raw in self.body(stream):
            try:
                snapshots += stream.tally(raw, kinds)
            except RecordingError as exc:
                raise RecordingError(f"{self.path}: {exc}") from None
        return kinds, snapshots

    def body(self, stream: EventStream) -> Iterator[bytes]:
        """The body's bytes, decompressed, in pieces; once they are all read (and ``stream`` fed
        with every piece), the checks of the whole body: nothing after it, no event cut short
        (``stream.buf`` empty, else the error names ``stream.offset``), and the event count
        (``stream.count``), byte count and SHA-256 its header records. The native core's replay
        (bench/core/_guest.c) decodes the pieces itself and keeps those three attributes."""
        decomp = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        digest = hashlib.sha256()
        total = 0
        with open(self.path, "rb") as handle:
            handle.seek(self.body_offset)
            pos = self.body_offset
            while not decomp.eof:
                # at most CHUNK bytes out per call: memory stays bounded however well a part of
                # the body compresses (a replay streams, bench/record/replay.py)
                data = b""
                if decomp.needs_input:
                    data = handle.read(CHUNK)
                    if not data:
                        raise RecordingError(f"{self.path}: truncated: the compressed body ends "
                                             f"at byte offset {pos}")
                try:
                    raw = decomp.decompress(data, max_length=CHUNK)
                except lzma.LZMAError as exc:
                    raise RecordingError(f"{self.path}: corrupt compressed body in bytes "
                                         f"{pos}..{pos + len(data)}: {exc}") from None
                pos += len(data) - len(decomp.unused_data)
                digest.update(raw)
                total += len(raw)
                yield raw
            if decomp.unused_data or handle.read(1):
                raise RecordingError(f"{self.path}: trailing bytes after the body at byte offset "
                                     f"{pos}")
        try:
            stream.finish()
        except RecordingError as exc:
            raise RecordingError(f"{self.path}: {exc}") from None
        count = stream.count
        want = self.header.get("body")
        if isinstance(want, dict):
            if want.get("events") != count or want.get("bytes") != total or \
                    want.get("sha256") != digest.hexdigest():
                raise RecordingError(f"{self.path}: body does not match its header (events "
                                     f"{count} vs {want.get('events')}, bytes {total} vs "
                                     f"{want.get('bytes')}; byte offset {self.body_offset})")


REQUIRED = ("arch", "paging_levels", "entry_bytes", "body", "provenance", "phases")


def open_recording(path: str | os.PathLike) -> Recording:
    """Read and check a recording's preamble and header (its events are read lazily)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            pre = handle.read(PREAMBLE.size)
            if len(pre) < PREAMBLE.size:
                raise RecordingError(f"{path}: truncated: {len(pre)} bytes, the preamble needs "
                                     f"{PREAMBLE.size} (byte offset {len(pre)})")
            magic, version, reserved, hlen = PREAMBLE.unpack(pre)
            if magic != MAGIC:
                raise RecordingError(f"{path}: not a shadowbench recording (bad magic at byte "
                                     f"offset 0)")
            if version != VERSION:
                raise RecordingError(f"{path}: recording format version {version} at byte offset "
                                     f"8; this shadowbench reads version {VERSION}")
            if reserved:
                raise RecordingError(f"{path}: reserved field is {reserved}, not 0 (byte offset 10)")
            raw = handle.read(hlen)
    except OSError as exc:
        raise BenchError(f"cannot read recording {path}: {exc.strerror}") from None
    if len(raw) < hlen:
        raise RecordingError(f"{path}: truncated: the header needs {hlen} bytes from byte offset "
                             f"{PREAMBLE.size}, the file ends at byte offset "
                             f"{PREAMBLE.size + len(raw)}")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = PREAMBLE.size + getattr(exc, "pos", getattr(exc, "start", 0))
        raise RecordingError(f"{path}: malformed header at byte offset {where}: "
                             f"{getattr(exc, 'msg', exc.__class__.__name__)}") from None
    if not isinstance(header, dict):
        raise RecordingError(f"{path}: header at byte offset {PREAMBLE.size} is not an object")
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise RecordingError(f"{path}: header at byte offset {PREAMBLE.size} lacks "
                             f"{', '.join(missing)}")
    return Recording(path, header, PREAMBLE.size + hlen)


def write_recording(path: str | os.PathLike, header: dict[str, Any], body: BinaryIO) -> int:
    """Write ``header`` and the event bytes read from ``body`` (compressed) atomically: a temporary
    file renamed over ``path`` when complete. The header's ``body`` (events, bytes, sha256) is
    filled in here. Returns the file's size."""
    path = Path(path)
    stream = EventStream()
    digest = hashlib.sha256()
    comp = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=6)
    count = 0
    total = 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with tempfile.TemporaryFile() as packed, os.fdopen(fd, "wb") as out:
            while True:
                data = body.read(CHUNK)
                if not data:
                    break
                for _ in stream.feed(data):
                    count += 1
                digest.update(data)
                total += len(data)
                packed.write(comp.compress(data))
            stream.finish()
            packed.write(comp.flush())
            header = dict(header, body={"events": count, "bytes": total,
                                        "sha256": digest.hexdigest(), "compression": "xz"})
            raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
            out.write(PREAMBLE.pack(MAGIC, VERSION, 0, len(raw)))
            out.write(raw)
            packed.seek(0)
            while chunk := packed.read(CHUNK):
                out.write(chunk)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path.stat().st_size
