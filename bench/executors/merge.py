"""``python -m bench merge DIR... --out DIR``: join the cell caches of several results folders
(the shards of one experiment, or runs on several machines) into one results folder.

Every folder must hold a results.json of the same experiment (policies, workloads, seeds, cost
profile and grid, as ``meta.experiment`` and ``meta.cost_profile`` record them); a folder of
another experiment is refused before anything is written. The cells are copied into
``OUT/cells`` after the same check a run makes before reusing a cell (its stored key equals
the key this code gives it), so a cell computed by other code or from other input files is
never merged: it counts as missing. The results document is made from the cells as a run makes
it, so merging the shards of an experiment gives the results.json one run gives.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bench import experiment as exp
from bench import results
from bench.errors import BenchError
from bench.files import atomic_write_text
from bench.runner import CELLS_DIR, StoredDocs, load_cached

COMPARED = ("experiment", "cost_profile")
"""The parts of ``meta`` that must be equal in every merged folder."""


def load_inputs(folders: list[str]) -> tuple[exp.Experiment, list[str]]:
    """The common experiment of ``folders`` (each a results folder); a BenchError when one is
    not a results folder or holds another experiment."""
    if not folders:
        raise BenchError("merge needs at least one results folder")
    first: dict[str, Any] | None = None
    for folder in folders:
        if not os.path.isdir(folder):
            raise BenchError(f"merge: {folder} is not a folder (give the results folders of the "
                             f"shards)")
        doc = results.load(folder)
        meta = {k: doc["meta"].get(k) for k in COMPARED}
        if first is None:
            first = meta
            continue
        if meta != first:
            differ = [k for k in ("policies", "workloads", "seeds", "cost_profile", "grid")
                      if meta["experiment"].get(k) != first["experiment"].get(k)]
            if meta["cost_profile"] != first["cost_profile"] and "cost_profile" not in differ:
                differ.append("cost profile numbers")
            raise BenchError(f"merge: {folder} holds another experiment than {folders[0]} "
                             f"(its {', '.join(differ) or 'experiment'} differ); merge only "
                             f"folders of one experiment")
    assert first is not None
    return exp.from_dict(first["experiment"]), folders


def join_cells(experiment: exp.Experiment, folders: list[str], out: str) -> tuple[
        StoredDocs, StoredDocs, int]:
    """Copy every cell found in ``folders`` into ``out``/cells; returns the cells and oracle
    records now in ``out`` and how many cells were copied."""
    cells_out = os.path.abspath(os.path.join(out, CELLS_DIR))
    os.makedirs(cells_out, exist_ok=True)
    cells, oracles = StoredDocs(cells_out), StoredDocs(cells_out, "oracle")
    copied = 0
    sources = [os.path.join(f, CELLS_DIR) for f in folders]
    for cell in experiment.oracle_cells() + experiment.cells():
        doc = load_cached(cells_out, cell)
        if doc is None:
            for source in sources:
                if os.path.abspath(source) == cells_out:
                    continue
                doc = load_cached(source, cell)
                if doc is not None:
                    atomic_write_text(os.path.join(cells_out, cell.digest() + ".json"),
                                      json.dumps(doc, sort_keys=True))
                    copied += 1
                    break
        if doc is not None:
            (oracles if cell.policy is None else cells).add(cell.digest())
    return cells, oracles, copied
