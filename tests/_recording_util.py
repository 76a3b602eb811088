"""What the golden tests of shipped recordings share: the recordings folder and a pc -> kernel
symbol lookup from a recording's header."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from pathlib import Path

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
