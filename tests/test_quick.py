"""--quick / quick=true shrinks only the sizes not given: an explicit size wins and is labelled."""

from __future__ import annotations

from bench import experiment as exp
from bench.cell import build_run
from bench.registry import workload_params


def test_quick_sizes_apply_only_to_parameters_not_given():
    quick = workload_params("kscand", {"quick": True})
    assert (quick["highmem_mib"], quick["processes"]) == (8.0, 4)
    assert workload_params("kscand", {"quick": "true", "highmem_mib": "64"})["highmem_mib"] == 64
    assert workload_params("kmap", {"quick": True, "iterations": 999})["iterations"] == 999
    assert workload_params("kscand", {})["highmem_mib"] == 1024.0


def test_explicit_sizes_under_quick_give_different_guests_and_labels():
    e = exp.build(["always-emulate"], ["kscand:highmem_mib=32", "kscand:highmem_mib=64"],
                  quick=True, seeds=1)
    assert [w.label for w in e.workloads] == ["kscand[highmem_mib=32.0,quick=true]",
                                              "kscand[highmem_mib=64.0,quick=true]"]
    pages = [build_run(w.name, w.params, 0).sizes["pages"] for w in e.workloads]
    assert pages[0] * 2 == pages[1]
    assert all(w.params["processes"] == 4 for w in e.workloads)  # what the sizes line shows


def test_a_set_size_wins_over_quick():
    e = exp.build(["always-emulate"], ["linear-scan"], ["processes=6"], quick=True, seeds=1)
    (w,) = e.workloads
    assert w.params["processes"] == 6 and "processes=6" in w.label
    assert build_run(w.name, w.params, 0).sizes["processes"] == 6


def test_quick_replays_a_prefix_of_a_recording_and_an_explicit_events_wins():
    """A recorded guest's events=0 means the whole recording: quick takes the quick prefix for
    it (min(0, 20,000) would have replayed everything), and events given explicitly is kept."""
    from workloads.guest import QUICK_EVENTS

    assert workload_params("guest", {"recording": "fork-exit-686"})["events"] == 0
    assert workload_params("guest", {"recording": "fork-exit-686", "quick": True})["events"] \
        == QUICK_EVENTS == 20_000
    assert workload_params("guest", {"recording": "fork-exit-686", "quick": True,
                                     "events": 0})["events"] == 0
    e = exp.build(["always-emulate"], ["guest:fork-exit-686"], quick=True, seeds=1)
    (w,) = e.workloads
    assert w.params["events"] == QUICK_EVENTS and "quick=true" in w.label
