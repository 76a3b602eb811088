"""What the golden tests of shipped recordings share: the recordings folder and a pc -> kernel
symbol lookup from a recording's header."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.record import format as F

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"


def symbol_lookup(rec: F.Recording) -> Callable[[int], str]:
    """The kernel function a pc falls in (the header's sorted symbol table), "?" below the first."""
    syms = rec.header["symbols"]
    addrs = [a for a, _ in syms]

    def sym(pc: int) -> str:
        i = bisect.bisect_right(addrs, pc) - 1
        return syms[i][1] if i >= 0 else "?"
    return sym


def released_after_module(cached) -> Callable:
    """An autouse module fixture that clears the ``functools`` cache ``cached`` when the module's
    tests are done: millions of live Event objects would make every later full garbage
    collection (one per simulation, bench.cell.gc_paused) cost about a second, which had slowed
    the rest of the suite by minutes."""

    @pytest.fixture(autouse=True, scope="module")
    def _release():
        yield
        cached.cache_clear()

    return _release
