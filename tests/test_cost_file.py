"""Cost profiles from TOML files: loaded, validated like any input, priced and keyed by number."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _tiny_workload  # noqa: E402

from bench import cost_file, costs  # noqa: E402
from bench import experiment as exp  # noqa: E402
from bench.__main__ import main  # noqa: E402
from bench.errors import BenchError  # noqa: E402

TINY = ["-w", "tiny", "-p", "always-emulate", "--seeds", "1", "--jobs", "1", "--no-progress"]


def _profile_text(name="my-cpu", skip=(), **numbers) -> str:
    base = costs.profile(costs.DEFAULT_PROFILE).as_dict()
    lines = [f'name = "{name}"', 'cpu = "a measured machine"', 'estimates = ["hidden_fault"]']
    for key in cost_file.NUMBERS:
        if key not in skip:
            lines.append(f"{key} = {numbers.get(key, base[key])}")
    lines += ["[sources]", 'exit_roundtrip = "measured here"']
    return "\n".join(lines) + "\n"


def test_a_profile_file_prices_a_run_and_a_reprice(tmp_path, monkeypatch, capsys):
    _tiny_workload.patch(monkeypatch)
    path = tmp_path / "mine.toml"
    path.write_text(_profile_text(exit_roundtrip=1))
    out = tmp_path / "out"
    assert main(["run", *TINY, "--cost-profile", str(path), "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["cost_profile"]["name"] == "my-cpu"
    assert doc["meta"]["cost_profile"]["exit_roundtrip"] == 1
    assert doc["meta"]["cost_profile"]["sources"] == {"exit_roundtrip": "measured here"}
    capsys.readouterr()
    assert main(["reprice", str(out), "--cost-profile", costs.DEFAULT_PROFILE, "--json", "-"]) == 0
    repriced = json.loads(capsys.readouterr().out)
    assert repriced["meta"]["repriced_from"] == "my-cpu"
    assert repriced["records"][0]["cycles"] > doc["records"][0]["cycles"]


def test_a_policy_deciding_by_a_profile_file_is_keyed_by_its_numbers(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(_profile_text(exit_roundtrip=500))
    cell = exp.build(["ski-rental"], ["kmap:quick=true"], seeds=1, cost_profile=str(path)).cells()[0]
    assert cell.policy.params["cost_profile"] == str(path)
    before = cell.digest()
    path.write_text(_profile_text(exit_roundtrip=501))
    os.utime(path, ns=(1, 1))  # a new modification time
    again = exp.build(["ski-rental"], ["kmap:quick=true"], seeds=1, cost_profile=str(path))
    assert again.cells()[0].digest() != before


@pytest.mark.parametrize("text,words", [
    (_profile_text(skip=("exit_roundtrip",)), ["missing exit_roundtrip"]),
    (_profile_text().replace("[sources]", "exit_rountrip = 3\n[sources]"),
     ["did you mean exit_roundtrip"]),
    (_profile_text() + "exit_rountrip = 'x'\n", ["[sources]", "did you mean exit_roundtrip"]),
    (_profile_text(exit_roundtrip=-1), ["exit_roundtrip", "from 0 to"]),
    (_profile_text(exit_roundtrip=10**12), ["exit_roundtrip", "from 0 to"]),
    (_profile_text(exit_roundtrip='"fast"'), ["exit_roundtrip", "whole number"]),
    (_profile_text(name=costs.DEFAULT_PROFILE), ["built-in"]),
    ("name = \n", ["malformed TOML"]),
    (_profile_text().replace('estimates = ["hidden_fault"]', 'estimates = ["nope"]'),
     ["estimates", "nope"]),
])
def test_a_bad_profile_file_is_one_line_before_anything_is_written(
        text, words, tmp_path, monkeypatch, capsys):
    _tiny_workload.patch(monkeypatch)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["run", *TINY, "--cost-profile", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(path) in err[0]
    for word in words:
        assert word in err[0]
    assert not out.exists()


def test_an_absent_profile_file():
    with pytest.raises(BenchError, match="cannot read cost profile file"):
        costs.profile("/nonexistent/x.toml")
