"""The recording format (bench/record/format.py): round trip, one-line errors with byte offsets."""

from __future__ import annotations

import io
import re
import json
import lzma
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.__main__ import main
from bench.record import format as F
from bench.record.format import Event, RecordingError, encode_event, open_recording, write_recording

HEADER = {"arch": "i386-pae", "paging_levels": 3, "entry_bytes": 8, "provenance": {"scenario": "t"},
          "phases": ["one"], "symbols": [[0xC1000000, "alpha"], [0xC1000100, "beta"]]}


def sample_events() -> list[Event]:
    table = bytes(range(256)) * 16
    return [
        Event(F.MARK, 0, 0, 0, 1, 100, 0x08048000, 0, 0x5B000008, 1),
        Event(F.TABLE, 1, 0, F.SNAPSHOT, 4096, 100, 0, 0x1234000, 0x08000000, 0, table),
        Event(F.TABLE, 3, 0, 0, 32, 101, 0, 0x2000020, 0, 0, table[:32]),
        Event(F.STORE, 4, 1, 0, 1, 150, 0xC1000010, 0x1234008, 0xFFF00008, 0x5F879063),
        Event(F.STORE, 8, 4, F.LOCKED, 1, 151, 0xC1000104, 0x1234010, 0xFFF00010, 1 << 63),
        Event(F.CR3, 0, 0, 0, 0, 160, 0, 0x2000000, 0, 0x2000020),
        Event(F.INVLPG, 0, 0, F.INFERRED, 0, 161, 0xC1000200, 0, 0x08001000, 0),
        Event(F.WALK, 0, 1, F.USER | F.WRITE, 0, 170, 0x08048010, 0, 0x08001004, 0),
        Event(F.UNTABLE, 1, 0, 0, 0, 180, 0, 0x1234000, 0x08000000, 0),
        Event(F.MARK, 0, 0, 0, 0, 200, 0x08048020, 0, 0x5B000000, 0),
    ]


READERS = {"events": lambda rec: list(rec.events()), "tally": lambda rec: rec.tally()}
"""The two readings of a body: decoding every event, and checking it without decoding
(Recording.tally, which replay.check uses): the same errors, at the same offsets."""
reader = pytest.mark.parametrize("read", list(READERS.values()), ids=list(READERS))


def write_sample(path, events=None, header=HEADER):
    body = b"".join(encode_event(e) for e in (events or sample_events()))
    write_recording(path, header, io.BytesIO(body))
    return body


def test_round_trip(tmp_path):
    path = tmp_path / "a.rec"
    write_sample(path)
    rec = open_recording(path)
    assert rec.header["body"]["events"] == len(sample_events())
    assert rec.header["provenance"] == {"scenario": "t"}
    assert list(rec.events()) == sample_events()
    assert list(rec.events()) == sample_events()  # re-readable
    kinds, snapshots = rec.tally()
    assert kinds == [sum(e.kind == k for e in sample_events()) for k in range(len(F.KIND_NAMES))]
    assert snapshots == 1
    assert path.read_bytes()[:8] == b"SBREC\x00\r\n"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_writer_refuses_a_torn_event_and_leaves_nothing(tmp_path):
    body = b"".join(encode_event(e) for e in sample_events())
    with pytest.raises(RecordingError, match="byte offset"):
        write_recording(tmp_path / "a.rec", HEADER, io.BytesIO(body[:-5]))
    assert list(tmp_path.iterdir()) == []


