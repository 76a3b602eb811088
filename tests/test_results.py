"""results.json (schema, validation, versions), its CSV and pyperf exports, re-pricing, statistics."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _tiny_workload  # noqa: E402

from bench import costs, experiment, results, runner, stats  # noqa: E402
from bench.errors import BenchError  # noqa: E402
from bench.machine.counters import exits_by_reason  # noqa: E402


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    _tiny_workload.patch(mp)
    try:
        exp = experiment.build(["always-emulate", "always-unshadow"], ["tiny", "tiny:pae=true"],
                               [], False, 3)
        out = str(tmp_path_factory.mktemp("res"))
        outcome = runner.execute(exp, out, jobs=1)
        d = results.make_document(exp, outcome.cells, outcome.oracles, True,
                                  {"started": results.now()})
    finally:
        mp.undo()
    return json.loads(results.dumps(d))


def test_document_has_provenance_and_one_record_per_cell(doc):
    assert doc["schema_version"] == results.SCHEMA_VERSION and doc["complete"] is True
    meta = doc["meta"]
    import bench

    assert meta["project_version"] == bench.__version__
    assert costs.profile_from_dict(meta["cost_profile"]) == costs.profile(costs.DEFAULT_PROFILE)
    assert meta["seeds"] == [0, 1, 2] and meta["cells_expected"] == meta["cells_done"] == 12
    assert "git_commit" in meta and set(meta["volatile"]) == {"started"}
    assert [p["name"] for p in meta["experiment"]["policies"]] == ["always-emulate",
                                                                   "always-unshadow"]
    for r in doc["records"]:
        profile = costs.profile(costs.DEFAULT_PROFILE)
        priced = profile.price(r["counters"])
        assert r["cycles"] == priced["cycles"] > r["native_cycles"] == priced["native_cycles"] > 0
        assert r["cycles_by_cause"] == priced["cycles_by_cause"]
        assert r["exits_by_reason"] == exits_by_reason(r["counters"])
        assert r["overhead"] == pytest.approx(r["cycles"] / r["native_cycles"])
        assert r["guest_ops"] > 0 and r["sizes"]["pages"] == 6 and r["sizes"]["passes"] == 4
        assert [m["phase"] for m in r["marks"]] == [0, 1, 2, 3]
        assert r["marks"][-1]["counters"]["exits"] == r["counters"]["exits"]
        assert r["oracle"] in doc["oracles"] and r["opt_ratio"] > 0


def test_validation_accepts_its_own_output_and_refuses_other_versions(doc, tmp_path):
    assert results.loads(json.dumps(doc)) == doc
    old = dict(doc, schema_version=99)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(old))
    with pytest.raises(BenchError) as err:
        results.load(str(path))
    msg = str(err.value)
    assert "version 99" in msg and f"reads version {results.SCHEMA_VERSION}" in msg
    assert str(path) in msg and "\n" not in msg
    for broken in ("", "[]", "{}", json.dumps(dict(doc, records=[{"cell": 1}]))):
        with pytest.raises(BenchError):
            results.loads(broken)


def test_csv_flattens_every_record(doc):
    rows = list(csv.DictReader(io.StringIO(results.csv_text(doc))))
    assert len(rows) == len(doc["records"])
    for row, r in zip(rows, doc["records"]):
        assert row["policy"] == r["policy"] and int(row["seed"]) == r["seed"]
        assert int(row["cycles"]) == r["cycles"]
        assert int(row["counter.exits"]) == r["counters"]["exits"]
        assert int(row["exits.EXCEPTION_NMI"]) == r["exits_by_reason"].get("EXCEPTION_NMI", 0)
        assert int(row["cycles.emulated_pte_writes"]) == r["cycles_by_cause"]["emulated_pte_writes"]
        assert row["workload_param.pae"] in ("true", "false")
        assert row["cell"] == r["cell"] and row["cost_profile"] == doc["meta"]["cost_profile"]["name"]
        assert row["project_version"] == doc["meta"]["project_version"]
        assert row["git_commit"] == (doc["meta"]["git_commit"] or "")


def test_passes_csv_is_long_format_of_the_marks(doc):
    rows = list(csv.DictReader(io.StringIO(results.passes_csv_text(doc))))
    expected = [(r["cell"], m["phase"], k, v) for r in doc["records"] for m in r["marks"]
                for k, v in sorted(m["counters"].items())]
    assert expected and [(x["cell"], int(x["phase"]), x["counter"], int(x["value"]))
                         for x in rows] == expected
    assert {x["cost_profile"] for x in rows} == {doc["meta"]["cost_profile"]["name"]}


def test_pyperf_export_works_with_pyperf_tools(doc, tmp_path):
    import pyperf

    a, b = str(tmp_path / "a.json"), str(tmp_path / "b.json")
    assert results.write_pyperf(doc, a)
    results.write_pyperf(results.reprice(doc, costs.profile("skylake-2015")), b)
    suite = pyperf.BenchmarkSuite.load(a)
    names = suite.get_benchmark_names()
    assert names == ["tiny[pae=false]/always-emulate", "tiny[pae=false]/always-unshadow",
                     "tiny[pae=true]/always-emulate", "tiny[pae=true]/always-unshadow"]
    bench0 = suite.get_benchmark(names[0])
    assert bench0.get_unit() == "integer" and bench0.get_nrun() == 3
    assert list(bench0.get_values()) == [r["cycles"] for r in doc["records"][:3]]
    run0 = bench0.get_runs()[0]
    assert run0.get_metadata()["shadowbench_seed"] == 0
    assert run0.get_metadata()["duration"] == pytest.approx(
        doc["records"][0]["cycles"] / (results.PYPERF_GHZ * 1e9))
    for cmd in (["stats", a], ["compare_to", a, b, "--table"], ["show", a]):
        proc = subprocess.run([sys.executable, "-m", "pyperf", *cmd], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert " day" not in proc.stdout  # the total duration is simulated time, not cycles
    assert "tiny[pae=true]/always-unshadow" in proc.stdout


def test_reprice_changes_only_prices_and_is_fast(doc):
    profile = costs.profile("p4-vtx-2006")
    new = results.reprice(doc, profile)
    assert new["meta"]["cost_profile"]["name"] == "p4-vtx-2006"
    assert new["meta"]["repriced_from"] == costs.DEFAULT_PROFILE
    for a, b in zip(doc["records"], new["records"]):
        assert a["counters"] == b["counters"] and a["marks"] == b["marks"]
        assert b["cycles"] == profile.price(a["counters"])["cycles"] != a["cycles"]
        assert (a["opt_ratio"] is None) == (b["opt_ratio"] is None)
    back = results.reprice(new, costs.profile(costs.DEFAULT_PROFILE))
    assert [r["cycles"] for r in back["records"]] == [r["cycles"] for r in doc["records"]]
    assert back["meta"]["repriced_from"] == costs.DEFAULT_PROFILE
    big = copy.deepcopy(doc)
    big["records"] = [copy.deepcopy(r) for _ in range(9) for r in doc["records"]][:100]
    start = time.perf_counter()
    results.reprice(big, profile)
    assert time.perf_counter() - start < 1.0


def _rec(policy, seed, cycles):
    return {"workload_label": "w", "policy_label": policy, "policy": policy, "seed": seed,
            "cycles": cycles}


def test_paired_comparison_counts_and_interval():
    records = [_rec("base", s, 100) for s in range(4)] + [
        _rec("p", 0, 50), _rec("p", 1, 100), _rec("p", 2, 200), _rec("p", 3, 80)]
    (c,) = stats.compare(records, "base")
    assert (c.wins, c.ties, c.losses, c.seeds) == (2, 1, 1, 4)
    assert c.ratio == pytest.approx((0.5 * 1 * 2 * 0.8) ** 0.25)
    assert c.low <= c.ratio <= c.high
    assert stats.compare(records, "base") == [c]  # the bootstrap repeats (random.Random(0))
    assert stats.resolve_baseline(records, None) == "base"
    with pytest.raises(BenchError, match="did you mean base"):
        stats.resolve_baseline(records, "bsae")


def test_kvm_stat_table_has_perf_layout(doc):
    text = stats.kvm_stat_text(doc["records"][0], costs.profile(costs.DEFAULT_PROFILE), 3.0)
    row = re.compile(r"^ {0,20}\S+ +\d+ +\d+\.\d\d% +\d+\.\d\d% +\d+\.\d\dus +\d+\.\d\dus "
                     r"+\d+\.\d\dus \( \+- *\d+\.\d\d% \)$")
    rows = [line for line in text.splitlines() if row.match(line)]
    assert rows and rows[0].split()[0] == "EXCEPTION_NMI"
    samples = sum(int(line.split()[1]) for line in rows)
    assert samples == doc["records"][0]["counters"]["exits"]
    assert f"Total Samples:{samples}, Total events handled time:" in text
    assert sum(float(line.split()[2].rstrip("%")) for line in rows) == pytest.approx(100, abs=0.05)


def test_an_installed_copy_reports_the_commit_stamped_at_build(tmp_path, monkeypatch):
    info = tmp_path / "_build_info.json"
    info.write_text('{"git_commit": "0123abcd"}\n')
    monkeypatch.setattr(results, "BUILD_INFO", str(info))
    assert results.git_commit() == "0123abcd"
    monkeypatch.setattr(results, "BUILD_INFO", str(tmp_path / "absent.json"))
    assert results.git_commit() != "0123abcd"  # a checkout asks git
