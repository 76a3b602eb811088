"""The C reference of the hot path (bench/core/reference/hotpath.c), its stream file and the
benchmark script's bad-input handling (issue 17)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import ops as O
from bench.core import benchmark
from bench.core.stream import MAGIC, export, load
from bench.errors import BenchError
from bench.machine.native import NativeMachine
from bench.recording import OpRecording
from tests._scenarios import USER_VA, kmap_scenario

ROOT = Path(__file__).resolve().parent.parent
needs_cc = pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None,
                              reason="no C compiler")


@pytest.fixture(scope="module")
def hotpath(tmp_path_factory) -> str:
    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler")
    return benchmark.compile_reference(str(tmp_path_factory.mktemp("hotpath")),
                                       benchmark.compiler())


def _recorded(guest, cr3s, ops) -> benchmark.Recorded:
    initial = guest.mem.copy()
    recording = OpRecording()
    NativeMachine(guest.mem, guest.mode, cr3s).run(recording.tee(ops, guest.mem))
    return benchmark.Recorded(recording, initial, guest.mode, list(cr3s))


def _both(hotpath: str, rec: benchmark.Recorded, tmp_path) -> tuple[dict, dict, dict]:
    stream = str(tmp_path / "stream.bin")
    export(stream, rec.recording, rec.initial, rec.mode.pae, rec.cr3s)
    ref = benchmark.run_reference(hotpath, stream)
    n, sim = benchmark.simulate_replay(rec.recording, "flood-count", rec.initial, rec.mode,
                                       rec.cr3s)
    assert ref["ops"] == n
    return ref, ref["counters"], sim


def _flood_stream(pae: bool):
    """A user access (hidden faults), kmap_atomic cycles through the fixmap slot (trapping
    stores and a btr, emulated), then four stores to the user pte through the kernel's direct
    mapping, its A bit clear each time: the third is a flood and zaps the page table."""
    s = kmap_scenario(pae)
    cr3 = s.proc.cr3
    through_slot = s.slot_vaddr + (s.pte_gpa & 0xFFF)
    value = s.guest.mem.read32(s.pte_gpa) & ~0x20
    ops = [O.cr3(0, cr3), O.load(0, USER_VA), O.store(0, USER_VA + 8, 4, 7)]
    ops += s.cycle() + s.cycle() + s.kmap_2620()
    ops += [O.store(0, through_slot, 4, value) for _ in range(4)]
    ops += s.kunmap_2620() + [O.load(0, USER_VA), O.mark(0, 1)]
    return s.guest, [cr3], ops


@needs_cc
@pytest.mark.parametrize("pae", [False, True])
def test_reference_agrees_with_the_simulator_on_trapping_writes_and_a_flood(hotpath, tmp_path,
                                                                            pae):
    guest, cr3s, ops = _flood_stream(pae)
    ref, theirs, mine = _both(hotpath, _recorded(guest, cr3s, ops), tmp_path)
    assert ref["ops"] == len(ops)
    assert mine["exit_ptwrite_emulate"] >= 5 and mine["mmu_flooded"] >= 1  # the stream's point
    assert mine["mmu_shadow_zapped"] >= 1 and mine["exit_hidden_fault"] >= 2
    assert {k: mine[k] for k in benchmark.COMPARED} == theirs


@needs_cc
def test_reference_agrees_on_a_kscand_prefix(hotpath, tmp_path):
    rec = benchmark.record_kscand(4000, {"quick": True})
    ref, theirs, mine = _both(hotpath, rec, tmp_path)
    assert ref["reads_checked"] > 0 and ref["reads_differed"] == 0
    assert mine["exit_ptwrite_emulate"] > 0
    assert {k: mine[k] for k in benchmark.COMPARED} == theirs


@needs_cc
def test_reference_counts_reads_that_differ(hotpath, tmp_path):
    """The reference repeats the recorded reads: a changed initial memory shows."""
    rec = benchmark.record_kscand(4000, {"quick": True})
    first = next(rec.recording._reads.columns())
    gpa = first[2][0]  # the first read's gpa: flip a bit the walker ignores (bit 9, AVL)
    rec.initial.tables[gpa >> 12][(gpa & 0xFFF) >> 2] ^= 0x200
    stream = str(tmp_path / "stream.bin")
    export(stream, rec.recording, rec.initial, rec.mode.pae, rec.cr3s)
    assert benchmark.run_reference(hotpath, stream)["reads_differed"] > 0


def test_stream_round_trips(tmp_path):
    guest, cr3s, ops = _flood_stream(True)
    guest.mem.write32(0x5000_0000, 0xDEAD)  # a sparse word beside the tables
    rec = _recorded(guest, cr3s, ops)
    path = str(tmp_path / "s.bin")
    assert export(path, rec.recording, rec.initial, True, cr3s) == (len(ops), 0)
    back = load(path)
    assert back.pae is True and back.cr3s == cr3s
    assert back.mem.image() == rec.initial.image() and back.mem.image()[0x5000_0000 >> 2] == 0xDEAD
    rows = list(zip(*(column.tolist() for column in back.ops)))
    assert rows == [tuple(op[:5]) for op in rec.recording.replay()]

    kscand = benchmark.record_kscand(3000, {"quick": True})
    export(path, kscand.recording, kscand.initial, kscand.mode.pae, kscand.cr3s)
    back = load(path)
    reads = list(zip(*(column.tolist() for column in back.reads)))
    recorded = [row for chunk in kscand.recording._reads.columns()
                for row in zip(*(column.tolist() for column in chunk))]
    assert len(reads) > 0 and reads == recorded
    rows = list(zip(*(column.tolist() for column in back.ops)))
    assert rows == [tuple(op[:5]) for op in kscand.recording.replay()]
    assert back.mem.image() == kscand.initial.image()


def test_truncated_or_foreign_stream_is_one_line_error(tmp_path, hotpath):
    guest, cr3s, ops = _flood_stream(False)
    rec = _recorded(guest, cr3s, ops)
    path = tmp_path / "s.bin"
    export(str(path), rec.recording, rec.initial, False, cr3s)
    data = path.read_bytes()
    for name, content in (("short.bin", data[:-3]), ("foreign.bin", b"PK\x03\x04" + data[4:]),
                          ("long.bin", data + b"\0")):
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(BenchError) as err:
            load(str(bad))
        assert "\n" not in str(err.value)
        done = subprocess.run([hotpath, str(bad)], capture_output=True, text=True)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("hotpath: ")
    assert data.startswith(MAGIC)


def _script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.core.benchmark", *args], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=60)


@pytest.mark.parametrize("args, env, says", [
    (["--ops", "0"], None, "not a positive whole number"),
    (["--ops", "many"], None, "not a whole number"),
    (["--repeat", "-1"], None, "not a positive whole number"),
    (["--json", "/nonexistent-folder/x.json"], None, "not a writable folder"),
    ([], {"CC": "no-such-compiler-here"}, "no C compiler"),
])
def test_benchmark_bad_input_is_one_line_exit_2(args, env, says):
    done = _script(*args, "--skip-end-to-end", env=env)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and done.stderr.count("\n") == 1 and says in done.stderr


@needs_cc
def test_pyperf_benchmark_times_the_reference():
    from bench import perf

    time_func = perf._reference(500)
    seconds = time_func(2)
    assert 0 < seconds < 5