@reader
def test_truncated_body_names_the_offset(tmp_path, read):
    path = tmp_path / "a.rec"
    write_sample(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.rec"
    cut.write_bytes(data[:-20])
    rec = open_recording(cut)
    with pytest.raises(RecordingError, match=rf"truncated.*byte offset {len(data) - 20}"):
        read(rec)


@pytest.mark.parametrize("cut", [0, 5, 15, 40])
def test_truncated_preamble_or_header(tmp_path, cut):
    path = tmp_path / "a.rec"
    write_sample(path)
    short = tmp_path / "short.rec"
    short.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(RecordingError, match=rf"truncated.*byte offset {cut}"):
        open_recording(short)


def test_wrong_version_and_magic(tmp_path):
    path = tmp_path / "a.rec"
    write_sample(path)
    data = bytearray(path.read_bytes())
    data[8:10] = struct.pack("<H", 2)
    (tmp_path / "v2.rec").write_bytes(bytes(data))
    with pytest.raises(RecordingError, match="version 2 at byte offset 8.*reads version 1"):
        open_recording(tmp_path / "v2.rec")
    data[0] = ord("X")
    (tmp_path / "bad.rec").write_bytes(bytes(data))
    with pytest.raises(RecordingError, match="bad magic at byte offset 0"):
        open_recording(tmp_path / "bad.rec")


def test_malformed_header_offset(tmp_path):
    raw = b'{"arch": "i386", oops}'
    path = tmp_path / "h.rec"
    path.write_bytes(F.PREAMBLE.pack(F.MAGIC, 1, 0, len(raw)) + raw)
    with pytest.raises(RecordingError, match=f"malformed header at byte offset {16 + raw.index(b'oops')}"):
        open_recording(path)
    raw = json.dumps({"arch": "i386"}).encode()
    path.write_bytes(F.PREAMBLE.pack(F.MAGIC, 1, 0, len(raw)) + raw)
    with pytest.raises(RecordingError, match="lacks paging_levels"):
        open_recording(path)


def _with_body(tmp_path, body: bytes, header=None):
    header = dict(HEADER, body={"events": 0, "bytes": len(body), "sha256": "x"}) \
        if header is None else header
    raw = json.dumps(header).encode()
    path = tmp_path / "m.rec"
    path.write_bytes(F.PREAMBLE.pack(F.MAGIC, 1, 0, len(raw)) + raw +
                     lzma.compress(body, format=lzma.FORMAT_XZ))
    return path


@reader
def test_malformed_events_name_the_event_stream_offset(tmp_path, read):
    good = encode_event(sample_events()[0])
    bad_kind = bytearray(encode_event(sample_events()[3]))
    bad_kind[0] = 9
    with pytest.raises(RecordingError, match=f"unknown event kind 9 at event-stream byte offset {len(good)}"):
        read(open_recording(_with_body(tmp_path, good + bytes(bad_kind))))
    bad_width = bytearray(encode_event(sample_events()[3]))
    bad_width[1] = 3
    with pytest.raises(RecordingError, match="store of width 3 at event-stream byte offset 0"):
        read(open_recording(_with_body(tmp_path, bytes(bad_width))))
    bad_table = bytearray(encode_event(sample_events()[1]))
    bad_table[4:8] = struct.pack("<I", 100)
    with pytest.raises(RecordingError, match="100-byte payload at event-stream byte offset 0"):
        read(open_recording(_with_body(tmp_path, bytes(bad_table))))
    with pytest.raises(RecordingError, match=f"inside an event at event-stream byte offset {len(good)}"):
        read(open_recording(_with_body(tmp_path, good + good[:10])))


@reader
def test_body_must_match_its_header(tmp_path, read):
    path = _with_body(tmp_path, encode_event(sample_events()[0]))
    with pytest.raises(RecordingError, match="does not match its header"):
        read(open_recording(path))


@reader
def test_corrupt_compressed_body(tmp_path, read):
    path = tmp_path / "a.rec"
    write_sample(path)
    data = bytearray(path.read_bytes())
    rec = open_recording(path)
    data[rec.body_offset + 30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match=r"corrupt compressed body in bytes \d+"):
        read(open_recording(path))


def test_inspect_cli(tmp_path, capsys):
    path = tmp_path / "a.rec"
    write_sample(path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^store\s+2\s", out, re.M)
    assert "alpha" in out and "beta" in out
    assert "instructions recorded: 100" in out


def test_inspect_cli_errors(tmp_path, capsys):
    path = tmp_path / "a.rec"
    write_sample(path)
    data = path.read_bytes()
    (tmp_path / "t.rec").write_bytes(data[:-7])
    assert main(["inspect", str(tmp_path / "t.rec")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "byte offset" in err[0]
    assert main(["inspect", str(tmp_path / "missing.rec")]) == 2
    assert "cannot read recording" in capsys.readouterr().err


@settings(max_examples=60, deadline=None)
@given(picks=st.lists(st.integers(0, 9), max_size=40), cuts=st.lists(st.integers(0, 60000),
                                                                      max_size=6))
def test_tally_counts_what_feed_decodes_however_the_body_is_cut(picks, cuts):
    """EventStream.tally checks and counts exactly the events feed decodes, from any pieces."""
    events = [sample_events()[i] for i in picks]
    body = b"".join(encode_event(e) for e in events)
    bounds = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    pieces = [body[a:b] for a, b in zip(bounds, bounds[1:])] or [b""]
    decoded, counted = F.EventStream(), F.EventStream()
    got = [e for piece in pieces for e in decoded.feed(piece)]
    kinds = [0] * len(F.KIND_NAMES)
    snapshots = sum(counted.tally(piece, kinds) for piece in pieces)
    assert got == events and decoded.count == counted.count == len(events)
    assert kinds == [sum(e.kind == k for e in events) for k in range(len(F.KIND_NAMES))]
    assert snapshots == sum(e.kind == F.TABLE and bool(e.flags & F.SNAPSHOT) for e in events)
    assert decoded.buf == counted.buf == b""
