"""replay: run a saved operation trace (bench.trace format, docs/trace-format.md).

The trace carries the guest's initial memory, paging mode, vCPUs and cr3s, and the operations;
it can be written by ``bench.trace.write_trace`` or produced by another tool.
"""

from __future__ import annotations

import random

from mypy_extensions import mypyc_attr

from bench.errors import BenchError
from bench.params import Param
from bench.trace import check_trace, read_trace
from bench.workload import GuestRun, Workload


def _trace_path(path: str) -> str | None:
    """The trace file whose contents enter the cell cache's key (Param.input_file)."""
    return path or None


@mypyc_attr(allow_interpreted_subclasses=True)
class Replay(Workload):
    name = "replay"
    summary = "replay a saved operation trace (guest memory, cr3s and operations from the file)"
    params = {
        "path": Param(str, "", "the trace file to replay (required)", input_file=_trace_path),
        "quick": Param(bool, False, "accepted for uniformity; a trace has its own size"),
    }

    path: str
    quick: bool

    def build(self, rng: random.Random) -> GuestRun:
        if not self.path:
            raise BenchError("workload replay needs path=FILE (a shadowbench trace)")
        guest, cr3s, ops = read_trace(self.path)
        tables = len(guest.mem.tables)
        return GuestRun(guest, cr3s, ops, {"page_tables": tables})  # type: ignore[arg-type]

    def check_inputs(self) -> None:
        """Parse the whole trace now (its operations are read lazily during the run)."""
        if not self.path:
            raise BenchError("workload replay needs path=FILE (a shadowbench trace)")
        check_trace(self.path)


WORKLOAD = Replay
