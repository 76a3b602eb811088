"""A cell that raises: one line naming the cell, every finished cell kept, a partial folder."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness_util import bench, diagnostics  # noqa: E402

from bench import results  # noqa: E402


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_raising_policy_names_its_cell_and_keeps_the_finished_ones(tmp_path, jobs):
    out = tmp_path / "out"
    r = bench("run", "-w", "tiny", "-p", "always-emulate", "-p", "tiny-raise:after=3", "--seeds",
              "2", "--jobs", jobs, "--no-progress", "--out", str(out))
    assert r.returncode == 1, r.stderr
    lines = diagnostics(r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "policy tiny-raise[after=3] on workload tiny[" in lines[0]
    assert "seed " in lines[0] and "ZeroDivisionError" in lines[0]
    assert "_tiny_workload.py:" in lines[0] and "partial" in lines[0]
    doc = results.load(str(out))
    assert doc["complete"] is False
    assert {r["policy"] for r in doc["records"]} == {"always-emulate"}
    assert any("tiny-raise" in n for n in doc["meta"]["notes"])
    assert "Traceback" in (out / "failure.txt").read_text()
    assert "Partial run" in (out / "report.md").read_text()
    assert "A cell raised" in (out / "report.md").read_text()
    # the finished cells are in the cache: a run without the bad policy reuses them
    r = bench("run", "-w", "tiny", "-p", "always-emulate", "--seeds", "2", "--jobs", jobs,
              "--no-progress", "--out", str(out), "--json", "-")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["meta"]["volatile"]["cells_reused"] == len(
        [x for x in doc["records"] if x["policy"] == "always-emulate"])
    assert not (out / "failure.txt").exists()


def test_progress_counts_records_as_the_results_do(tmp_path):
    out = tmp_path / "out"
    r = bench("run", "-w", "tiny", "-p", "always-emulate", "-p", "always-unshadow", "--seeds",
              "2", "--jobs", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "4/4 cells" in r.stderr and "/6 cells" not in r.stderr
    assert "] cells: " in r.stderr


def test_progress_is_cut_to_the_terminal_width(monkeypatch):
    import io

    from bench.progress import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("COLUMNS", "40")
    stream = Tty()
    p = Progress(stream)
    p.phase("cells")
    p(1, 9, 0, "kscand[highmem_mib=64.0,quick=true] / flood-count / seed 0", 0.1)
    p.stop()
    for chunk in stream.getvalue().replace("\n", "\r").split("\r"):
        assert len(chunk) < 40


def test_piped_progress_has_a_heartbeat(monkeypatch):
    import io
    import time

    import bench.progress as progress

    monkeypatch.setattr(progress, "HEARTBEAT_SECONDS", 0.3)
    monkeypatch.setattr(progress, "TICK_SECONDS", 0.1)
    stream = io.StringIO()
    p = progress.Progress(stream)
    p.phase("cells")
    time.sleep(1.0)
    p.stop()
    assert "(still running)" in stream.getvalue()
