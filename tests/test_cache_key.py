"""The cell cache's key covers everything that determines a cell (bench.fingerprint): code,
input files' contents, cost-profile numbers, schema; --rebuild and --no-cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness_util import ROOT, diagnostics  # noqa: E402

from bench import costs, fingerprint  # noqa: E402
from bench import experiment as exp  # noqa: E402

NO_CHARTS_MAIN = ("import sys, bench.plots; bench.plots.write_charts = lambda d, f, j=1: []\n"
                  "from bench.__main__ import main; sys.exit(main(sys.argv[1:]))\n")
KMAP_RUN = ["run", "-p", "always-emulate", "-p", "always-unshadow", "-w", "kmap:quick=true",
            "--seeds", "1", "--jobs", "1", "--no-progress"]


def _copy_project(dest: Path) -> Path:
    for package in fingerprint.PACKAGES:
        shutil.copytree(Path(ROOT) / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    return dest


def _run(project: Path, *argv: str) -> dict:
    env = dict(os.environ, SHADOWBENCH_PURE="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", NO_CHARTS_MAIN, *argv, "--json", "-"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _counts(doc: dict) -> tuple[int, int]:
    volatile = doc["meta"]["volatile"]
    return volatile["cells_reused"], volatile["cells_computed"]


def test_editing_a_policy_source_recomputes_editing_a_chart_module_does_not(tmp_path):
    project = _copy_project(tmp_path / "project")
    out = str(tmp_path / "out")
    first = _run(project, *KMAP_RUN, "--out", out)
    total = sum(_counts(first))
    assert _counts(first) == (0, total)
    assert _counts(_run(project, *KMAP_RUN, "--out", out)) == (total, 0)
    with open(project / "policies" / "always_unshadow.py", "a") as handle:
        handle.write("\n# an edit: the cells it ran in must be recomputed\n")
    assert _counts(_run(project, *KMAP_RUN, "--out", out)) == (0, total)
    with open(project / "bench" / "plots.py", "a") as handle:
        handle.write("\n# a chart-only edit keeps the cells\n")
    assert _counts(_run(project, *KMAP_RUN, "--out", out)) == (total, 0)


def test_rebuild_recomputes_and_no_cache_stores_nothing(tmp_path):
    project = _copy_project(tmp_path / "project")
    out = tmp_path / "out"
    first = _run(project, *KMAP_RUN, "--out", str(out))
    total = sum(_counts(first))
    assert _counts(_run(project, *KMAP_RUN, "--out", str(out), "--rebuild")) == (0, total)
    fresh = tmp_path / "fresh"
    doc = _run(project, *KMAP_RUN, "--out", str(fresh), "--no-cache")
    assert _counts(doc) == (0, total)
    assert not (fresh / "cells").exists()
    assert [r["counters"] for r in doc["records"]] == [r["counters"] for r in first["records"]]


def test_core_digest_covers_the_simulator_and_skips_presentation(tmp_path):
    project = _copy_project(tmp_path / "p")
    before = fingerprint.core_digest(project)
    (project / "bench" / "report.py").write_text("# presentation only\n")
    assert fingerprint.core_digest.__wrapped__(project) == before
    with open(project / "bench" / "machine" / "shadow.py", "a") as handle:
        handle.write("\n")
    after = fingerprint.core_digest.__wrapped__(project)
    assert after != before
    # the native core's C source runs inside cells too; the C reference is a benchmark's
    (project / "bench" / "core" / "reference" / "hotpath.c").write_text("/* a yardstick */\n")
    assert fingerprint.core_digest.__wrapped__(project) == after
    with open(project / "bench" / "core" / "_core.c", "a") as handle:
        handle.write("\n")
    assert fingerprint.core_digest.__wrapped__(project) != after
    # every file the native core is built from, its header too (bench.core.SOURCES)
    from bench import core

    for name in core.SOURCES:
        was = fingerprint.core_digest.__wrapped__(project)
        with open(project / "bench" / "core" / name, "a") as handle:
            handle.write("\n")
        assert fingerprint.core_digest.__wrapped__(project) != was, name


def test_a_cell_never_imports_the_presentation_modules():
    """What PRESENTATION leaves out of the key must not run inside a cell (what a worker runs:
    bench.runner.compute_group, as every executor calls it)."""
    code = ("import sys, tempfile\n"
            "from bench import runner, experiment as exp\n"
            "e = exp.build(['always-emulate', 'ski-rental', 'oracle', 'tdp', 'unsync'],\n"
            "              ['kmap:quick=true', 'linear-scan:quick=true'], seeds=1)\n"
            "d = tempfile.mkdtemp()\n"
            "for c in e.oracle_cells() + e.cells():\n"
            "    runner.compute(c.key(), c.digest(), d)\n"
            "runner.compute_remote([(c.key(), c.digest()) for c in e.cells()[:2]], d)\n"
            "print('\\n'.join(m for m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    for excluded in fingerprint.PRESENTATION:
        if excluded == "bench/fingerprint.py":
            continue
        module = excluded.removesuffix(".py").replace("/", ".")
        assert not any(m == module or m.startswith(module + ".") for m in loaded), module


def _kmap_cell(**params) -> exp.Cell:
    e = exp.build(["always-emulate"], [f"linear-scan:quick=true" + "".join(
        f",{k}={v}" for k, v in params.items())], seeds=1)
    return e.cells()[0]


def _lackey(path: Path, lines: int) -> None:
    path.write_text("==1== Lackey\n" + "".join(
        f" {'LS'[i % 2]} {0x4000000 + 64 * i:08x},4\n" for i in range(lines)))


def test_the_key_holds_the_lackey_contents_not_its_path(tmp_path):
    trace = tmp_path / "t.lackey"
    _lackey(trace, 200)
    before = _kmap_cell(pattern=f"lackey:{trace}").digest()
    assert _kmap_cell(pattern=f"lackey:{trace}").digest() == before
    _lackey(trace, 100)  # truncated
    assert _kmap_cell(pattern=f"lackey:{trace}").digest() != before
    copy = tmp_path / "copy.lackey"
    _lackey(copy, 100)
    assert (_kmap_cell(pattern=f"lackey:{copy}").key()["inputs"]
            == _kmap_cell(pattern=f"lackey:{trace}").key()["inputs"])


def test_truncating_a_lackey_file_recomputes_the_run(tmp_path):
    project = _copy_project(tmp_path / "project")
    trace = tmp_path / "t.lackey"
    _lackey(trace, 4000)
    run = ["run", "-p", "always-emulate", "-w", f"linear-scan:quick=true,pattern=lackey:{trace}",
           "--seeds", "1", "--jobs", "1", "--no-progress", "--out", str(tmp_path / "out")]
    first = _run(project, *run)
    _lackey(trace, 10)
    second = _run(project, *run)
    assert _counts(second) == (0, sum(_counts(first)))
    assert first["records"][0]["counters"] != second["records"][0]["counters"]


def test_editing_a_replay_trace_recomputes_the_run(tmp_path):
    from bench import ops as O
    from bench.trace import write_trace
    from tests._scenarios import USER_VA, kmap_scenario

    project = _copy_project(tmp_path / "project")
    s = kmap_scenario(False)
    path = tmp_path / "k.trace"
    write_trace(path, s.guest.mem, s.guest.mode, [s.proc.cr3], [O.load(0, USER_VA)] + s.cycle())
    run = ["run", "-p", "always-emulate", "-w", f"replay:path={path}", "--seeds", "1", "--jobs",
           "1", "--no-progress", "--out", str(tmp_path / "out")]
    first = _run(project, *run)
    assert _counts(_run(project, *run)) == (sum(_counts(first)), 0)
    s = kmap_scenario(False)
    write_trace(path, s.guest.mem, s.guest.mode, [s.proc.cr3],
                [O.load(0, USER_VA)] + s.cycle() + s.cycle())
    second = _run(project, *run)
    assert _counts(second) == (0, sum(_counts(first)))
    assert second["records"][0]["guest_ops"] > first["records"][0]["guest_ops"]


def test_the_key_holds_the_numbers_of_the_profile_a_policy_decides_by(monkeypatch):
    e = exp.build(["ski-rental", "always-emulate"], ["kmap:quick=true"], seeds=1)
    ski, always = e.cells()[0], e.cells()[1]
    assert ski.key()["policy_cost_numbers"]["exit_roundtrip"] == costs.profile(
        costs.DEFAULT_PROFILE).exit_roundtrip
    ski_before, always_before = ski.digest(), always.digest()
    changed = costs.profile_from_dict(dict(costs.profile(costs.DEFAULT_PROFILE).as_dict(),
                                           exit_roundtrip=1))
    monkeypatch.setitem(costs.PROFILES, costs.DEFAULT_PROFILE, changed)
    e = exp.build(["ski-rental", "always-emulate"], ["kmap:quick=true"], seeds=1)
    assert e.cells()[0].digest() != ski_before
    assert e.cells()[1].digest() == always_before  # it prices nothing while simulating


def test_the_key_holds_the_schema_version(monkeypatch):
    cell = _kmap_cell()
    before = cell.digest()
    monkeypatch.setattr(exp, "CELL_SCHEMA", exp.CELL_SCHEMA + 1)
    assert _kmap_cell().digest() != before


def test_an_unreadable_input_file_is_one_line(tmp_path):
    with pytest.raises(Exception, match="folder|does not exist"):
        _kmap_cell(pattern=f"lackey:{tmp_path}")


def test_a_third_party_class_adds_its_package_sources(tmp_path, monkeypatch):
    import importlib

    package = tmp_path / "vendorpol"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("FACTOR = 2\n")
    (package / "mine.py").write_text("class Mine:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = importlib.import_module("vendorpol.mine").Mine
    first = fingerprint.class_digest(cls)
    assert first != fingerprint.core_digest()
    (package / "helpers.py").write_text("FACTOR = 3\n")  # a helper module of the package
    fingerprint.class_digest.cache_clear()
    assert fingerprint.class_digest(cls) != first


def test_a_full_disk_while_storing_a_cell_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    import _tiny_workload

    from bench import runner
    from bench.__main__ import main

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    _tiny_workload.patch(monkeypatch)
    monkeypatch.setattr(runner, "atomic_write_text", full)
    rc = main(["run", "-w", "tiny", "-p", "always-emulate", "--seeds", "1", "--jobs", "1",
               "--no-progress", "--out", str(tmp_path / "out")])
    err = diagnostics(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("bench: error: cannot write ") and "No space left" in err[0]


def test_a_compiled_core_module_has_the_core_digest(monkeypatch, tmp_path):
    """A built-in policy served by the compiled build has its __file__ in site-packages (an
    extension module); its digest must still be the core digest, or compiled and pure runs of
    the same sources would name their cells differently (found by CI's compiled-vs-pure test)."""
    import sys

    from bench import fingerprint
    from policies.flood_count import FloodCount

    module = sys.modules[FloodCount.__module__]
    monkeypatch.setattr(module, "__file__", str(tmp_path / "site-packages" / "policies" /
                                                "flood_count.cpython-311-x86_64-linux-gnu.so"))
    fingerprint.class_digest.cache_clear()
    try:
        assert fingerprint.class_digest(FloodCount) == fingerprint.core_digest()
    finally:
        fingerprint.class_digest.cache_clear()
