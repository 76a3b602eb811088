"""The cyclic garbage collector is paused while a guest run is simulated (bench.cell.gc_paused)
and every simulation's cycles (shadow pages and their parents) are freed when it ends."""

from __future__ import annotations

import gc

import pytest

import bench.cell as cell
from bench.machine.shadow import ShadowMachine


def test_gc_paused_restores_the_previous_state_even_on_an_exception():
    assert gc.isenabled()
    with cell.gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with cell.gc_paused():
            raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with cell.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # a caller that turned it off keeps it off
    finally:
        gc.enable()


def _live_shadow_machines() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, ShadowMachine))


def _gc_state_at_calls(monkeypatch, owner, name: str) -> list[bool]:
    """Wrap ``owner.name``; the returned list gets the collector's state at each call."""
    seen: list[bool] = []
    original = getattr(owner, name)

    def wrapped(*args):
        seen.append(gc.isenabled())
        return original(*args)

    monkeypatch.setattr(owner, name, wrapped)
    return seen


def test_simulations_run_with_the_gc_off_and_leave_no_shadow_state(monkeypatch):
    """The Python executors (the native core keeps its shadow state in C: it is switched off
    here, and checked below)."""
    from bench import core

    monkeypatch.setattr(core, "replay", lambda *args: False)
    monkeypatch.setattr(core, "native_execution", lambda *args: None)
    made = _gc_state_at_calls(monkeypatch, cell, "machine_for")
    gc.collect()
    before = _live_shadow_machines()
    alive = []
    for i, result in cell.run_cells(["flood-count", "always-emulate", "per-page-flood"],
                                    "kscand", {"quick": True}, 0, record_oracle=True):
        assert gc.isenabled()  # between simulations the collector is back on
        alive.append(_live_shadow_machines() - before)
    assert made == [False, False, False]  # every replay's machine made with the GC paused
    assert alive == [0, 0, 0, 0]  # each simulation's machine (and shadow pages) already freed
    assert gc.isenabled()
    result = cell.run_cell("flood-count", "kscand", {"quick": True}, 1)  # a generated run
    assert result.guest_ops > 0 and gc.isenabled() and _live_shadow_machines() == before


def test_native_replays_run_with_the_gc_off(monkeypatch):
    from bench import core

    if not core.available():
        pytest.skip(f"the native core is {core.state()}")
    seen = _gc_state_at_calls(monkeypatch, core, "replay")
    for _ in cell.run_cells(["flood-count", "always-emulate"], "kscand", {"quick": True}, 0):
        assert gc.isenabled()
    assert seen == [False, False]


def test_a_full_collection_follows_only_a_python_executor(monkeypatch):
    """The collection ending a paused block is a full one when the block made a Python executor
    (its cycles reach an older generation through the policy); after the native core's runs,
    which make none, the youngest generation only."""
    from bench import core

    if not core.available():
        pytest.skip(f"the native core is {core.state()}")
    generations = []
    real = gc.collect
    monkeypatch.setattr(gc, "collect", lambda generation=2: generations.append(generation)
                        or real(generation))
    for _ in cell.run_cells(["flood-count", "always-emulate"], "kscand", {"quick": True}, 0):
        pass
    assert generations and set(generations) == {0}
    generations.clear()
    monkeypatch.setattr(core, "replay", lambda *args: False)
    for _ in cell.run_cells(["flood-count", "always-emulate"], "kscand", {"quick": True}, 0):
        pass
    assert generations.count(2) == 2  # the two Python replays
