"""Sweeps beyond one machine (issue 18): Dask executors, claims, shards and merge, keep-going,
seed ranges. The Dask tests start a LocalCluster of 2 worker processes (``--dask local:2``);
its workers import the test workloads through Dask's own preload setting (tests/_harness_util).
The test extra installs dask and distributed (pyproject.toml), so these tests always run."""

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

from _harness_util import ROOT, TINY_MAIN, bench, diagnostics, env, processes_naming, stable_bytes  # noqa: E402

from bench import results  # noqa: E402
from bench.executors import claims as claims_mod  # noqa: E402
from bench.executors import shards  # noqa: E402

SWEEP = ["-w", "tiny", "-w", "tiny:pae=true", "-p", "always-emulate", "-p", "flood-count",
         "--grid", "threshold=1,3", "--seeds", "2", "--no-progress"]
SLOW = ["-w", "tiny-slow", "-p", "always-emulate", "-p", "always-unshadow", "--seeds", "3",
        "--set", "passes=1200", "--no-progress"]


def _cells(folder: Path) -> dict[str, int]:
    """Stored cell files and their modification times."""
    cells = folder / "cells"
    return {p.name: p.stat().st_mtime_ns for p in cells.glob("*.json")} if cells.is_dir() else {}


def _volatile(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())["meta"]["volatile"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The quick sweep computed by the local pool."""
    out = tmp_path_factory.mktemp("reference") / "out"
    r = bench("sweep", *SWEEP, "--jobs", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_a_dask_local_cluster_gives_the_local_pools_results(reference, tmp_path):
    out = tmp_path / "dask"
    r = bench("sweep", *SWEEP, "--dask", "local:2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert stable_bytes(str(out / "results.json")) == stable_bytes(str(reference / "results.json"))
    assert _volatile(out)["executor"] == "dask LocalCluster (2 workers)"
    assert _volatile(out)["cells_computed"] == 12
    assert not processes_naming(str(out))  # the cluster's workers ended with the run


def _slow_dask_run(out) -> subprocess.Popen:
    """A slow run on a LocalCluster of 2 workers into ``out``, started in the background."""
    return subprocess.Popen([sys.executable, TINY_MAIN, "run", *SLOW, "--dask", "local:2",
                             "--out", str(out)], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_a_cell(run: subprocess.Popen, out) -> None:
    """Until the run has stored a cell (at most 60 s, or until it ends)."""
    deadline = time.monotonic() + 60
    while not _cells(out) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)


def test_a_killed_dask_worker_loses_no_finished_cell(tmp_path):
    out = tmp_path / "out"
    run = _slow_dask_run(out)
    try:
        _wait_for_a_cell(run, out)
        finished = _cells(out)
        workers = [p for p in _children(run.pid) if b"spawn_main" in _cmdline(p)]
        assert finished and len(workers) == 2 and run.poll() is None
        os.kill(workers[0], signal.SIGKILL)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    doc = results.load(str(out))
    assert doc["complete"] and len(doc["records"]) == 6
    after = _cells(out)
    assert all(after[name] == mtime for name, mtime in finished.items())  # kept, not recomputed
    assert not list((out / "cells").glob("*.claim"))
    # the same cells as an undisturbed run
    again = bench("run", *SLOW, "--jobs", "1", "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    assert stable_bytes(str(out / "results.json")) == stable_bytes(
        str(tmp_path / "again" / "results.json"))


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    if int(handle.read().rpartition(")")[2].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def test_two_runs_on_one_folder_compute_each_cell_once(tmp_path):
    out = tmp_path / "shared"
    # more guest runs than the first run has in flight, so the second finds some unclaimed
    share = ["-w", "tiny-slow", "-p", "always-emulate", "-p", "always-unshadow", "--seeds", "8",
             "--set", "passes=600", "--no-progress"]
    argv = [sys.executable, TINY_MAIN, "run", *share, "--out", str(out)]
    a = subprocess.Popen(argv + ["--dask", "local:2", "--json", str(tmp_path / "a.json")],
                         cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.monotonic() + 60  # the second run starts once the first is computing
    while not _cells(out) and time.monotonic() < deadline and a.poll() is None:
        time.sleep(0.05)
    b = subprocess.Popen(argv + ["--jobs", "1", "--json", str(tmp_path / "b.json")], cwd=ROOT,
                         env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    errors = [p.communicate(timeout=180)[1] for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, errors
    docs = [json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json")]
    assert results.dumps(results.stable(docs[0])) == results.dumps(results.stable(docs[1]))
    assert docs[0]["complete"] and len(docs[0]["records"]) == 16
    computed = [d["meta"]["volatile"]["cells_computed"] for d in docs]
    reused = [d["meta"]["volatile"]["cells_reused"] for d in docs]
    assert sum(computed) == 16 and computed[0] == reused[1] and computed[1] == reused[0]
    assert len(_cells(out)) == 24  # 16 cells and 8 optimum records
    assert not list((out / "cells").glob("*.claim"))


def test_two_runs_split_the_cells_between_them(tmp_path, monkeypatch):
    """With the runs' scheduling in this process: the second run waits for the cells the first
    has claimed instead of computing them."""
    import _tiny_workload

    from bench import experiment, runner
    from bench.executors.claims import Claims

    _tiny_workload.patch(monkeypatch)
    e = experiment.build(["always-emulate", "always-unshadow"], ["tiny"], [], False, 2)
    cells_dir = tmp_path / "cells"
    cells_dir.mkdir()
    other = Claims(str(cells_dir))  # another run holds the first seed's cells
    held = [c for c in e.oracle_cells() + e.cells() if c.seed == 0]
    assert all(other.take(c.digest()) for c in held)
    monkeypatch.setattr(runner, "POLL_SECONDS", 0.05)
    calls = []

    def progress(done, total, reused, what, fraction):
        calls.append(what)
        if what.startswith("waiting") and other.held:  # the other run finishes its cells now
            for c in held:
                runner.compute(c.key(), c.digest(), str(cells_dir))
                other.release(c.digest())

    outcome = runner.execute(e, str(tmp_path), 1, progress=progress)
    other.close()
    assert outcome.computed == 2 and outcome.reused == 2
    assert any(w.startswith("waiting for 3 cells") for w in calls)


def test_a_dead_owners_claim_expires(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim = tmp_path / ("a" * 32 + claims_mod.SUFFIX)
    mine = claims_mod.Claims(str(tmp_path))
    try:
        claim.write_text(json.dumps({"host": mine.owner["host"], "pid": dead.pid,
                                     "started": "1", "token": "x"}))
        assert mine.take("a" * 32)  # its owner is gone
        foreign = tmp_path / ("b" * 32 + claims_mod.SUFFIX)
        foreign.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "y"}))
        assert not mine.take("b" * 32)  # a live claim on another host: left alone ...
        old = time.time() - claims_mod.EXPIRE_SECONDS - 1
        os.utime(foreign, (old, old))
        assert mine.take("b" * 32)  # ... until its heartbeat stops
    finally:
        mine.close()
    assert not list(tmp_path.glob("*" + claims_mod.SUFFIX))


def test_a_live_claims_heartbeat_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setattr(claims_mod, "HEARTBEAT_SECONDS", 0.05)
    owner = claims_mod.Claims(str(tmp_path))
    try:
        assert owner.take("c" * 32)
        path = tmp_path / ("c" * 32 + claims_mod.SUFFIX)
        old = time.time() - 1000
        os.utime(path, (old, old))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5
        assert not owner.expired("c" * 32)
    finally:
        owner.close()


def test_shards_and_merge_equal_one_run(reference, tmp_path):
    folders = []
    for i in (1, 2, 3):
        folder = tmp_path / f"shard-{i}"
        extra = ["--dask", "local:2"] if i == 2 else ["--jobs", "1"]
        r = bench("sweep", *SWEEP, "--shard", f"{i}/3", *extra, "--out", str(folder))
        assert r.returncode == 0, r.stderr
        doc = results.load(str(folder))
        assert not doc["complete"] and any("shard" in n for n in doc["meta"]["notes"])
        folders.append(folder)
    # every cell in exactly one shard, the optimum of each (workload, seed) computed once
    stored = [set(_cells(f)) for f in folders]
    assert sum(len(s) for s in stored) == len(set().union(*stored)) == 12 + 4
    partial = bench("merge", str(folders[0]), str(folders[1]), "--out", str(tmp_path / "part"))
    assert partial.returncode == 1 and "cells are in none of the folders" in partial.stderr
    merged = tmp_path / "merged"
    r = bench("merge", *map(str, folders), "--out", str(merged))
    assert r.returncode == 0, r.stderr
    assert stable_bytes(str(merged / "results.json")) == stable_bytes(
        str(reference / "results.json"))


def test_shards_are_deterministic_and_cover_every_cell_once(monkeypatch):
    import _tiny_workload

    from bench import experiment

    _tiny_workload.patch(monkeypatch)
    e = experiment.build(["always-emulate", "flood-count", "always-unshadow"], ["tiny"], [],
                         False, 5)
    every = {c.digest() for c in e.cells() + e.oracle_cells()}
    for n in (1, 2, 3, 7, 40):
        parts = [shards.shard_digests(e, i, n) for i in range(1, n + 1)]
        assert sum(map(len, parts)) == len(every) and set().union(*parts) == every
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert parts == [shards.shard_digests(e, i, n) for i in range(1, n + 1)]


def test_keep_going_records_the_failing_cells_and_finishes_the_others(tmp_path):
    out = tmp_path / "out"
    r = bench("run", "-w", "tiny", "-p", "always-emulate", "-p", "tiny-raise:after=3",
              "-p", "always-unshadow", "--seeds", "2", "--jobs", "2", "--keep-going",
              "--out", str(out))
    assert r.returncode == 1
    failed = [line for line in r.stderr.splitlines() if line.startswith("  cell ")]
    assert len(failed) == 2 and all("policy tiny-raise[after=3] on workload tiny[" in line
                                    and "ZeroDivisionError" in line for line in failed)
    assert "2 cells failed (--keep-going)" in r.stderr and "Traceback" not in r.stderr
    doc = results.load(str(out))
    assert not doc["complete"]
    assert sorted({x["policy"] for x in doc["records"]}) == ["always-emulate", "always-unshadow"]
    assert len(doc["records"]) == 4
    notes = [n for n in doc["meta"]["notes"] if "failed (--keep-going)" in n]
    assert len(notes) == 2 and all(n.startswith("cell ") for n in notes)
    assert (out / "failure.txt").read_text().count("Traceback") == 2
    assert "always-unshadow" in r.stdout  # the summary of the cells that finished


def test_a_cell_raising_on_a_dask_worker_is_one_line(tmp_path):
    """The first failure stops the run with the line naming the cell, as with the local pool
    (the worker's own log of the error stays off the run's stderr)."""
    stop = bench("run", "-w", "tiny", "-p", "tiny-raise:after=3", "--seeds", "1",
                 "--dask", "local:2", "--no-progress", "--out", str(tmp_path / "stop"))
    assert stop.returncode == 1
    assert len(diagnostics(stop.stderr)) == 1 and "Traceback" not in stop.stderr
    assert "policy tiny-raise[after=3] on workload tiny[" in stop.stderr


def test_seed_start_extends_a_sweep_from_the_cache(tmp_path):
    out = tmp_path / "out"
    first = bench("run", "-w", "tiny", "-p", "always-emulate", "--seeds", "2", "--jobs", "1",
                  "--no-progress", "--out", str(out), "--json", "-")
    assert first.returncode == 0, first.stderr
    more = bench("run", "-w", "tiny", "-p", "always-emulate", "--seeds", "3", "--seed-start",
                 "1", "--jobs", "1", "--no-progress", "--out", str(out), "--json", "-")
    assert more.returncode == 0, more.stderr
    doc = json.loads(more.stdout)
    assert doc["meta"]["seeds"] == [1, 2, 3]
    assert doc["meta"]["volatile"]["cells_reused"] == 1  # seed 1
    assert doc["meta"]["volatile"]["cells_computed"] == 2
    before = {r["seed"]: r["counters"] for r in json.loads(first.stdout)["records"]}
    after = {r["seed"]: r["counters"] for r in doc["records"]}
    assert after[1] == before[1]


def test_a_missing_dask_extra_is_one_line(tmp_path, monkeypatch, capsys):
    import _tiny_workload

    from bench.__main__ import main

    _tiny_workload.patch(monkeypatch)
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    for option in (["--dask", "local:2"], ["--scheduler", "tcp://127.0.0.1:8786"]):
        assert main(["run", "-w", "tiny", "-p", "always-emulate", "--no-progress",
                     "--out", str(tmp_path / "out"), *option]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "pip install 'shadowbench[dask]'" in err
        assert not (tmp_path / "out").exists()


def test_an_unreachable_scheduler_is_one_line_before_anything_is_written(tmp_path, monkeypatch,
                                                                         capsys):
    import _tiny_workload

    import bench.executors.dask as dask_executor
    from bench.__main__ import main

    _tiny_workload.patch(monkeypatch)
    monkeypatch.setattr(dask_executor, "CONNECT_SECONDS", 1)
    out = tmp_path / "out"
    assert main(["run", "-w", "tiny", "-p", "always-emulate", "--no-progress", "--out", str(out),
                 "--scheduler", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot connect to the Dask scheduler" in err
    assert not out.exists()


def test_a_terminated_dask_run_keeps_its_cells_and_leaves_no_process(tmp_path):
    out = tmp_path / "out"
    run = _slow_dask_run(out)
    try:
        _wait_for_a_cell(run, out)
        children = _children(run.pid)
        assert len([p for p in children if b"spawn_main" in _cmdline(p)]) == 2
        before = _cells(out)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err.splitlines()[-1]
    doc = results.load(str(out))
    assert not doc["complete"] and set(before) <= set(_cells(out))
    stored = [json.loads(p.read_text())["key"]["kind"] for p in (out / "cells").glob("*.json")]
    assert len(doc["records"]) == stored.count("cell")  # every finished cell is in the results
    time.sleep(1)
    assert not [p for p in children if os.path.exists(f"/proc/{p}") and _cmdline(p)]
    assert not list((out / "cells").glob("*.claim"))


def test_cells_stream_through_a_bounded_number_of_tasks(tmp_path, monkeypatch):
    """At most ``slots()`` tasks are in flight, a task is submitted only as another finishes,
    each cell is on disk when its task returns, and the run keeps digests, not documents."""
    import _tiny_workload

    from bench import experiment, runner
    from bench.executors.local import Inline

    _tiny_workload.patch(monkeypatch)
    e = experiment.build(["always-emulate", "always-unshadow"], ["tiny"], [], False, 6)

    class Counting(Inline):
        def __init__(self) -> None:
            super().__init__()
            self.most = 0
            self.stored_at_submit: list[int] = []

        def slots(self) -> int:
            return 2

        def submit(self, token, items, cells_dir, done):
            super().submit(token, items, cells_dir, done)
            self.most = max(self.most, len(self.queue))
            self.stored_at_submit.append(len(list(Path(cells_dir).glob("*.json"))))

    executor = Counting()
    outcome = runner.execute(e, str(tmp_path), 1, executor=executor)
    assert outcome.computed == 12 and executor.most == 2
    assert executor.stored_at_submit == [0, 0, 3, 6, 9, 12]  # a guest run's 3 cells per task
    assert isinstance(outcome.cells, runner.StoredDocs) and not outcome.cells.mem
    assert len(outcome.cells) == 12 and outcome.cells[e.cells()[0].digest()]["counters"]


def test_a_running_scheduler_by_address_gives_the_same_results(reference, tmp_path):
    import logging

    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, memory_limit=0,
                                  silence_logs=logging.CRITICAL,
                                  preload=[TINY_MAIN]) as cluster:
        out = tmp_path / "out"
        r = bench("sweep", *SWEEP, "--scheduler", cluster.scheduler_address, "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert _volatile(out)["executor"] == f"dask scheduler {cluster.scheduler_address}"
    assert stable_bytes(str(out / "results.json")) == stable_bytes(str(reference / "results.json"))


def test_cells_of_a_worker_that_cannot_see_the_folder_are_stored_by_the_run(tmp_path,
                                                                            monkeypatch):
    import _tiny_workload

    from bench import experiment, runner
    from bench.executors.local import Inline

    _tiny_workload.patch(monkeypatch)
    e = experiment.build(["always-emulate", "always-unshadow"], ["tiny"], [], False, 2)
    elsewhere = tmp_path / "on-another-machine"
    docs = runner.compute_remote([(c.key(), c.digest()) for c in e.cells()[:1]], str(elsewhere))
    assert docs[0]["counters"] and not elsewhere.exists()

    class Remote(Inline):
        def finished(self, timeout):  # as a worker on a machine without the folder
            if not self.queue:
                return []
            token, items, _, _ = self.queue.pop(0)
            return [(token, runner.compute_remote(items, str(elsewhere)))]

    outcome = runner.execute(e, str(tmp_path / "out"), 1, executor=Remote())
    assert outcome.computed == 4
    local = runner.execute(e, str(tmp_path / "local"), 1)
    for cell in e.cells() + e.oracle_cells():
        stored = runner.load_cached(str(tmp_path / "out" / "cells"), cell)
        assert stored is not None
        assert stored == runner.load_cached(str(tmp_path / "local" / "cells"), cell)
    assert local.computed == 4


def test_a_killed_dask_run_leaves_no_process_and_the_next_run_resumes(tmp_path):
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, TINY_MAIN, "run", *SLOW, "--dask", "local:2",
                            "--out", str(out)], cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _cells(out) and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.05)
        children = _children(run.pid)
        assert len([p for p in children if b"spawn_main" in _cmdline(p)]) == 2
        before = _cells(out)
        run.kill()
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_cmdline(p) for p in children):
        time.sleep(0.2)
    assert not [p for p in children if _cmdline(p)]  # the cluster's processes died with it
    again = bench("run", *SLOW, "--jobs", "1", "--out", str(out), "--json", "-")
    assert again.returncode == 0, again.stderr
    volatile = json.loads(again.stdout)["meta"]["volatile"]
    finished = [json.loads((out / "cells" / n).read_text())["key"]["kind"] for n in before]
    assert volatile["cells_reused"] >= finished.count("cell")  # the claims of the dead run expired
    assert volatile["cells_reused"] + volatile["cells_computed"] == 6
    assert not list((out / "cells").glob("*.claim"))


def test_temporaries_of_ended_writers_go_at_once_others_wait_for_their_age(tmp_path):
    """A killed worker's half-written cell is removed when the run cleans up, however young; a
    live writer's (this process) and another host's young one are kept; an old one goes."""
    import os
    import socket
    import subprocess
    import time

    from bench.files import OWNER_SEP, owner_tag
    from bench.runner import TEMPORARY_AGE, clean_temporaries

    ended = subprocess.Popen(["true"])
    ended.wait()
    host = socket.gethostname().replace(OWNER_SEP, "_")
    names = {
        "dead": f".a.json{OWNER_SEP}{host}-{ended.pid}{OWNER_SEP}x1.tmp",
        "live": f".b.json{OWNER_SEP}{owner_tag()}{OWNER_SEP}x2.tmp",
        "remote": f".c.json{OWNER_SEP}elsewhere.example-1{OWNER_SEP}x3.tmp",
        "old": f".d.json{OWNER_SEP}elsewhere.example-1{OWNER_SEP}x4.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_text("{")
    past = time.time() - TEMPORARY_AGE - 10
    os.utime(tmp_path / names["old"], (past, past))
    clean_temporaries(str(tmp_path), older_than=TEMPORARY_AGE)
    assert sorted(os.listdir(tmp_path)) == sorted([names["live"], names["remote"]])
