"""The compiled core (bench/_compiled.py, setup.py): found only for the very sources in use, and
giving exactly what the pure-Python modules give.

When the suite runs on an installation with the compiled core (CI's `pip install '.[test]'` builds
it), every other test exercises the compiled modules; the tests here run the golden,
differential and workload tests once more on the pure-Python modules, and compare whole runs both
ways.
"""

from __future__ import annotations

import ast
import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import _compiled
from bench.machine.counters import ALL_COUNTERS, Counters

ROOT = Path(__file__).resolve().parent.parent
EXTENSION = importlib.machinery.EXTENSION_SUFFIXES[0]


def _python(args: list[str], pure: bool, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(_compiled.PURE_ENV, None)
    if pure:
        env[_compiled.PURE_ENV] = "1"
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_counters_spell_out_every_name_in_order():
    tree = ast.parse((ROOT / "bench" / "machine" / "counters.py").read_text())
    init = next(node for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    assigned = [stmt.target.attr for stmt in init.body if isinstance(stmt, ast.AnnAssign)]
    assert tuple(assigned) == ALL_COUNTERS
    assert set(Counters().as_dict()) == set(ALL_COUNTERS)


def _fake_build(root: Path, modules: dict[str, str], extensions: bool = True) -> None:
    (root / "bench").mkdir(parents=True)
    (root / "bench" / _compiled.MANIFEST).write_text(
        json.dumps({"group": _compiled.GROUP, "modules": modules}))
    if extensions:
        for module in _compiled.COMPILED:
            path = root.joinpath(*module.split("."))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_name(path.name + EXTENSION).write_bytes(b"")
        (root / (_compiled.GROUP + "__mypyc" + EXTENSION)).write_bytes(b"")


def test_a_build_is_used_only_for_the_same_sources(tmp_path, monkeypatch):
    here = ROOT
    current = _compiled.manifest(here)["modules"]
    other = dict(current, **{"bench.machine.shadow": "0" * 64})
    stale, partial, good = tmp_path / "stale", tmp_path / "partial", tmp_path / "good"
    _fake_build(stale, other)
    _fake_build(partial, current, extensions=False)
    _fake_build(good, current)

    monkeypatch.setattr(sys, "path", [str(stale)])
    root, why = _compiled._matching_build(here)
    if root == here:  # this checkout holds an in-place build of itself
        pytest.skip("an in-place build of these sources is present")
    assert root is None and why == f"the compiled build in {stale} is of other sources"
    monkeypatch.setattr(sys, "path", [str(stale), str(partial)])
    assert _compiled._matching_build(here) == (None, f"the compiled build in {partial} is incomplete")
    monkeypatch.setattr(sys, "path", [str(stale), str(partial), str(good)])
    assert _compiled._matching_build(here) == (good, "")


def test_the_finder_answers_for_the_core_modules_only(tmp_path):
    pure = _compiled._CoreFinder(ROOT, None)
    spec = pure.find_spec("bench.machine.shadow")
    assert spec is not None and spec.origin == str(ROOT / "bench" / "machine" / "shadow.py")
    assert pure.find_spec("bench.cell") is None and pure.find_spec("json") is None
    _fake_build(tmp_path, {})
    built = _compiled._CoreFinder(ROOT, tmp_path).find_spec("bench.recording")
    assert built is not None and built.origin == str(tmp_path / "bench" / ("recording" + EXTENSION))


def test_the_environment_variable_forces_pure_python():
    done = _python(["-c", "from bench import _compiled; import bench.machine.shadow as s; "
                    "print(_compiled.state(), _compiled.active(), s.__file__)"], pure=True)
    assert done.returncode == 0, done.stderr
    state, _, rest = done.stdout.strip().partition(") ")
    assert state == f"pure Python ({_compiled.PURE_ENV} is set"
    assert rest == f"False {ROOT / 'bench' / 'machine' / 'shadow.py'}"


def test_the_compiled_modules_type_check_as_mypyc_needs():
    """mypyc refuses a module mypy reports anything on (a note included), and the install then
    falls back to pure Python without failing: this keeps the compiled core compiling."""
    api = pytest.importorskip("mypy.api")
    sources = [str(_compiled.source_path(ROOT, m).relative_to(ROOT)) for m in _compiled.COMPILED]
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        report, errors, status = api.run(["--no-incremental", "--cache-dir", os.devnull,
                                          *sources])
    finally:
        os.chdir(cwd)
    assert status == 0 and report.strip().startswith("Success"), report + errors


needs_compiled = pytest.mark.skipif(not _compiled.active(),
                                    reason=f"the compiled core is not in use: {_compiled.state()}")


@needs_compiled
def test_pure_python_passes_the_golden_differential_and_workload_tests():
    done = _python(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_core_golden.py",
                    "tests/test_policies_golden.py", "tests/test_kmap_golden.py",
                    "tests/test_conformance.py", "tests/test_shared_runs.py",
                    "tests/test_workloads.py", "tests/test_lackey.py"], pure=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


@needs_compiled
def test_compiled_and_pure_runs_give_the_same_records(tmp_path):
    args = ["-m", "bench", "run", "--quick", "--seeds", "2", "--jobs", "1", "--no-progress",
            "-w", "kscand", "-w", "kmap:pae=false", "-w", "linear-scan", "--json", "-"]
    docs = []
    for pure in (False, True):
        done = _python(args + ["--out", str(tmp_path / str(pure))], pure=pure)
        assert done.returncode == 0, done.stderr[-2000:]
        docs.append(json.loads(done.stdout))
    compiled_doc, pure_doc = docs
    assert compiled_doc["meta"]["volatile"]["host"]["simulator"].startswith("compiled")
    assert pure_doc["meta"]["volatile"]["host"]["simulator"].startswith("pure Python")
    assert len(compiled_doc["records"]) == 13 * 3 * 2
    assert compiled_doc["records"] == pure_doc["records"]
    assert compiled_doc["oracles"] == pure_doc["oracles"]
