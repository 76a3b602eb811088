"""Where a run's cells are computed: the local process pool (the default) or a Dask cluster.

An executor takes *tasks* (the cells of one guest run, as ``bench.runner.compute_group``
items) and gives back, for each, the stored documents or the exception it raised. It never
decides which cells to compute: bench.runner hands it at most ``slots()`` tasks at a time
(bounded in-flight work) and writes, claims and counts the cells itself, so every executor
computes the same cells through the same per-cell cache and the results are byte-identical
whatever runs them (docs/cli.md, "Sweeps beyond one machine").

- ``local.Inline``: one process, the cells computed in the run's own process (``--jobs 1``);
- ``local.Pool``: forked worker processes on this machine (``--jobs N``);
- ``dask.DaskExecutor``: a Dask distributed cluster, either one started here
  (``--dask local[:N]``, a LocalCluster) or a running scheduler (``--scheduler tcp://HOST:PORT``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bench.errors import BenchError

Items = list[tuple[dict[str, Any], str]]
"""A task: (cell key, digest) pairs of one guest run, as bench.runner.compute_group takes."""
Done = Callable[[int, dict[str, Any]], None]
Result = tuple[int, "list[dict[str, Any]] | BaseException"]
"""A finished task: its token and its documents (in item order) or the exception it raised."""

MAX_WORKERS = 1024
DASK_MISSING = ("--dask and --scheduler need the optional dask extra: pip install "
                "'shadowbench[dask]' (or pip install '.[dask]' in a checkout)")


class Executor(Protocol):
    """What bench.runner drives."""

    description: str
    """For meta.volatile.executor: what computed the cells (never part of the results)."""

    def slots(self) -> int:
        """How many tasks may be in flight at once."""

    def submit(self, token: int, items: Items, cells_dir: str, done: Done | None) -> None:
        """Start a task; ``done(i, doc)`` may be called as each item is stored (in this
        process only: Inline calls it, the others leave the caller to look for stored cells)."""

    def finished(self, timeout: float) -> list[Result]:
        """The tasks that finished since the last call, waiting at most ``timeout`` seconds."""

    def close(self) -> None:
        """Cancel what has not started and end every process this executor started."""


@dataclass(frozen=True)
class Choice:
    """The executor the command line asked for (validated before anything runs)."""

    kind: str  # "local", "dask-local" or "dask-scheduler"
    workers: int = 1
    address: str = ""


SCHEDULER_RE = re.compile(r"^(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
                          r":([0-9]{1,5})$")


def parse_scheduler(text: str) -> str:
    """``tcp://HOST:PORT`` (or ``tls://``): the address of a running Dask scheduler."""
    m = SCHEDULER_RE.match(text)
    if not m or not 1 <= int(m.group(3)) <= 65535:
        raise BenchError(f"--scheduler {text!r} is not a Dask scheduler address (expected "
                         f"tcp://HOST:PORT with a port from 1 to 65535)")
    return text


def parse_dask(text: str, default_workers: int) -> int:
    """``local`` or ``local:N``: the number of LocalCluster worker processes."""
    name, colon, count = text.partition(":")
    if name != "local" or (colon and not count.isdigit()):
        raise BenchError(f"--dask {text!r}: expected local or local:N (N worker processes; for a "
                         f"running cluster use --scheduler tcp://HOST:PORT)")
    workers = int(count) if colon else default_workers
    if not 1 <= workers <= MAX_WORKERS:
        raise BenchError(f"--dask {text!r}: the number of workers must be from 1 to {MAX_WORKERS}")
    return workers


def choose(dask: str | None, scheduler: str | None, jobs: int) -> Choice:
    """The executor for ``--dask``/``--scheduler``/``--jobs``; a missing dask extra is an error
    here, before anything is simulated or written."""
    if dask is not None and scheduler is not None:
        raise BenchError("--dask and --scheduler are alternatives; give one of them")
    if dask is None and scheduler is None:
        return Choice("local", jobs)
    choice = (Choice("dask-local", parse_dask(dask, jobs)) if dask is not None
              else Choice("dask-scheduler", address=parse_scheduler(scheduler or "")))
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise BenchError(DASK_MISSING) from None
    return choice


def open_executor(choice: Choice) -> Executor:
    """Start (or connect to) the chosen executor; a scheduler that cannot be reached is a
    BenchError."""
    if choice.kind == "local":
        from bench.executors.local import Inline, Pool

        return Inline() if choice.workers <= 1 else Pool(choice.workers)
    from bench.executors.dask import DaskExecutor

    return DaskExecutor(choice)
