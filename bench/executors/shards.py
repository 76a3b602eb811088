"""Shards: ``--shard I/N`` runs a deterministic 1/N of an experiment's cells.

The cells are put in run-major order (for each workload entry, for each seed: the offline
optimum's record of that guest run, then every policy on it) and cut into N contiguous parts
whose sizes differ by at most one; shard I runs part I. The order depends only on the
experiment, so every shard of a Slurm job array or CI matrix computes its own part, the parts
cover every cell exactly once, and the optimum of a (workload, seed) is computed once, by the
shard its record falls in. A guest run cut between two shards is executed natively by both.
``python -m bench merge`` joins the shards' folders (bench.executors.merge).
"""

from __future__ import annotations

from bench.errors import BenchError
from bench.experiment import Cell, Experiment

MAX_SHARDS = 100_000


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` with 1 <= I <= N: shard I of N."""
    index, slash, count = text.partition("/")
    if not (slash and index.isdigit() and count.isdigit()):
        raise BenchError(f"--shard {text!r}: expected I/N (shard I of N, e.g. 1/4)")
    i, n = int(index), int(count)
    if not 1 <= n <= MAX_SHARDS:
        raise BenchError(f"--shard {text!r}: the number of shards must be from 1 to {MAX_SHARDS}")
    if not 1 <= i <= n:
        raise BenchError(f"--shard {text!r}: the shard must be from 1 to {n}")
    return i, n


def ordered_cells(experiment: Experiment) -> list[Cell]:
    """Every cell, the optimum's records included, in run-major order."""
    out: list[Cell] = []
    for w in experiment.workloads:
        for seed in experiment.seeds:
            out.append(Cell(None, w, seed))
            out.extend(Cell(p, w, seed) for p in experiment.policies)
    return out


def shard_digests(experiment: Experiment, index: int, count: int) -> set[str]:
    """The digests of the cells shard ``index`` of ``count`` runs."""
    cells = ordered_cells(experiment)
    lo, hi = (index - 1) * len(cells) // count, index * len(cells) // count
    return {c.digest() for c in cells[lo:hi]}
