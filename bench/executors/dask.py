"""The Dask distributed executor: a LocalCluster started here, or a running scheduler.

Each task is ``bench.runner.compute_remote`` on one guest run's cells: the worker stores each
cell in ``OUT/cells`` as it finishes when it sees that folder (a file system shared with the
run, as on a cluster with a shared home or scratch), and returns the documents, which the run
stores itself when the worker could not. A worker that dies is replaced by Dask and its task
computed again elsewhere (Dask's ``distributed.scheduler.allowed-failures``, 3 by default,
before the task is reported as failed); cells it had already stored are kept and not computed
again. Closing cancels every task and, for a LocalCluster, ends its worker processes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bench.errors import BenchError
from bench.executors import Choice, Done, Items, Result

CONNECT_SECONDS = 10
"""How long connecting to ``--scheduler`` may take before it is an error."""


def _warm() -> None:
    """On each worker of a LocalCluster, before the first cell: import what a cell runs."""
    from bench import registry, runner  # noqa: F401

    registry.policies()
    registry.workloads()


class DaskExecutor:
    def __init__(self, choice: Choice) -> None:
        import distributed

        self.distributed = distributed
        self.cluster: Any = None
        self.pending: dict[Any, int] = {}
        try:
            if choice.kind == "dask-local":
                self.cluster = distributed.LocalCluster(
                    n_workers=choice.workers, threads_per_worker=1, processes=True,
                    dashboard_address=None, memory_limit=0, silence_logs=logging.CRITICAL)
                self.client = distributed.Client(self.cluster, set_as_default=False)
                self.description = f"dask LocalCluster ({choice.workers} workers)"
            else:
                self.client = distributed.Client(choice.address, timeout=CONNECT_SECONDS,
                                                 set_as_default=False)
                self.description = f"dask scheduler {choice.address}"
        except (OSError, TimeoutError, ValueError) as err:
            self.close()
            where = choice.address or "a LocalCluster"
            raise BenchError(f"--scheduler {where}: cannot connect to the Dask scheduler "
                             f"({' '.join(str(err).split()) or type(err).__name__})"
                             if choice.address else
                             f"--dask: cannot start {where} ({err})") from None
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        if self.cluster is not None:
            try:  # the workers import the simulator and find the policies now, not in a cell
                self.client.run(_warm)
            except Exception:
                pass

    def slots(self) -> int:
        try:
            threads = sum(self.client.nthreads().values())
        except Exception:  # the scheduler is briefly unreachable: keep what is in flight
            threads = 1
        return 2 * max(1, threads)

    def submit(self, token: int, items: Items, cells_dir: str, done: Done | None) -> None:
        from bench.runner import compute_remote

        future = self.client.submit(compute_remote, items, cells_dir, pure=False,
                                    key=f"shadowbench-{items[0][1]}-{token}")
        self.pending[future] = token

    def finished(self, timeout: float) -> list[Result]:
        from bench.runner import CellFailed

        if not self.pending:
            time.sleep(min(timeout, 0.05))
            return []
        deadline = time.monotonic() + timeout
        while True:
            done = [future for future in self.pending if future.done()]
            if done or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        out: list[Result] = []
        for future in done:
            token = self.pending.pop(future)
            if future.status == "error":
                err = future.exception()
                if isinstance(err, CellFailed):
                    out.append((token, err))
                elif isinstance(err, self.distributed.KilledWorker):
                    out.append((token, CellFailed(
                        f"the Dask workers computing this task died "
                        f"({' '.join(str(err).split())[:200]})", repr(err), None)))
                else:
                    raise err
            elif future.status == "cancelled":
                raise BenchError("the Dask scheduler cancelled a task (was it restarted?)")
            else:
                out.append((token, future.result()))
        return out

    def close(self) -> None:
        try:
            if self.pending and getattr(self, "client", None) is not None:
                self.client.cancel(list(self.pending), force=True)
        except Exception:
            pass
        self.pending.clear()
        client = getattr(self, "client", None)
        if client is not None:
            try:
                client.close(timeout=10)
            except Exception:
                pass
        if self.cluster is not None:
            try:
                self.cluster.close(timeout=10)
            except Exception:
                pass
            self.cluster = None
