"""The command line as users drive it: verbs, bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _tiny_workload  # noqa: E402
from _harness_util import (ROOT, TINY_MAIN, bench, env, has_policies,  # noqa: E402
                           has_workloads)

from bench import costs, results  # noqa: E402
from bench.__main__ import main  # noqa: E402

TINY = ["-w", "tiny", "-p", "always-emulate", "-p", "always-unshadow", "--seeds", "2",
        "--no-progress", "--jobs", "1"]


@pytest.fixture
def tiny_charts(monkeypatch):
    """The test workloads registered."""
    _tiny_workload.patch(monkeypatch)


@pytest.fixture
def tiny(tiny_charts, monkeypatch):
    """The test workloads registered, and no charts drawn (they take seconds)."""
    import bench.plots

    monkeypatch.setattr(bench.plots, "write_charts", lambda doc, folder, jobs=1: [])


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    """One finished tiny run (as a subprocess), shared by the read-only verbs' tests."""
    out = tmp_path_factory.mktemp("tiny") / "out"
    proc = bench("run", *TINY, "-p", "flood-count" if has_policies("flood-count") else
                 "always-emulate:", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def run_main(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_shows_policies_workloads_profiles_with_parameters(tiny, capsys):
    rc, out, err = run_main(capsys, "list")
    assert rc == 0 and err == ""
    assert "always-emulate: emulate every write" in out
    assert "tiny: test-only" in out
    assert "pages: int, default 6 (>= 1, <= 512): user pages mapped" in out
    for name in costs.PROFILES:
        assert name in out
    assert f"{costs.DEFAULT_PROFILE} (default)" in out


BAD_INPUT = [
    (["-p", "no-such-policy"], ["no-such-policy", "always-emulate"]),
    (["-p", "always-emulat"], ["did you mean always-emulate"]),
    (["-p", "always-emulate:bogus"], ["malformed parameter", "key=value"]),
    (["-p", "always-emulate:x=1"], ["always-emulate takes no parameters"]),
    (["-w", "tinny"], ["did you mean tiny"]),
    (["-w", "tiny:pages=abc"], ["pages", "not an integer"]),
    (["-w", "tiny:pages=0"], ["pages", "below the minimum"]),
    (["-w", "tiny", "--set", "nosuch=1"], ["nosuch", "pages"]),
    (["-w", "tiny", "--set", "pages"], ["expected KEY=VALUE"]),
    (["-w", "tiny", "--set", "pae=maybe"], ["not a boolean"]),
    (["-w", "tiny", "--cost-profile", "pentium-5"], ["cost profile", "core2-penryn-2008"]),
    (["-w", "tiny", "--seeds", "0"], ["--seeds", "from 1 to"]),
    (["-w", "tiny", "--jobs", "x"], ["--jobs"]),
    (["-w", "tiny", "--no-such-option"], ["unrecognized arguments"]),
]


@pytest.mark.parametrize("argv,words", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny, capsys, tmp_path, argv, words):
    out = tmp_path / "out"
    try:
        rc = main(["run", "--out", str(out), "--no-progress"] + argv)
    except SystemExit as stop:  # argparse's own errors
        rc = stop.code
    assert rc == 2
    stdout, err = capsys.readouterr()
    assert stdout == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bench: error: ")
    for w in words:
        assert w in lines[0]
    assert not out.exists()


def test_unknown_policy_from_the_real_command_line(tmp_path):
    """The acceptance check verbatim: one line naming the problem and the valid names, exit 2,
    nothing written (run from an empty folder)."""
    proc = bench("run", "-p", "no-such-policy", "--quick", cwd=str(tmp_path), tiny=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "no-such-policy" in lines[0] and "always-emulate" in lines[0]
    assert os.listdir(tmp_path) == []


def test_json_dash_prints_only_the_document(tiny, capsys, tmp_path):
    rc, out, err = run_main(capsys, "run", *TINY, "--out", str(tmp_path / "o"), "--json", "-")
    assert rc == 0
    doc = results.loads(out)
    assert doc["complete"] and len(doc["records"]) == 4
    assert (tmp_path / "o" / "results.json").exists()


def _chart_files(folder) -> list[str]:
    return sorted(f for f in os.listdir(folder) if not f.startswith(".")) \
        if os.path.isdir(folder) else []


def test_json_dash_draws_no_charts_and_never_imports_matplotlib(tmp_path):
    """A run whose output is the document on stdout draws no chart: matplotlib is imported
    neither by the run nor by a forked worker (``-X importtime`` lists every process's imports
    on stderr). The charts a run drew of the very same results are kept and embedded in
    report.md; a run of other results removes them."""
    out = tmp_path / "o"

    def run(*extra: str, json_dash: bool = True) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-X", "importtime", TINY_MAIN, "run", *TINY, *extra,
               "--out", str(out)] + (["--json", "-"] if json_dash else [])
        proc = subprocess.run(cmd, cwd=ROOT, env=env(charts=True), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc

    def imported(proc: subprocess.CompletedProcess) -> set[str]:
        return {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}

    proc = run()
    assert results.loads(proc.stdout)["complete"]
    assert "bench.runner" in imported(proc)  # the listing works
    assert not {m for m in imported(proc) if m.split(".")[0] == "matplotlib"}
    assert _chart_files(out / "charts") == []
    assert "charts/" not in (out / "report.md").read_text()

    drawn = run(json_dash=False)
    assert "matplotlib" in imported(drawn)
    charts = _chart_files(out / "charts")
    assert "cycles-tiny.png" in charts
    proc = run()  # the same results: the charts drawn of them stay
    assert not {m for m in imported(proc) if m.split(".")[0] == "matplotlib"}
    assert _chart_files(out / "charts") == charts
    assert "charts/cycles-tiny" in (out / "report.md").read_text()
    run("--seeds", "3")  # other results: no chart of the old ones is left beside them
    assert _chart_files(out / "charts") == []
    assert "charts/" not in (out / "report.md").read_text()


def test_json_path_and_summary_table(tiny_charts, capsys, tmp_path):
    rc, out, err = run_main(capsys, "run", *TINY, "--out", str(tmp_path / "o"),
                            "--json", str(tmp_path / "doc.json"))
    assert rc == 0
    assert "tiny  (cost profile" in out
    header = [l for l in out.splitlines() if l.startswith("policy")][0]
    for col in ("exits", "pte writes emulated", "unshadows", "shadow pages rebuilt", "Mcycles",
                "overhead", "opt ratio"):
        assert col in header
    assert any(l.startswith("always-unshadow") for l in out.splitlines())
    assert results.load(str(tmp_path / "doc.json"))["records"]
    written = sorted(os.listdir(tmp_path / "o"))
    assert written == ["cells", "charts", "passes.csv", "pyperf.json", "report.md", "results.csv",
                       "results.json"]
    charts = os.listdir(tmp_path / "o" / "charts")
    assert "cycles-tiny.png" in charts and "cycles-tiny.svg" in charts
    assert "traps-tiny.png" in charts


def test_quick_sets_the_workload_parameter(tiny, capsys, tmp_path):
    rc, out, _ = run_main(capsys, "run", *TINY, "--quick", "--out", str(tmp_path), "--json", "-")
    doc = json.loads(out)
    assert rc == 0 and all(r["workload_params"]["quick"] is True for r in doc["records"])
    assert all(r["sizes"]["passes"] == 2 for r in doc["records"])
    assert all(r["workload_params"]["passes"] == 2 for r in doc["records"])
    assert all(r["workload_label"] == "tiny[quick=true]" for r in doc["records"])


@pytest.mark.parametrize("given", [["--set", "passes=3"], ["-w", "tiny:passes=3"]])
def test_quick_keeps_explicit_sizes_and_labels_them(tiny, capsys, tmp_path, given):
    argv = [a for a in TINY if a not in ("-w", "tiny")] if given[0] == "-w" else TINY
    rc, out, _ = run_main(capsys, "run", *argv, *given, "--quick", "--out", str(tmp_path),
                          "--json", "-")
    doc = json.loads(out)
    assert rc == 0 and all(r["sizes"]["passes"] == 3 for r in doc["records"])
    assert {r["workload_label"] for r in doc["records"]} == {"tiny[passes=3,quick=true]"}


def test_quick_does_not_mask_a_bad_or_contradicting_quick_value(tiny, capsys, tmp_path):
    rc, _, err = run_main(capsys, "run", *TINY, "--quick", "--set", "quick=maybe", "--out",
                          str(tmp_path / "a"))
    assert rc == 2 and "not a boolean" in err and not (tmp_path / "a").exists()
    rc, _, err = run_main(capsys, "run", *TINY, "--quick", "--set", "quick=false", "--out",
                          str(tmp_path / "b"))
    assert rc == 2 and "contradicts" in err and not (tmp_path / "b").exists()


def test_set_applies_to_workloads_that_take_it(tiny, capsys, tmp_path):
    rc, out, _ = run_main(capsys, "run", *TINY, "--set", "pages=3", "--out", str(tmp_path),
                          "--json", "-")
    doc = json.loads(out)
    assert rc == 0 and {r["sizes"]["pages"] for r in doc["records"]} == {3}
    assert {r["workload_label"] for r in doc["records"]} == {"tiny[pages=3]"}


def test_memory_estimate_refuses_and_force_overrides(tiny, capsys, tmp_path, monkeypatch):
    from bench import runner

    monkeypatch.setattr(runner, "available_memory", lambda: 1 << 20)
    rc, out, err = run_main(capsys, "run", *TINY, "--out", str(tmp_path / "o"))
    assert rc == 2 and "MiB" in err and "--force-memory" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    rc, out, err = run_main(capsys, "run", *TINY, "--out", str(tmp_path / "o"), "--force-memory")
    assert rc == 0


def test_from_reruns_and_reports_differences(tiny, capsys, tmp_path):
    rc, _, _ = run_main(capsys, "run", *TINY, "--out", str(tmp_path / "a"))
    assert rc == 0
    rc, out, _ = run_main(capsys, "run", "--from", str(tmp_path / "a"), "--out",
                          str(tmp_path / "b"), "--no-progress")
    assert rc == 0 and "all 4 records have identical counters" in out
    path = tmp_path / "a" / "results.json"
    doc = json.loads(path.read_text())
    doc["records"][1]["counters"]["exits"] += 1
    path.write_text(json.dumps(doc))
    rc, out, _ = run_main(capsys, "run", "--from", str(path), "--out", str(tmp_path / "c"),
                          "--no-progress")
    assert rc == 1 and "1 of 4 records differ" in out and "exits" in out
    rc, out, err = run_main(capsys, "run", "--from", str(path), "-p", "always-emulate")
    assert rc == 2 and "drop -p" in err


def test_compare_stat_reprice_plot(tiny_results, tmp_path):
    r = bench("compare", str(tiny_results))
    assert r.returncode == 0, r.stderr
    assert "paired by seed" in r.stdout and "win/tie/loss" in r.stdout
    r = bench("compare", str(tiny_results), "-p", "always-unshadow")
    assert "relative to always-unshadow" in r.stdout and "always-emulate" in r.stdout
    r = bench("compare", str(tiny_results), "-p", "nope")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    r = bench("compare", str(tiny_results), "--kvm-stat", "-p", "always-emulate", "--seed", "0")
    assert r.returncode == 0 and "Total Samples:" in r.stdout and "EXCEPTION_NMI" in r.stdout
    r = bench("stat", str(tiny_results), "-w", "tiny", "--seed", "1")
    assert r.returncode == 0 and r.stdout.count("Analyze events") == 3
    r = bench("reprice", str(tiny_results), "--cost-profile", "skylake-2015", "--json", "-")
    assert r.returncode == 0
    assert json.loads(r.stdout)["meta"]["cost_profile"]["name"] == "skylake-2015"
    r = bench("reprice", str(tiny_results), "--cost-profile", "nope")
    assert r.returncode == 2 and "skylake-2015" in r.stderr
    assert not (tiny_results / "charts").exists()  # the fixture's run drew none
    r = bench("plot", str(tiny_results / "results.json"), charts=True)
    assert r.returncode == 0, r.stderr
    for name in ("cycles-tiny", "traps-tiny", "opt-ratio"):
        for ext in ("png", "svg"):
            assert (tiny_results / "charts" / f"{name}.{ext}").stat().st_size > 1000
    assert "charts/cycles-tiny.png" in (tiny_results / "report.md").read_text()


@pytest.mark.parametrize("extra", [["-w", "tiny"], ["--seed", "0"], ["--ghz", "2.5"],
                                   ["-w", "tiny", "--seed", "1"]])
def test_compare_refuses_options_that_only_apply_with_kvm_stat(tiny_results, extra):
    r = bench("compare", str(tiny_results), *extra)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert "only apply with --kvm-stat" in r.stderr and extra[0] in r.stderr


def test_sweep_grid_and_toml(tmp_path):
    r = bench("sweep", "-w", "tiny", "-p", "always-emulate", "-p", "always-unshadow", "--grid",
              "pages=2,4", "--seeds", "2", "--jobs", "2", "--out", str(tmp_path / "s"),
              "--no-progress", charts=True)
    assert r.returncode == 0, r.stderr
    doc = results.load(str(tmp_path / "s"))
    assert doc["meta"]["experiment"]["grid"] == {"workload.pages": ["2", "4"]}
    assert sorted({r["workload_params"]["pages"] for r in doc["records"]}) == [2, 4]
    assert len(doc["records"]) == 8
    assert any(n.startswith("sweep-pages-") for n in os.listdir(tmp_path / "s" / "charts"))

    toml = tmp_path / "exp.toml"
    toml.write_text('policies = ["always-emulate"]\nworkloads = ["tiny"]\nseeds = 1\n'
                    '[set]\npasses = 2\n[grid]\npages = [1, 3]\n')
    r = bench("sweep", str(toml), "--out", str(tmp_path / "t"), "--no-progress")
    assert r.returncode == 0, r.stderr
    doc = results.load(str(tmp_path / "t"))
    assert [(x["workload_params"]["pages"], x["workload_params"]["passes"])
            for x in doc["records"]] == [(1, 2), (3, 2)]

    bad = tmp_path / "bad.toml"
    bad.write_text('seeds = 1\npolicies = ["always-emulate"\n')
    r = bench("sweep", str(bad), "--out", str(tmp_path / "u"))
    assert r.returncode == 2 and f"{bad}:2: malformed TOML" in r.stderr
    assert len(r.stderr.splitlines()) == 1 and not (tmp_path / "u").exists()
    r = bench("sweep", "-w", "tiny", "--grid", "nosuch=1,2", "--out", str(tmp_path / "v"))
    assert r.returncode == 2 and "nosuch" in r.stderr and not (tmp_path / "v").exists()
    r = bench("sweep", "-w", "tiny", "--out", str(tmp_path / "v"))
    assert r.returncode == 2 and "needs a grid" in r.stderr


@pytest.mark.skipif(not (has_workloads("kscand") and has_policies("flood-count")),
                    reason="kscand or flood-count not written yet")
def test_real_quick_run_json_to_stdout(tmp_path):
    """The acceptance check verbatim, on the real workload."""
    r = bench("run", "--quick", "-p", "flood-count", "-w", "kscand", "--json", "-",
              cwd=str(tmp_path), tiny=False)
    assert r.returncode == 0, r.stderr
    doc = results.loads(r.stdout)
    assert {x["policy"] for x in doc["records"]} == {"flood-count"}
    assert len(doc["records"]) == 3 and all(x["cycles"] > 0 for x in doc["records"])
    assert (tmp_path / "results" / "latest" / "results.json").exists()


@pytest.mark.skipif(not has_workloads("kscand", "linear-scan", "kmap"),
                    reason="default workloads not written yet")
def test_default_workloads_validate():
    """The default comparison's workload list is valid for the real workloads."""
    from bench import experiment

    exp = experiment.build(["always-emulate"], None, [], True, 1)
    labels = [w.label for w in exp.workloads]
    assert labels[:2] == ["kscand[quick=true]", "linear-scan[quick=true]"] and len(labels) == 12
    assert len(set(labels)) == 12
    assert [w.params["recording"] for w in exp.workloads if w.name == "guest"] == [
        "reclaim-686-pae", "reclaim-686", "fork-exit-686-pae", "fork-exit-686"]


def test_charts_drawn_in_parallel_are_the_same_files(tiny_results, tmp_path):
    import bench.plots

    doc = results.load(str(tiny_results))
    one = bench.plots.write_charts(doc, str(tmp_path / "one"), jobs=1)
    two = bench.plots.write_charts(doc, str(tmp_path / "two"), jobs=2)
    assert [os.path.basename(p) for p in one] == [os.path.basename(p) for p in two]
    assert len(one) >= 4
    for a, b in zip(one, two):
        assert open(a, "rb").read() == open(b, "rb").read(), a


def test_unknown_names_suggest_only_close_ones():
    from bench.errors import unknown_name
    from bench.registry import policies

    names = list(policies())
    far = str(unknown_name("policy", "no-such", names))
    assert "did you mean" not in far and "valid: accessed-clear" in far
    assert "did you mean flood-count? " in str(unknown_name("policy", "flod-count", names))
    assert "did you mean xen-batch? " in str(unknown_name("policy", "xen-bach", names))


def test_json_on_list_compare_and_stat(tiny_results):
    r = bench("list", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["policies"]["always-emulate"]["summary"]
    assert data["workloads"]["tiny"]["params"]["pages"]["maximum"] == 512
    assert costs.DEFAULT_PROFILE in data["cost_profiles"]
    r = bench("compare", str(tiny_results), "--json")
    assert r.returncode == 0, r.stderr
    comparison = json.loads(r.stdout)
    assert comparison["baseline"] == "always-emulate" and comparison["comparisons"]
    assert {c["method"] for c in comparison["comparisons"]} == {"t"}
    r = bench("stat", str(tiny_results), "-p", "always-emulate", "--seed", "0", "--json")
    assert r.returncode == 0, r.stderr
    (table,) = json.loads(r.stdout)
    assert table["policy"] == "always-emulate" and table["rows"][0]["reason"] == "EXCEPTION_NMI"


def test_version_and_help_of_every_verb():
    r = bench("--version", tiny=False)
    assert r.returncode == 0 and r.stdout.startswith("shadowbench ")
    assert "git commit" in r.stdout
    for verb in ("run", "sweep", "list", "plot", "compare", "stat", "reprice"):
        r = bench(verb, "--help", tiny=False)
        assert r.returncode == 0 and "examples:" in r.stdout and f"python -m bench {verb}" in r.stdout
    r = bench("run", "--seed", "3", tiny=False)
    assert r.returncode == 2 and "see python -m bench --help" in r.stderr
    assert "bench bench" not in r.stderr
