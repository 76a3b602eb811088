"""The text trace format: round trip, replay equivalence, and one-line errors with file:line."""

from __future__ import annotations

import pytest

from bench.errors import BenchError
from bench.machine.shadow import ShadowMachine
from bench.registry import make_policy
from bench.trace import read_trace, write_trace
from tests._scenarios import USER_VA, kmap_scenario
from bench import ops as O


def test_round_trip_replays_identically(tmp_path):
    s = kmap_scenario(True)
    ops = [O.load(0, USER_VA)] + s.cycle() + [O.compute(0, 100), O.mark(0, 1),
                                              O.cr3(0, s.proc.cr3), O.store(0, USER_VA, 2, 0xBEEF)]
    path = tmp_path / "run.trace"
    initial = s.guest.mem.copy()
    assert write_trace(path, s.guest.mem, s.guest.mode, [s.proc.cr3], ops) == len(ops)
    guest, cr3s, replay = read_trace(path)
    assert cr3s == [s.proc.cr3]
    assert guest.mem.image() == initial.image()
    replayed = list(replay)
    assert replayed == ops
    a = ShadowMachine(guest.mem, guest.mode, cr3s, make_policy("always-emulate"))
    a.run(replayed)
    b = ShadowMachine(initial, s.guest.mode, [s.proc.cr3], make_policy("always-emulate"))
    b.run(ops)
    assert a.counters.as_dict() == b.counters.as_dict()
    assert a.mem.image() == b.mem.image()


HEADER = "shadowbench-trace 1\nmode pae\ncpus 1\ncr3 0 0x1000\nops\n"


@pytest.mark.parametrize("body, message", [
    ("0 store 0x1000 4\n", "store takes 3 argument"),
    ("0 fly 0x1000\n", "unknown operation 'fly'"),
    ("1 load 0x1000 4\n", "cpu 1"),
    ("0 load 0x1000 3\n", "width 3"),
    ("0 btr 0x1001 5\n", "aligned"),
    ("0 store 0x1000 1 0x1ff\n", "does not fit"),
    ("0 load zz 4\n", "not a number"),
])
def test_malformed_op_lines_name_file_and_line(tmp_path, body, message):
    path = tmp_path / "bad.trace"
    path.write_text(HEADER + "0 load 0x1000 4\n" + body)
    _, _, ops = read_trace(path)
    with pytest.raises(BenchError) as err:
        list(ops)
    assert f"{path}:7" in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("not a trace\n", "not a shadowbench trace"),
    ("shadowbench-trace 1\nmode pae\ncpus 1\nops\n", "needs one 'cr3' line"),
    ("shadowbench-trace 1\nmode weird\n", "mode must be"),
    ("shadowbench-trace 1\nmode pae\ncpus 1\ncr3 0 0\n", "no 'ops' line"),
    ("shadowbench-trace 1\nword 0x1001 5\n", "aligned gpa"),
])
def test_malformed_header(tmp_path, text, message):
    path = tmp_path / "bad.trace"
    path.write_text(text)
    with pytest.raises(BenchError, match=message):
        read_trace(path)


def test_missing_file_is_a_bench_error(tmp_path):
    with pytest.raises(BenchError, match="cannot read trace"):
        read_trace(tmp_path / "absent.trace")


def test_replay_workload_runs_a_trace(tmp_path):
    from bench.cell import run_cell

    s = kmap_scenario(False)
    ops = [O.load(0, USER_VA)] + s.cycle()
    path = tmp_path / "k.trace"
    write_trace(path, s.guest.mem, s.guest.mode, [s.proc.cr3], ops)
    result = run_cell("always-emulate", "replay", {"path": str(path)}, seed=0)
    assert result.guest_ops == len(ops)
    # cold fixmap table F: kmap's store is a hidden fault (native); the btr's walk shadows F and
    # traps on the user table; kunmap's store then traps on the now-protected F
    assert result.counters["exit_ptwrite_emulate"] == 2
    assert result.counters["exit_hidden_fault"] == 2


def test_replay_without_path_is_an_error():
    from bench.cell import run_cell

    with pytest.raises(BenchError, match="needs path"):
        run_cell("always-emulate", "replay", {}, seed=0)


def test_a_trace_that_is_not_utf8_is_a_bench_error(tmp_path):
    path = tmp_path / "bad.trace"
    path.write_bytes(b"shadowbench-trace 1\n\xed\xa0\x80\n")
    with pytest.raises(BenchError, match=r"bad\.trace: not UTF-8 text"):
        read_trace(path)
