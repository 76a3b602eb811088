"""The bad-input battery: over every verb, a bad input is one line on stderr, exit status 2, no
traceback, and nothing written anywhere (the working folder, the results read, the outputs).
Also: the lock on a results folder, a full stdout, an interrupted chart drawing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _tiny_workload  # noqa: E402
from _harness_util import ROOT, TINY_MAIN, bench, diagnostics, env, processes_naming  # noqa: E402

from bench.__main__ import main  # noqa: E402

TINY = ["-w", "tiny", "-p", "always-emulate", "--seeds", "1", "--jobs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    """A finished tiny results folder, and files the cases refer to."""
    base = tmp_path_factory.mktemp("stored")
    r = bench("run", *TINY, "-p", "always-unshadow", "--out", str(base / "res"))
    assert r.returncode == 0, r.stderr
    doc = json.loads((base / "res" / "results.json").read_text())
    huge = json.loads(json.dumps(doc))
    huge["records"][0]["counters"]["exits"] = 10**309
    (base / "huge.json").write_text(json.dumps(huge))
    unknown = json.loads(json.dumps(doc))
    unknown["meta"]["experiment"]["cost_profile"] = "pentium-9"
    (base / "unknown-profile.json").write_text(json.dumps(unknown))
    (base / "a-file").write_text("not a folder\n")
    r = bench("run", *TINY, "--seeds", "2", "--out", str(base / "res2"))
    assert r.returncode == 0, r.stderr
    (base / "lackey-dir").mkdir()
    from bench import ops as O
    from bench.trace import write_trace
    from tests._scenarios import USER_VA, kmap_scenario

    s = kmap_scenario(False)
    good = base / "good.trace"
    write_trace(good, s.guest.mem, s.guest.mode, [s.proc.cr3], [O.load(0, USER_VA)] + s.cycle())
    text = good.read_text()
    (base / "bad-op.trace").write_text(text + "0 store 0x1000 4\n")
    (base / "huge-compute.trace").write_text(text + f"0 compute {10**26}\n")
    (base / "wide-cr3.trace").write_text(text + "0 cr3 0xffffffffff\n")
    (base / "wide-table.trace").write_text(text.replace("ops\n", "", 1).replace(
        "mode nonpae\n", f"mode nonpae\ntable {1 << 60:#x}\n") + "ops\n")
    (base / "not-a-recording.rec").write_text("not a recording\n")
    shipped = Path(ROOT) / "recordings" / "fork-exit-686.rec"
    (base / "truncated.rec").write_bytes(shipped.read_bytes()[:100_000])
    ro = base / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    return base


def _case(*argv: str, words: tuple[str, ...] = (), root_ok: bool = True):
    return pytest.param(list(argv), words, marks=[] if root_ok else [pytest.mark.skipif(
        os.geteuid() == 0, reason="root writes into read-only folders")], id=" ".join(argv))


CASES = [
    # top level
    _case("--bogus", words=("unrecognized",)),
    _case("nosuchverb", words=("invalid choice",)),
    # run
    _case("run", "--seed", "3", words=("unrecognized arguments: --seed",)),
    _case("run", "--cost-profile", "", words=("--cost-profile", "empty")),
    _case("run", "--out", "", words=("--out", "empty")),
    _case("run", *TINY, "--json", "", words=("--json", "empty")),
    _case("run", "-p", "", words=("-p", "empty")),
    _case("run", *TINY, "--seeds", "9223372036854775807", words=("--seeds", "from 1 to")),
    _case("run", *TINY, "--seeds", "100000000", words=("--seeds",)),
    _case("run", *TINY, "--jobs", "0", words=("--jobs",)),
    _case("run", *TINY, "--out", "/proc/x", words=("/proc/x",)),
    _case("run", *TINY, "--out", "STORED/a-file/sub", words=("a-file", "not a folder")),
    _case("run", *TINY, "--out", "STORED/a-file", words=("not a folder",)),
    _case("run", *TINY, "--out", "STORED/read-only/out", words=("cannot write",), root_ok=False),
    _case("run", *TINY, "--json", "STORED/read-only/x.json", words=("cannot write",),
          root_ok=False),
    _case("run", *TINY, "--json", "STORED/nofolder/x.json", words=("does not exist",)),
    _case("run", *TINY, "--json", "STORED", words=("is a folder",)),
    _case("run", "-w", "tiny:pages=1,pages=2", words=("given twice",)),
    _case("run", *TINY, "--set", "pages=1", "--set", "pages=2", words=("--set pages given twice",)),
    _case("run", *TINY, "--quick", "--set", "quick=maybe", words=("not a boolean",)),
    _case("run", *TINY, "--quick", "--set", "quick=no", words=("contradicts",)),
    _case("run", *TINY, "--set", "pages=x1", words=("not an integer",)),
    _case("run", *TINY, "--rebuild", "--no-cache", words=("not allowed with",)),
    _case("run", "-p", "always-emulate", "-w", "replay:path=STORED/bad-op.trace",
          words=("bad-op.trace:", "store takes")),
    _case("run", "-p", "always-emulate", "-w", "replay:path=STORED/huge-compute.trace",
          words=("compute", "maximum")),
    _case("run", "-p", "always-emulate", "-w", "replay:path=STORED/wide-cr3.trace",
          words=("cr3 value", "32 bits")),
    _case("run", "-p", "always-emulate", "-w", "replay:path=STORED/wide-table.trace",
          words=("table gfn", "beyond")),
    _case("run", "-p", "always-emulate", "-w", "replay:path=STORED/absent.trace",
          words=("cannot read",)),
    _case("run", "-p", "always-emulate", "-w", "linear-scan:pattern=lackey:STORED/lackey-dir",
          words=("is a folder",)),
    _case("run", "-p", "always-emulate", "-w", "guest:STORED/absent.rec",
          words=("cannot read recording", "absent.rec")),
    _case("run", "-p", "always-emulate", "-w", "guest:STORED/not-a-recording.rec",
          words=("not a shadowbench recording",)),
    _case("run", "-p", "always-emulate", "-w", "guest:STORED/truncated.rec",
          words=("truncated", "byte offset")),
    _case("run", "-p", "always-emulate", "-w", "guest:reclaim-686-nopae",
          words=("unknown recording", "reclaim-686-pae")),
    _case("run", "-p", "always-emulate", "-w", "guest", words=("needs a recording",)),
    _case("run", "--from", "STORED/unknown-profile.json", "--no-progress",
          words=("pentium-9",)),
    _case("run", "--from", "STORED/huge.json", words=("0 to 2^63-1",)),
    _case("run", "--from", "STORED/res", "--seeds", "2", words=("drop --seeds",)),
    _case("run", *TINY, "--shard", "3/2", words=("--shard", "from 1 to 2")),
    _case("run", *TINY, "--shard", "0/0", words=("--shard", "number of shards")),
    _case("run", *TINY, "--shard", "1/", words=("--shard", "expected I/N")),
    _case("run", *TINY, "--scheduler", "localhost:8786", words=("--scheduler", "tcp://HOST:PORT")),
    _case("run", *TINY, "--scheduler", "tcp://h:99999", words=("--scheduler", "port")),
    _case("run", *TINY, "--dask", "cluster", words=("--dask", "local:N")),
    _case("run", *TINY, "--dask", "local:0", words=("--dask", "from 1 to")),
    _case("run", *TINY, "--dask", "local", "--scheduler", "tcp://h:1", words=("not allowed with",)),
    _case("run", *TINY, "--seed-start", "-2", words=("--seed-start",)),
    _case("run", *TINY, "--keep-going=yes", words=("--keep-going",)),
    # merge
    _case("merge", "STORED/res", "STORED/res2", "--out", "STORED/m", words=(
        "res2 holds another experiment", "seeds")),
    _case("merge", "STORED/res", "--out", "/proc/x", words=("/proc/x",)),
    _case("merge", "STORED/res", "--out", "STORED/a-file", words=("not a folder",)),
    _case("merge", "STORED/absent", "--out", "STORED/m", words=("absent", "not a folder")),
    _case("merge", "STORED/lackey-dir", "--out", "STORED/m", words=("cannot read",)),
    _case("merge", "STORED/res", words=("--out",)),
    _case("merge", "STORED/res", "--out", "STORED/m", "--shard", "1/2", words=("unrecognized",)),
    # sweep
    _case("sweep", *TINY, "--grid", "pages", words=("malformed --grid", "KEY=V1,V2")),
    _case("sweep", *TINY, "--grid", "pages=1,2", "--grid", "pages=3", words=("given twice",)),
    _case("sweep", "", words=("empty",)),
    _case("sweep", "STORED/absent.toml", "--grid", "pages=1,2", words=("cannot read",)),
    _case("sweep", *TINY, "--grid", "pages=1,2", "--out", "/proc/x", words=("/proc/x",)),
    # list
    _case("list", "--bogus", words=("unrecognized",)),
    # plot
    _case("plot", "STORED/absent.json", words=("cannot read",)),
    _case("plot", "STORED/huge.json", words=("0 to 2^63-1",)),
    _case("plot", "STORED/res", "--out", "", words=("--out", "empty")),
    _case("plot", "STORED/res", "--out", "/proc/x", words=("/proc/x",)),
    # compare
    _case("compare", "STORED/res", "--seed", "0", words=("only apply with --kvm-stat",)),
    _case("compare", "STORED/res", "-w", "tiny", words=("only apply with --kvm-stat",)),
    _case("compare", "STORED/res", "-p", "nope", words=("baseline",)),
    _case("compare", "STORED/res", "--kvm-stat", "--ghz", "nan", words=("--ghz",)),
    _case("compare", "", words=("empty",)),
    _case("compare", "STORED/a-file", words=("not valid JSON",)),
    # stat
    _case("stat", "STORED/res", "--seed", "-1", words=("--seed",)),
    _case("stat", "STORED/res", "--ghz", "0", words=("--ghz",)),
    _case("stat", "STORED/res", "-w", "nope", words=("nope",)),
    _case("stat", "STORED/res", "--seed", "7", words=("no record matches",)),
    # reprice
    _case("reprice", "STORED/res", "--cost-profile", "", words=("empty",)),
    _case("reprice", "STORED/res", "--cost-profile", "nope", words=("cost profile",)),
    _case("reprice", "STORED/res", "--cost-profile", "skylake-2015", "--out", "/proc/x",
          words=("/proc/x",)),
    _case("reprice", "STORED/res", "--cost-profile", "skylake-2015", "--json", "STORED",
          words=("is a folder",)),
    _case("reprice", "STORED/res", words=("--cost-profile",)),
]


def _snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    seen = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                seen[path] = (st.st_size, st.st_mtime_ns)
    return seen


@pytest.mark.parametrize("argv,words", CASES)
def test_bad_input_is_one_line_exit_2_no_traceback_nothing_written(
        argv, words, stored, tmp_path, monkeypatch, capsys):
    _tiny_workload.patch(monkeypatch)
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("STORED", str(stored)) for a in argv]
    before = _snapshot(tmp_path, stored)
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main(argv))
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bench: error: ") and "Traceback" not in err
    for word in words:
        assert word in lines[0]
    assert out == ""
    assert _snapshot(tmp_path, stored) == before


def test_a_second_run_on_a_locked_folder_is_refused(tmp_path, monkeypatch, capsys):
    from bench import outputs

    _tiny_workload.patch(monkeypatch)
    out = tmp_path / "out"
    with outputs.locked(str(out)):
        rc = main(["run", *TINY, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "being written by another shadowbench run" in err
    assert os.listdir(out) == []
    assert main(["run", *TINY, "--out", str(out)]) == 0  # released


def test_stdout_full_is_one_line():
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "bench", "list"], cwd=ROOT, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "bench: error: cannot write stdout: No space left on device"]


def test_ctrl_c_before_the_run_starts_is_one_line(monkeypatch, capsys):
    from bench import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    _tiny_workload.patch(monkeypatch)
    monkeypatch.setattr(runner, "check_memory", interrupted)
    rc = main(["run", *TINY, "--out", "unused"])
    err = capsys.readouterr().err
    assert rc == 130 and err.splitlines() == [
        "bench: interrupted by SIGINT; nothing was simulated or written"]


def test_sigint_while_drawing_charts_stops_only_the_charts(tmp_path, monkeypatch, capsys):
    import bench.plots

    def slow_charts(doc, folder, jobs=1):
        os.makedirs(folder, exist_ok=True)
        (Path(folder) / ".cycles-tiny.png.abc.tmp").write_text("half")
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        return []

    _tiny_workload.patch(monkeypatch)
    monkeypatch.setattr(bench.plots, "write_charts", slow_charts)
    out = tmp_path / "out"
    rc = main(["run", *TINY, "--out", str(out)])
    err = diagnostics(capsys.readouterr().err)
    assert rc == 130 and len(err) == 1 and "while drawing the charts" in err[0]
    assert "resume" not in err[0]
    assert json.loads((out / "results.json").read_text())["complete"] is True
    assert os.listdir(out / "charts") == []  # the temporary file is gone


def _listing(folder: str) -> dict[str, int]:
    try:
        return {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)}
    except OSError:
        return {}


def test_sigkill_of_the_run_leaves_no_worker_and_no_write_after(tmp_path):
    out = str(tmp_path / "run")
    cells = os.path.join(out, "cells")
    argv = ["run", "-w", "tiny-slow", "-p", "always-emulate", "-p", "always-unshadow",
            "--seeds", "4", "--set", "passes=1500", "--no-progress", "--jobs", "2", "--out", out]
    proc = subprocess.Popen([sys.executable, TINY_MAIN, *argv], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(n.endswith(".json") for n in _listing(cells)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    time.sleep(0.5)
    assert processes_naming(out) == [], "workers outlived the killed run"
    after = _listing(cells)
    time.sleep(1.5)
    assert _listing(cells) == after, "a cell was written after the run was killed"
    resumed = bench("run", *argv[1:], timeout=300)
    assert resumed.returncode == 0, resumed.stderr


def test_sighup_stops_the_run_cleanly(tmp_path):
    out = str(tmp_path / "run")
    cells = os.path.join(out, "cells")
    argv = ["run", "-w", "tiny-slow", "-p", "always-emulate", "--seeds", "2", "--set",
            "passes=1500", "--no-progress", "--jobs", "2", "--out", out]
    proc = subprocess.Popen([sys.executable, TINY_MAIN, *argv], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(n.endswith(".json") for n in _listing(cells)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGHUP, stderr
    assert stderr.splitlines()[-1].startswith("bench: interrupted by SIGHUP")
    time.sleep(0.3)
    assert processes_naming(out) == []
    assert json.loads(Path(out, "results.json").read_text())["complete"] is False


def test_ctrl_c_while_the_modules_load_is_one_line():
    """Started as the command line, the package installs a quiet SIGINT handler first thing."""
    code = ("import os, signal, sys\n"
            "sys.argv[:1] = ['-m']\n"
            "import bench\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "import time; time.sleep(5)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 130
    assert proc.stderr.splitlines() == ["bench: interrupted by SIGINT before anything was written"]
    plain = subprocess.run([sys.executable, "-c", "import bench, signal; print("
                            "signal.getsignal(signal.SIGINT) is signal.default_int_handler)"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert plain.stdout.strip() == "True"  # a library import changes nothing


def test_any_process_the_command_forks_dies_with_it():
    """Chart workers as well as cell workers: the fork guard covers every fork."""
    code = ("import os, sys, time\n"
            "from bench.__main__ import install_fork_guard\n"
            "install_fork_guard()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    time.sleep(60)\n"
            "    os._exit(0)\n"
            "print(pid, flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    child = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        try:
            with open(f"/proc/{child}/stat") as handle:
                if handle.read().split(")")[-1].split()[0] == "Z":
                    break  # dead, waiting to be reaped by init
        except OSError:
            break
        time.sleep(0.05)
    assert time.monotonic() < deadline, "the forked child outlived its killed parent"
