"""The local executors: the run's own process (``--jobs 1``) or a pool of forked workers.

Pool workers are forked from the run (so a policy or workload registered in it is known to
them), leave SIGINT to the run, die with it even when it is SIGKILLed, and never write a cell
once it is gone (bench.runner's worker set-up).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from bench.executors import Done, Items, Result


class Inline:
    """Every task computed in this process when the caller asks for finished ones."""

    description = "local (1 process)"

    def __init__(self) -> None:
        self.queue: list[tuple[int, Items, str, Done | None]] = []

    def slots(self) -> int:
        return 1

    def submit(self, token: int, items: Items, cells_dir: str, done: Done | None) -> None:
        self.queue.append((token, items, cells_dir, done))

    def finished(self, timeout: float) -> list[Result]:
        from bench.runner import CellFailed, compute_group

        if not self.queue:
            time.sleep(min(timeout, 0.05))
            return []
        token, items, cells_dir, done = self.queue.pop(0)
        try:
            return [(token, compute_group(items, cells_dir, done))]
        except CellFailed as err:
            return [(token, err)]

    def close(self) -> None:
        self.queue.clear()


class Pool:
    """A ProcessPoolExecutor of ``jobs`` forked workers."""

    def __init__(self, jobs: int) -> None:
        from bench.runner import _worker_init

        self.jobs = jobs
        self.description = f"local ({jobs} processes)"
        context = multiprocessing.get_context("fork") if sys.platform != "win32" else None
        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context,
                                        initializer=_worker_init, initargs=(os.getpid(),))
        self.pending: dict[Future, int] = {}

    def slots(self) -> int:
        return 2 * self.jobs  # one running and one queued per worker

    def submit(self, token: int, items: Items, cells_dir: str, done: Done | None) -> None:
        from bench.runner import compute_group

        self.pending[self.pool.submit(compute_group, items, cells_dir)] = token

    def finished(self, timeout: float) -> list[Result]:
        from bench.runner import CellFailed

        if not self.pending:
            time.sleep(min(timeout, 0.05))
            return []
        done, _ = wait(self.pending, timeout=timeout, return_when=FIRST_COMPLETED)
        out: list[Result] = []
        for future in done:
            token = self.pending.pop(future)
            err = future.exception()
            if isinstance(err, CellFailed):
                out.append((token, err))
            elif err is not None:
                raise err
            else:
                out.append((token, future.result()))
        return out

    def close(self) -> None:
        """Cancel what has not started and end the worker processes now."""
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in processes:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(1)
        self.pending.clear()
