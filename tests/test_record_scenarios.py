"""The scenarios' proofs (bench/record/scenarios.py) on the guest program's output, without QEMU:
a scenario that did not do what it claims is refused with one line, never recorded."""

from __future__ import annotations

import pytest

from bench.record import recorder
from bench.record.scenarios import SCENARIOS, ScenarioFailed, get

DEMAND = {"demand.pages": "4096", "demand.minflt": "4096", "demand.pgfault": "4102",
          "demand.thp_fault_alloc": "0"}
SHARED = {"shared.children": "8", "shared.children_ok": "8", "shared.smaps_seen": "8",
          "shared.pages": "256", "shared.minflt_min": "256", "shared.minflt_max": "256",
          "shared.rss_kb_min": "1024", "shared.shared_kb_min": "1024", "shared.pss_kb_max": "128",
          "shared.pgfault": "2142"}
MIXED = {**DEMAND, **SHARED, "fork.children": "8", "fork.children_ok": "8",
         "reclaim.pgscan": "14260", "reclaim.pgsteal": "6209", "reclaim.pswpout": "6209",
         "reclaim.pswpin": "4102"}


def proof(name, out):
    return get(name).proof({}, {}, out)


def test_every_scenario_is_offered():
    assert list(SCENARIOS) == ["reclaim", "fork-exit", "demand-paging", "shared-file", "mixed"]
    assert get("mixed").phases == ("demand-touch", "demand-unmap", "fork-setup", "fork-exit",
                                   "shared-setup", "shared-map", "shared-unmap", "reclaim-fill",
                                   "reclaim")


def test_proofs_hold_on_what_the_guest_printed():
    assert proof("demand-paging", DEMAND)["demand.minflt"] == 4096
    assert proof("shared-file", SHARED)["shared.shared_kb_min"] == 1024
    got = proof("mixed", MIXED)
    assert got["fork.children_ok"] == 8 and got["reclaim.pswpin"] == 4102


@pytest.mark.parametrize("name, out, change, words", [
    # transparent huge pages: far fewer faults than pages (what the first demand-paging did)
    ("demand-paging", DEMAND, {"demand.minflt": "1192"}, "one fault per 4 KiB page"),
    ("demand-paging", DEMAND, {"demand.thp_fault_alloc": "8"}, "one fault per 4 KiB page"),
    ("demand-paging", DEMAND, {"demand.minflt": None}, "one fault per 4 KiB page"),
    ("shared-file", SHARED, {"shared.shared_kb_min": "512"}, "shared"),  # a page with one pte
    ("shared-file", SHARED, {"shared.children_ok": "7"}, "did not all map"),
    ("shared-file", SHARED, {"shared.pss_kb_max": "1024"}, "did not all map"),
    ("shared-file", SHARED, {"shared.minflt_min": "255"}, "did not all map"),
    ("mixed", MIXED, {"reclaim.pswpin": "0"}, "no memory pressure"),
    ("mixed", MIXED, {"fork.children_ok": "7"}, "fork-exit children"),
    ("mixed", MIXED, {"shared.smaps_seen": "0"}, "shared-file"),
    ("mixed", MIXED, {"demand.pgfault": "12"}, "demand-paging"),
])
def test_a_proof_that_fails_is_one_line(name, out, change, words):
    bad = {k: v for k, v in {**out, **change}.items() if v is not None}
    with pytest.raises(ScenarioFailed) as err:
        proof(name, bad)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_the_header_refuses_a_failed_scenario_before_writing(tmp_path):
    """The recorder checks the proof while building the header, before any file is written."""
    class Run:
        sections = {"scenario.rc": "0", "vmstat-before": "pgfault 1\n", "vmstat-after": "pgfault 2\n",
                    "scenario": "".join(f"{k}={v}\n" for k, v in {**DEMAND,
                                                                   "demand.minflt": "1192"}.items())}
    with pytest.raises(ScenarioFailed, match="demand-paging"):
        recorder._header(get("demand-paging"), "686", None, None, Run(), True, tmp_path, tmp_path)
    assert list(tmp_path.iterdir()) == []
