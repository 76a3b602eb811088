"""Engineering of the harness: parallel cells, the resumable cell cache, interruption, identical
reruns, the memory estimate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _tiny_workload  # noqa: E402
from _harness_util import TINY_MAIN, bench, diagnostics, env, processes_naming, stable_bytes  # noqa: E402

import bench as bench_pkg  # noqa: E402
from bench import experiment, results, runner  # noqa: E402

TINY = ["-w", "tiny", "-w", "tiny:pae=true", "-p", "always-emulate", "-p", "always-unshadow",
        "--seeds", "3", "--no-progress"]
SLOW = ["-w", "tiny-slow", "-p", "always-emulate", "-p", "always-unshadow", "--seeds", "2",
        "--set", "passes=1000", "--no-progress", "--jobs", "2"]


@pytest.fixture
def tiny(monkeypatch):
    _tiny_workload.patch(monkeypatch)


def test_results_identical_whatever_the_job_count_and_on_reuse(tmp_path):
    a = bench("run", *TINY, "--jobs", "1", "--out", str(tmp_path / "a"))
    b = bench("run", *TINY, "--jobs", "2", "--out", str(tmp_path / "b"))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    first = stable_bytes(str(tmp_path / "a" / "results.json"))
    assert first == stable_bytes(str(tmp_path / "b" / "results.json"))
    doc = json.loads(first)
    assert [(r["workload_label"], r["policy"], r["seed"]) for r in doc["records"]] == [
        (w, p, s) for w in ("tiny[pae=false]", "tiny[pae=true]")
        for p in ("always-emulate", "always-unshadow") for s in range(3)]
    again = bench("run", *TINY, "--jobs", "2", "--out", str(tmp_path / "a"))
    assert again.returncode == 0
    vol = results.load(str(tmp_path / "a"))["meta"]["volatile"]
    assert vol["cells_computed"] == 0 and vol["cells_reused"] == 12  # records, not the optimum's
    assert stable_bytes(str(tmp_path / "a" / "results.json")) == first


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_keeps_cells_marks_partial_and_resumes(tmp_path, signum, status):
    out = str(tmp_path / "run")
    cells = os.path.join(out, "cells")
    proc = subprocess.Popen([sys.executable, TINY_MAIN, "run", *SLOW, "--out", out],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (os.path.isdir(cells) and any(n.endswith(".json") for n in os.listdir(cells))):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status, stderr
    assert stdout == ""
    lines = diagnostics(stderr)
    assert len(lines) == 1 and lines[0].startswith(f"bench: interrupted by {signal.Signals(signum).name}")
    assert "rerun the same command to resume" in lines[0]
    time.sleep(0.2)
    assert processes_naming(out) == [], "worker processes were left running"
    doc = results.load(out)
    assert doc["complete"] is False
    assert doc["meta"]["cells_done"] < doc["meta"]["cells_expected"] == 4
    kept = [n for n in os.listdir(cells)]
    assert kept and all(n.endswith(".json") for n in kept)  # no temporary file left

    resumed = bench("run", *SLOW, "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    doc = results.load(out)
    assert doc["complete"] is True and len(doc["records"]) == 4
    kept_cells = [n for n in kept
                  if json.load(open(os.path.join(cells, n)))["key"]["kind"] == "cell"]
    assert doc["meta"]["volatile"]["cells_reused"] >= len(kept_cells)  # records, as counted
    if signum != signal.SIGINT:
        return
    fresh = bench("run", *SLOW, "--out", str(tmp_path / "fresh"), "--jobs", "1")
    assert fresh.returncode == 0
    assert stable_bytes(os.path.join(out, "results.json")) == stable_bytes(
        str(tmp_path / "fresh" / "results.json"))


def test_cell_digest_covers_everything_that_determines_it(tiny):
    exp = experiment.build(["always-emulate", "always-unshadow"], ["tiny", "tiny:pages=2"], [],
                           False, 2)
    digests = [c.digest() for c in exp.cells()] + [c.digest() for c in exp.oracle_cells()]
    assert len(set(digests)) == len(digests) == 8 + 4
    again = experiment.build(["always-emulate", "always-unshadow"], ["tiny", "tiny:pages=2"], [],
                             False, 2)
    assert [c.digest() for c in again.cells()] == digests[:8]
    cell = exp.cells()[0]
    key = cell.key()
    assert key["version"] == bench_pkg.__version__ and key["seed"] == 0
    assert key["workload_params"] == {"pae": False, "pages": 6, "passes": 4, "quick": False}


def test_cache_ignores_foreign_or_broken_cells(tiny, tmp_path):
    exp = experiment.build(["always-emulate"], ["tiny"], [], False, 1)
    cell = exp.cells()[0]
    folder = str(tmp_path)
    runner.compute(cell.key(), cell.digest(), folder)
    assert runner.load_cached(folder, cell)["guest_ops"] > 0
    assert os.listdir(folder) == [cell.digest() + ".json"]
    path = os.path.join(folder, cell.digest() + ".json")
    doc = json.load(open(path))
    doc["key"]["seed"] = 7
    json.dump(doc, open(path, "w"))
    assert runner.load_cached(folder, cell) is None
    open(path, "w").write("{truncated")
    assert runner.load_cached(folder, cell) is None


def test_memory_estimate_grows_with_the_guest_and_the_jobs(tiny):
    small = experiment.build(["always-emulate"], ["tiny:pages=1"], [], False, 2)
    big = experiment.build(["always-emulate"], ["tiny:pages=500"], [], False, 2)
    s1, _ = runner.estimate_memory(small, 1)
    b1, per = runner.estimate_memory(big, 1)
    b2, _ = runner.estimate_memory(big, 2)
    records = (len(big.cells()) + len(big.oracle_cells())) * runner.BYTES_PER_RECORD
    assert 0 < s1 < b1 < b2 and per == {"tiny[pages=500]": (
        b1 - records - runner.BYTES_PER_WORKER - runner.RECORDING_BYTES) // 2}
    many = experiment.build(["always-emulate"], ["tiny:pages=500"], [], False, 2000)
    assert runner.estimate_memory(many, 1)[0] - b1 == 2 * 1998 * runner.BYTES_PER_RECORD
    assert runner.available_memory() is None or runner.available_memory() > 0


def test_policy_cost_profile_parameter_defaults_to_the_run_profile(tiny, monkeypatch):
    """Policies with a cost_profile parameter (ski-rental) get the run's --cost-profile."""
    from bench import registry
    from bench.params import Param
    from bench.policy import Policy

    class Priced(Policy):
        name = "priced"
        summary = "test-only"
        params = {"cost_profile": Param(str, "core2-penryn-2008", "profile")}

    real = registry.policies()
    monkeypatch.setattr(registry, "policies", lambda: {**real, "priced": Priced})
    exp = experiment.build(["priced", "priced:cost_profile=p4-vtx-2006"], ["tiny"], [], False, 1,
                           "skylake-2015")
    assert [p.params["cost_profile"] for p in exp.policies] == ["skylake-2015", "p4-vtx-2006"]
    assert [p.label for p in exp.policies] == ["priced[cost_profile=skylake-2015]",
                                               "priced[cost_profile=p4-vtx-2006]"]
    exp = experiment.build(["priced"], ["tiny"], [], False, 1, "skylake-2015")
    assert exp.policies[0].label == "priced"


