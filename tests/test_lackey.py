"""The lackey access pattern: a real program recorded with valgrind, replayed by a workload."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.machine.native import NativeMachine
from bench.machine.shadow import ShadowMachine
from bench.ops import LOAD, PAGE_OFFSET, STORE
from bench.registry import make_policy, make_workload
from workloads._users import read_lackey


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    path = tmp_path_factory.mktemp("lackey") / "true.lackey"
    subprocess.run(["valgrind", "--tool=lackey", "--trace-mem=yes", f"--log-file={path}",
                    "/bin/true"], check=True, timeout=120, stdout=subprocess.DEVNULL)
    return path


def test_reader_keeps_the_data_accesses(trace: Path) -> None:
    addrs, writes = read_lackey(str(trace))
    lines = trace.read_text().splitlines()
    data = [line for line in lines if line[:3] in (" L ", " S ", " M ")]
    assert len(addrs) == len(data) > 1000
    assert sum(writes) == sum(1 for line in data if line[1] in "SM")
    first = data[0].split()[1].split(",")[0]
    assert addrs[0] == int(first, 16)


def test_replay_in_kscand(trace: Path) -> None:
    addrs, writes = read_lackey(str(trace))
    w = make_workload("kscand", {"quick": True, "pattern": f"lackey:{trace}"})
    run = w.build(random.Random(1))
    um = w.last_scanner.um
    va0 = um.vaddrs[0]
    user = []
    for op in run.ops:
        if op[2] >= PAGE_OFFSET or op[0] not in (LOAD, STORE):
            continue
        user.append(op)
        if len(user) == 40:
            break
    # Process 0 runs first on CPU 0 and starts at the beginning of the trace.
    for op, addr, write in zip(user, addrs, writes):
        assert op[0] == (STORE if write else LOAD)
        assert op[2] == va0[(addr >> 12) % len(va0)] | (addr & 0xFFC)


def test_replay_runs_the_same_natively_and_shadowed(trace: Path) -> None:
    images = []
    for policy in (None, "always-emulate"):
        run = make_workload("demand-paging", {"quick": True, "pattern": f"lackey:{trace}"}).build(
            random.Random(4))
        if policy is None:
            NativeMachine(run.guest.mem, run.guest.mode, run.cr3s).run(run.ops)
        else:
            ShadowMachine(run.guest.mem, run.guest.mode, run.cr3s, make_policy(policy)).run(
                run.ops)
        images.append(run.guest.mem.image())
    assert images[0] == images[1]


@pytest.mark.parametrize("bad", [" X 0401ab70,4", " L zz,4", " L 0401ab70", "I 0401ab70,x",
                                 "garbage"])
def test_malformed_line_names_file_and_line(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "bad.lackey"
    path.write_text("==1== Lackey\nI  0401ab70,3\n S 1fff000778,8\n" + bad + "\n L 10,4\n")
    with pytest.raises(BenchError, match=rf"{path}:4: malformed lackey line"):
        read_lackey(str(path))


def test_trace_without_data_accesses(tmp_path: Path) -> None:
    path = tmp_path / "empty.lackey"
    path.write_text("==1== Lackey\nI  0401ab70,3\n")
    with pytest.raises(BenchError, match="no data accesses"):
        read_lackey(str(path))


def test_malformed_trace_fails_the_build(tmp_path: Path) -> None:
    path = tmp_path / "bad.lackey"
    path.write_text(" L 1000,4\n L nothex,4\n")
    w = make_workload("kscand", {"quick": True, "pattern": f"lackey:{path}"})
    with pytest.raises(BenchError, match=rf"{path}:2"):
        w.build(random.Random(1))
