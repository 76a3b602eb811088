"""Every parser either parses or raises BenchError, for random and for mutated valid input.

Parsers: ``NAME:k=v`` specs (bench.params.parse_spec, and whole experiments through
bench.experiment.build), ``--set`` (parse_assignment), ``--grid`` (parse_grid), TOML experiment
files, results files (and what the verbs do with a file that validated), the operation trace
(bench.trace) and valgrind lackey traces (workloads._users.read_lackey), when they exist.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _tiny_workload  # noqa: E402

from bench import costs, experiment, results, stats  # noqa: E402
from bench.errors import BenchError  # noqa: E402
from bench.params import parse_assignment, parse_spec  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
ALPHABET = "abcdefgkmnpqrstuwxyz-_:=,.0123456789 \t[]{}\"'#\n\\x"
text = st.text(alphabet=st.sampled_from(list(ALPHABET)) | st.characters(), max_size=80)


@st.composite
def mutated(draw, seed: str) -> str:
    """``seed`` with slices deleted, replaced or duplicated, or characters inserted."""
    s = seed
    for _ in range(draw(st.integers(1, 4))):
        n = len(s)
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, min(n, i + 12)))
        op = draw(st.sampled_from(["delete", "replace", "duplicate", "insert"]))
        if op == "delete":
            s = s[:i] + s[j:]
        elif op == "replace":
            s = s[:i] + draw(text) + s[j:]
        elif op == "duplicate":
            s = s[:j] + s[i:j] + s[j:]
        else:
            s = s[:i] + draw(st.sampled_from(list(ALPHABET))) + s[i:]
    return s


def check_parses_or_bench_error(fn, *args) -> None:
    try:
        fn(*args)
    except BenchError as err:
        assert str(err)


@pytest.fixture
def tiny(monkeypatch):
    _tiny_workload.patch(monkeypatch)


@FUZZ
@given(st.one_of(text, mutated("flood-count:threshold=3,window=2"), mutated("tiny:pages=4")))
def test_spec_and_assignment(line):
    check_parses_or_bench_error(parse_spec, line)
    check_parses_or_bench_error(parse_assignment, line)
    check_parses_or_bench_error(experiment.parse_grid, [line])


@FUZZ
@given(st.lists(st.one_of(text, mutated("always-emulate"), mutated("tiny:pages=3,pae=true")),
                min_size=1, max_size=2),
       st.lists(st.one_of(text, mutated("pages=2"), mutated("passes=0x3")), max_size=2),
       st.one_of(st.none(), mutated("pages=1,2")))
def test_whole_experiments_from_the_command_line(tiny, specs, sets, grid):
    def build():
        g = experiment.parse_grid([grid]) if grid is not None else None
        experiment.build(["always-emulate"], specs, sets, False, 1, costs.DEFAULT_PROFILE, g)
        experiment.build(specs, ["tiny"], sets, False, 1)

    check_parses_or_bench_error(build)


TOML_SEED = ('policies = ["always-emulate", "always-unshadow"]\nworkloads = ["tiny"]\n'
             'seeds = 2\ncost_profile = "skylake-2015"\nquick = true\n'
             '[set]\npages = 3\n[grid]\npasses = [1, 2]\n')


@FUZZ
@given(st.one_of(text, mutated(TOML_SEED)))
def test_toml_experiments(tiny, raw):
    def parse():
        data = experiment.parse_toml(raw, "exp.toml")
        grid = data.get("grid")
        experiment.build(data.get("policies"), data.get("workloads"), [], data.get("quick", False),
                         data.get("seeds", 1), data.get("cost_profile", costs.DEFAULT_PROFILE),
                         grid, set_values=data.get("set"))

    try:
        parse()
    except BenchError as err:
        assert str(err).startswith("exp.toml") or "malformed TOML" not in str(err)


@pytest.fixture(scope="module")
def results_text(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    _tiny_workload.patch(mp)
    try:
        from bench import runner

        exp = experiment.build(["always-emulate", "always-unshadow"], ["tiny:passes=2"], [], False, 2)
        out = runner.execute(exp, str(tmp_path_factory.mktemp("fz")), 1)
        doc = results.make_document(exp, out.cells, out.oracles, True, {})
    finally:
        mp.undo()
    return json.dumps(doc)


def use(text_: str) -> None:
    """Load a results file and do what the verbs do with it (nothing may crash on a file that
    passed validation)."""
    doc = results.loads(text_)
    stats.summary_text(doc)
    results.csv_text(doc)
    if len({r["policy_label"] for r in doc["records"]}) > 1:
        stats.compare_text(doc, None)
    profile = results.profile_of(doc)
    for r in doc["records"][:2]:
        stats.kvm_stat_text(r, profile, 3.0)
    results.reprice(doc, costs.profile("skylake-2015"))


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=5),
                           lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=6)


@FUZZ
@given(st.data())
def test_results_files(results_text, data):
    choice = data.draw(st.sampled_from(["text", "mutate-text", "mutate-value"]))
    if choice == "text":
        candidate = data.draw(text)
    elif choice == "mutate-text":
        candidate = data.draw(mutated(results_text[:3000])) + results_text[3000:]
    else:
        doc = json.loads(results_text)
        node, key = doc, None
        for _ in range(data.draw(st.integers(1, 5))):
            children = (list(node.items()) if isinstance(node, dict) else list(enumerate(node))
                        if isinstance(node, list) else [])
            if not children:
                break
            key, child = data.draw(st.sampled_from(children))
            if not isinstance(child, (dict, list)):
                break
            _parent, node = node, child
        target = node if isinstance(node, (dict, list)) and key is not None else doc
        if isinstance(target, dict) and target:
            k = data.draw(st.sampled_from(sorted(target)))
            if data.draw(st.booleans()):
                target[k] = data.draw(JSON_VALUES)
            else:
                del target[k]
        elif isinstance(target, list) and target:
            target[data.draw(st.integers(0, len(target) - 1))] = data.draw(JSON_VALUES)
        candidate = json.dumps(doc)
    check_parses_or_bench_error(use, candidate)


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


trace_mod = _optional("bench.trace")
TRACE_SEED = ("shadowbench-trace 1\nmode nonpae\ncpus 1\ntable 0x400\nword 0x400000 0x1003\n"
              "cr3 0 0x400000\nops\n0 load 0x1000 4\n0 store 0x1000 4 0x5 mov\n0 btr 0xc0400000 5\n"
              "0 invlpg 0x1000\n0 cr3 0x400000\n0 compute 100\n0 mark 1\n")


@pytest.mark.skipif(trace_mod is None, reason="bench/trace.py not written yet")
@FUZZ
@given(st.one_of(text, mutated(TRACE_SEED)))
def test_operation_traces(raw):
    check_parses_or_bench_error(trace_mod.parse_op, raw.split("\n")[-1], "t:1", 2)
    with tempfile.NamedTemporaryFile("w", suffix=".trace", delete=False, encoding="utf-8",
                                     errors="surrogatepass") as handle:
        handle.write(raw)
    try:
        def read():
            _, _, ops = trace_mod.read_trace(handle.name)
            for _ in ops:
                pass

        try:
            read()
        except UnicodeDecodeError:
            pytest.fail("a non-UTF-8 trace must be a BenchError")
        except BenchError:
            pass
    finally:
        os.unlink(handle.name)


users_mod = _optional("workloads._users")
LACKEY_SEED = ("==1234== Lackey, an example Valgrind tool\nI  0023C790,2\n L 1ffefffa40,8\n"
               " S 1ffefffa48,4\n M 0804a01c,4\nI  0023C792,5\n==1234== \n")


@pytest.mark.skipif(users_mod is None or not hasattr(users_mod, "read_lackey"),
                    reason="the lackey reader is not written yet")
@FUZZ
@given(st.one_of(text, mutated(LACKEY_SEED)))
def test_lackey_traces(raw):
    with tempfile.NamedTemporaryFile("w", suffix=".lackey", delete=False, encoding="utf-8",
                                     errors="surrogatepass") as handle:
        handle.write(raw)
    try:
        check_parses_or_bench_error(users_mod.read_lackey, handle.name)
    finally:
        os.unlink(handle.name)