@pytest.mark.parametrize("jobs", [1, 2])
def test_progress_reports_every_cell_once_with_the_share_of_work_done(tiny, tmp_path, jobs):
    exp = experiment.build(["always-emulate", "always-unshadow"], ["tiny", "tiny:pages=20"], [],
                           False, 2)
    calls = []
    outcome = runner.execute(exp, str(tmp_path), jobs,
                             progress=lambda *args: calls.append(args),
                             weights={"tiny[pages=6]": 1.0, "tiny[pages=20]": 3.0})
    total = len(exp.cells())  # records: the optimum's records only advance the fraction
    assert outcome.computed == total and calls[0] == (0, total, 0, "", 0.0)
    assert len(calls) == 1 + total + len(exp.oracle_cells())
    done = [c[0] for c in calls[1:] if " / oracle / " not in c[3]]
    assert done == list(range(1, total + 1))  # each cell once, in the order they finished
    assert all(c[0] <= total for c in calls)
    fractions = [c[4] for c in calls]
    assert fractions == sorted(fractions) and abs(fractions[-1] - 1.0) < 1e-9
    # the bigger guest's cells count three times as much
    big = [c[4] - p[4] for p, c in zip(calls, calls[1:]) if c[3].startswith("tiny[pages=20]")]
    small = [c[4] - p[4] for p, c in zip(calls, calls[1:]) if c[3].startswith("tiny[pages=6]")]
    assert big and small and abs(big[0] - 3 * small[0]) < 1e-9
