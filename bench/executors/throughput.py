"""Cells per second through each executor: ``python -m bench.executors.throughput``.

Runs the same quick experiment (by default 4 policies on kscand and kmap with --quick, 4 seeds:
32 cells and 8 optimum records) through the local pool with 1, 2 and 4 processes and a Dask
LocalCluster with 1, 2 and 4 workers, each into a fresh cells folder (nothing reused), and
prints, per executor, the wall time of the cells (the median of ``--repeat`` runs), the cells
per second and the ratio to the local pool with one process; a LocalCluster's start-up is timed
apart. It checks that every executor's records (and optimum records) equal the first one's, byte
for byte. ``--memory`` instead measures the run's own peak resident memory for
a small and a ten times larger experiment (in child processes). docs/performance.md, "Sweeps:
executors", has the figures and the conditions they were measured under.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

POLICIES = ["always-emulate", "flood-count", "always-unshadow", "per-page-flood"]
WORKLOADS = ["kscand:quick=true", "kmap:quick=true"]
CONFIGS = [("local", 1), ("local", 2), ("local", 4), ("dask-local", 1), ("dask-local", 2),
           ("dask-local", 4)]


def _document(experiment: Any, outcome: Any) -> str:
    from bench import results

    doc = results.make_document(experiment, outcome.cells, outcome.oracles, True, {})
    # the records and optimum records: meta's git_commit says -dirty when a file is edited
    # while the benchmark runs
    return results.dumps({"records": doc["records"], "oracles": doc["oracles"]})


def measure(seeds: int, repeat: int) -> list[dict[str, Any]]:
    from bench import experiment as exp
    from bench import runner
    from bench.executors import Choice, open_executor

    experiment = exp.build(POLICIES, WORKLOADS, seeds=seeds)
    cells = len(experiment.cells()) + len(experiment.oracle_cells())
    rows: list[dict[str, Any]] = []
    reference = None
    for kind, workers in CONFIGS:
        times, startups = [], []
        for _ in range(repeat):
            folder = tempfile.mkdtemp(prefix="shadowbench-throughput-")
            try:
                t0 = time.perf_counter()
                executor = None if kind == "local" else open_executor(Choice(kind, workers))
                t1 = time.perf_counter()
                outcome = runner.execute(experiment, folder, workers, reuse=False,
                                         executor=executor)
                t2 = time.perf_counter()
                assert outcome.computed == len(experiment.cells()), outcome
                text = _document(experiment, outcome)
                if reference is None:
                    reference = text
                if text != reference:
                    raise SystemExit(f"{kind} {workers}: results differ from the first executor's")
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            startups.append(t1 - t0)
            times.append(t2 - t1)
        wall = statistics.median(times)
        rows.append({"executor": kind, "workers": workers, "cells": cells, "seconds": wall,
                     "runs": times, "startup": statistics.median(startups),
                     "cells_per_second": cells / wall})
    base = rows[0]["cells_per_second"]
    for row in rows:
        row["ratio"] = row["cells_per_second"] / base
    return rows


def memory(seeds: list[int]) -> list[dict[str, Any]]:
    """Peak resident memory of a child process running the cells of one policy on kmap (quick)
    for each seed count, with one worker process (the cells computed in the process itself)."""
    code = ("import resource, sys, tempfile\n"
            "from bench import experiment as exp, runner, results\n"
            "e = exp.build(['always-emulate'], ['kmap:quick=true'], seeds=int(sys.argv[1]))\n"
            "o = runner.execute(e, tempfile.mkdtemp(), 1)\n"
            "after_cells = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "results.make_document(e, o.cells, o.oracles, True, {})\n"
            "print(after_cells, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rows = []
    for n in seeds:
        out = subprocess.run([sys.executable, "-c", code, str(n)], cwd=root, check=True,
                             capture_output=True, text=True).stdout.split()
        rows.append({"seeds": n, "cells": n, "peak_kib_after_cells": int(out[0]),
                     "peak_kib_with_document": int(out[1])})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.executors.throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=4, help="seeds (default 4: 40 cells)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per executor (median)")
    parser.add_argument("--memory", action="store_true",
                        help="measure the run's peak memory for 40 and 400 seeds instead")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    if args.memory:
        rows = memory([40, 400])
        if args.json:
            print(json.dumps(rows, indent=1))
        for r in rows:
            print(f"{r['cells']:5d} cells (+{r['seeds']} optimum records): peak "
                  f"{r['peak_kib_after_cells'] / 1024:.1f} MiB after the cells, "
                  f"{r['peak_kib_with_document'] / 1024:.1f} MiB with the results document")
        return 0
    rows = measure(args.seeds, args.repeat)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{rows[0]['cells']} cells per run, median of {args.repeat} runs; "
          f"{os.cpu_count()} CPUs; peak rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")
    print(f"{'executor':12} {'workers':>7} {'seconds':>8} {'cells/s':>8} {'ratio':>6} {'start-up':>9}")
    for r in rows:
        print(f"{r['executor']:12} {r['workers']:7d} {r['seconds']:8.2f} "
              f"{r['cells_per_second']:8.2f} {r['ratio']:6.2f} {r['startup']:8.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
