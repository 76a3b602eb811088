"""Results: the versioned results.json document (the source of truth), its CSV and pyperf exports.

The document (schema in docs/results.md) holds the run's provenance in ``meta``, one record per
(policy, workload entry, seed) with the raw counters and their pricing, and the oracle records
by digest so opt_ratio can be re-priced. Everything that may differ between two runs of the
same experiment (timestamps, host, command line, job count, how many cells were reused) is in
``meta.volatile`` and nowhere else: dropping it, two runs compare byte for byte.

Counting is kept apart from pricing: ``price_records`` turns the stored counters into cycles
under any cost profile, so ``reprice`` never simulates.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import platform
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import bench
from bench import _compiled, core, costs, oracle
from bench.errors import BenchError
from bench.experiment import Experiment
from bench.files import atomic_write, atomic_write_text
from bench.machine.counters import ALL_COUNTERS, exits_by_reason

SCHEMA_VERSION = 1
KIND = "shadowbench-results"
RESULTS_JSON, RESULTS_CSV, PYPERF_JSON = "results.json", "results.csv", "pyperf.json"
PASSES_CSV = "passes.csv"
PYPERF_GHZ = 3.0
"""The clock pyperf's run durations are given at: a run's ``duration`` is its simulated cycles
at this clock (pyperf otherwise takes the values, cycles, for seconds)."""


# -- provenance --------------------------------------------------------------------------------
BUILD_INFO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build_info.json")
"""Written by setup.py into an installed copy: the git commit it was built from."""


def git_commit() -> str | None:
    """The project's git commit (with ``-dirty`` when the tree has changes), or None: for an
    installed copy, the commit stamped at build time (BUILD_INFO); else the checkout's."""
    try:
        with open(BUILD_INFO, encoding="utf-8") as handle:
            stamped = json.load(handle).get("git_commit")
        if isinstance(stamped, str) and stamped:
            return stamped
    except (OSError, ValueError, AttributeError):
        pass
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def host_description() -> dict[str, Any]:
    return {"hostname": platform.node(), "platform": platform.platform(),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "simulator": _compiled.state(), "native_core": core.state()}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- records -----------------------------------------------------------------------------------
def _finite(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def opt_ratio(counters: dict[str, int], oracle_record: Any, profile: costs.CostProfile,
              tdp: bool) -> float | None:
    """decision_cycles / optimum_cycles (bench.oracle.opt_ratio): None without an oracle record,
    with a zero optimum, or for a run outside the optimum's model (out-of-sync pages, batched
    emulation, two-dimensional paging)."""
    if oracle_record is None:
        return None
    try:
        return _finite(oracle.opt_ratio(counters, oracle_record, profile, tdp))
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as err:
        raise BenchError(f"malformed oracle record ({type(err).__name__}: {err})") from None


def policy_uses_tdp(name: str, params: dict[str, Any], pae: bool) -> bool:
    """Whether the policy runs on two-dimensional paging (no shadow pages at all)."""
    from bench.registry import make_policy

    return bool(make_policy((name, params)).mmu_config(pae).tdp)


def price_record(record: dict[str, Any], profile: costs.CostProfile,
                 oracles: Mapping[str, Any]) -> None:
    """Fill a record's cycle fields from its counters (in place)."""
    priced = profile.price(record["counters"])
    record["native_cycles"] = priced["native_cycles"]
    record["virtualization_cycles"] = priced["virtualization_cycles"]
    record["cycles"] = priced["cycles"]
    record["overhead"] = _finite(priced["overhead"])
    record["cycles_by_cause"] = dict(priced["cycles_by_cause"])
    digest = record.get("oracle")
    record["opt_ratio"] = opt_ratio(record["counters"], oracles.get(digest) if digest else None,
                                    profile, record["tdp"])


def make_records(experiment: Experiment, cells: Mapping[str, dict[str, Any]],
                 oracles: Mapping[str, Any], profile: costs.CostProfile) -> list[dict[str, Any]]:
    """One priced record per finished cell, in the experiment's order."""
    oracle_digest = {(id(c.workload), c.seed): c.digest() for c in experiment.oracle_cells()}
    records = []
    for cell in experiment.cells():
        digest = cell.digest()
        doc = cells.get(digest)
        if doc is None:
            continue
        od = oracle_digest[(id(cell.workload), cell.seed)]
        record: dict[str, Any] = {
            "cell": digest,
            "workload": cell.workload.name,
            "workload_label": cell.workload.label,
            "workload_params": cell.workload.params,
            "policy": cell.policy.name,
            "policy_label": cell.policy.label,
            "policy_params": cell.policy.params,
            "seed": cell.seed,
            "tdp": policy_uses_tdp(cell.policy.name, cell.policy.params,
                                   bool(cell.workload.params.get("pae", False))),
            "guest_ops": doc["guest_ops"],
            "native_cycles": 0, "virtualization_cycles": 0, "cycles": 0, "overhead": None,
            "opt_ratio": None,
            "oracle": od if od in oracles else None,
            "counters": doc["counters"],
            "exits_by_reason": exits_by_reason(doc["counters"]),
            "cycles_by_cause": {},
            "sizes": doc["sizes"],
            "marks": [{"phase": phase, "counters": c} for phase, c in doc["marks"]],
        }
        price_record(record, profile, oracles)
        records.append(record)
    return records


def make_document(experiment: Experiment, cells: Mapping[str, dict[str, Any]],
                  oracles: Mapping[str, Any], complete: bool, volatile: dict[str, Any],
                  notes: list[str] | None = None) -> dict[str, Any]:
    """The results document for an experiment and its finished cells."""
    profile = costs.profile(experiment.cost_profile)
    records = make_records(experiment, cells, oracles, profile)
    used = {r["oracle"] for r in records if r["oracle"]}
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "complete": complete,
        "meta": {
            "project_version": bench.__version__,
            "git_commit": git_commit(),
            "cost_profile": profile.as_dict(),
            "seeds": list(experiment.seeds),
            "experiment": experiment.as_dict(),
            "cells_expected": len(experiment.cells()),
            "cells_done": len(records),
            "repriced_from": None,
            "notes": list(notes or []),
            "volatile": volatile,
        },
        "records": records,
        "oracles": {d: oracles[d] for d in sorted(used)},
    }


def reprice(doc: dict[str, Any], profile: costs.CostProfile) -> dict[str, Any]:
    """The same results priced under another profile (counters untouched, nothing simulated)."""
    out = json.loads(json.dumps(doc))
    meta = out["meta"]
    if meta.get("repriced_from") is None:
        meta["repriced_from"] = meta["cost_profile"]["name"]
    meta["cost_profile"] = profile.as_dict()
    for record in out["records"]:
        price_record(record, profile, out["oracles"])
    meta["volatile"] = dict(meta.get("volatile") or {}, repriced=now())
    return out


def profile_of(doc: dict[str, Any]) -> costs.CostProfile:
    """The cost profile a document was priced with, from its stored numbers."""
    try:
        return costs.profile_from_dict(doc["meta"]["cost_profile"])
    except (TypeError, ValueError, KeyError) as err:
        raise BenchError(f"results file has a malformed cost_profile ({err})") from None


# -- reading and validation --------------------------------------------------------------------
_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "cell": (str,), "workload": (str,), "workload_label": (str,), "workload_params": (dict,),
    "policy": (str,), "policy_label": (str,), "policy_params": (dict,), "seed": (int,), "tdp": (bool,),
    "guest_ops": (int,), "native_cycles": (int,), "virtualization_cycles": (int,),
    "cycles": (int,), "overhead": (float, int, type(None)), "opt_ratio": (float, int, type(None)),
    "oracle": (str, type(None)), "counters": (dict,), "exits_by_reason": (dict,),
    "cycles_by_cause": (dict,), "sizes": (dict,), "marks": (list,),
}


MAX_COUNT = 2**63 - 1
"""The largest count or cycle number a results file may hold (a 64-bit counter): anything
beyond is a crafted or corrupt file, refused before a chart or a price overflows."""


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _int_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _count(v)
                                           for k, v in value.items())


def validate(doc: Any, where: str) -> dict[str, Any]:
    """Check a document's shape; any problem is one BenchError naming ``where``."""
    def bad(what: str) -> BenchError:
        return BenchError(f"{where}: not a valid shadowbench results file ({what})")

    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise bad("no 'kind': 'shadowbench-results'")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BenchError(f"{where}: results schema version {version!r} is not supported "
                         f"(this shadowbench {bench.__version__} reads version {SCHEMA_VERSION})")
    if not isinstance(doc.get("complete"), bool):
        raise bad("'complete' must be true or false")
    meta = doc.get("meta")
    if not isinstance(meta, dict):
        raise bad("'meta' must be an object")
    for key, kinds in (("project_version", (str,)), ("cost_profile", (dict,)),
                       ("seeds", (list,)), ("experiment", (dict,)), ("notes", (list,)),
                       ("volatile", (dict,))):
        if not isinstance(meta.get(key), kinds):
            raise bad(f"meta.{key} missing or of the wrong type")
    problem = _profile_problem(meta["cost_profile"])
    if problem:
        raise bad(f"meta.cost_profile: {problem}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in meta["seeds"]):
        raise bad("meta.seeds must be whole numbers")
    grid = meta["experiment"].get("grid")
    if grid is not None and not (isinstance(grid, dict) and all(
            isinstance(v, list) for v in grid.values())):
        raise bad("meta.experiment.grid must map parameters to lists")
    records = doc.get("records")
    oracles = doc.get("oracles")
    if not isinstance(records, list) or not isinstance(oracles, dict) or not all(
            isinstance(o, dict) for o in oracles.values()):
        raise bad("'records' must be a list and 'oracles' an object of records")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise bad(f"record {i} is not an object")
        for key, kinds in _RECORD_FIELDS.items():
            value = record.get(key)
            if key not in record or not isinstance(value, kinds) or (
                    isinstance(value, bool) and bool not in kinds):
                raise bad(f"record {i}: {key} missing or of the wrong type")
            if isinstance(value, int) and not isinstance(value, bool) and key != "seed" and (
                    not _count(value)):
                raise bad(f"record {i}: {key} {value} is out of range (0 to 2^63-1)")
            if isinstance(value, float) and not (0 <= value < 1e300):
                raise bad(f"record {i}: {key} {value} is out of range")
        for key in ("counters", "exits_by_reason", "cycles_by_cause", "sizes"):
            if not _int_map(record[key]):
                raise bad(f"record {i}: {key} must map names to whole numbers from 0 to "
                          f"2^63-1")
        for mark in record["marks"]:
            if not (isinstance(mark, dict) and isinstance(mark.get("phase"), int)
                    and _int_map(mark.get("counters"))):
                raise bad(f"record {i}: a mark must be {{phase, counters}}")
        if record["oracle"] is not None and record["oracle"] not in oracles:
            raise bad(f"record {i}: oracle {record['oracle']} is not in 'oracles'")
    return doc


def _profile_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a stored cost profile (None if it is a whole CostProfile)."""
    for f in dataclasses.fields(costs.CostProfile):
        value = data.get(f.name)
        if f.name in ("name", "cpu"):
            ok = isinstance(value, str)
        elif f.name == "sources":
            ok = isinstance(value, dict)
        elif f.name == "estimates":
            ok = isinstance(value, list)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and (
                0 <= value <= costs.MAX_EVENT_CYCLES)
        if not ok:
            return f"{f.name} missing or of the wrong type"
    unknown = set(data) - {f.name for f in dataclasses.fields(costs.CostProfile)}
    return f"unknown field {sorted(unknown)[0]}" if unknown else None


def load(path: str) -> dict[str, Any]:
    """Read and validate a results file (a folder means its results.json)."""
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS_JSON)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise BenchError(f"cannot read results {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise BenchError(f"{path}: not a results file (not UTF-8 text)") from None
    return loads(text, path)


def loads(text: str, where: str = "<results>") -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise BenchError(f"{where}:{err.lineno}: not valid JSON ({err.msg})") from None
    except RecursionError:
        raise BenchError(f"{where}: not a results file (nested too deeply)") from None
    return validate(doc, where)


# -- writing -----------------------------------------------------------------------------------
def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"


def write_json(doc: dict[str, Any], path: str) -> None:
    atomic_write_text(path, dumps(doc))


def csv_text(doc: dict[str, Any]) -> str:
    """One row per record: identifiers, totals, then counters, exits, cycles, sizes, parameters."""
    records = doc["records"]
    extra_counters = sorted({k for r in records for k in r["counters"]} - set(ALL_COUNTERS))
    counters = [c for c in ALL_COUNTERS if any(c in r["counters"] for r in records)]
    reasons = sorted({k for r in records for k in r["exits_by_reason"]})
    causes = [c for c in costs.CAUSES if any(c in r["cycles_by_cause"] for r in records)]
    sizes = sorted({k for r in records for k in r["sizes"]})
    pparams = sorted({k for r in records for k in r["policy_params"]})
    wparams = sorted({k for r in records for k in r["workload_params"]})
    provenance = _provenance(doc)
    head = ["workload", "workload_label", "policy", "policy_label", "seed", "guest_ops",
            "native_cycles", "virtualization_cycles", "cycles", "overhead", "opt_ratio"]
    columns = (list(provenance) + ["cell"] + head
               + [f"counter.{c}" for c in counters + extra_counters]
               + [f"exits.{r}" for r in reasons] + [f"cycles.{c}" for c in causes]
               + [f"size.{s}" for s in sizes] + [f"policy_param.{p}" for p in pparams]
               + [f"workload_param.{w}" for w in wparams])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        row = list(provenance.values()) + [r["cell"]]
        row += [r[k] if r[k] is not None else "" for k in head]
        row += [r["counters"].get(c, "") for c in counters + extra_counters]
        row += [r["exits_by_reason"].get(x, 0) for x in reasons]
        row += [r["cycles_by_cause"].get(c, "") for c in causes]
        row += [r["sizes"].get(s, "") for s in sizes]
        row += [_cell_text(r["policy_params"], p) for p in pparams]
        row += [_cell_text(r["workload_params"], w) for w in wparams]
        writer.writerow(row)
    return out.getvalue()


def _provenance(doc: dict[str, Any]) -> dict[str, str]:
    """The columns every CSV row starts with: where the numbers come from."""
    meta = doc["meta"]
    return {"project_version": meta["project_version"],
            "git_commit": meta.get("git_commit") or "",
            "cost_profile": meta["cost_profile"]["name"],
            "complete": "true" if doc["complete"] else "false"}


def passes_csv_text(doc: dict[str, Any]) -> str:
    """Long format, one row per (record, MARK phase, counter): the counters at the end of each
    pass (zeros left out, as in ``marks``), cumulative from the start of the run."""
    provenance = _provenance(doc)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(provenance) + ["cell", "workload_label", "policy_label", "seed",
                                        "phase", "counter", "value"])
    for r in doc["records"]:
        for mark in r["marks"]:
            for counter, value in sorted(mark["counters"].items()):
                writer.writerow(list(provenance.values()) + [
                    r["cell"], r["workload_label"], r["policy_label"], r["seed"],
                    mark["phase"], counter, value])
    return out.getvalue()


def _cell_text(params: dict[str, Any], key: str) -> str:
    if key not in params:
        return ""
    value = params[key]
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def pyperf_suite(doc: dict[str, Any]):
    """Simulated cycles as pyperf benchmarks: one per (workload entry, policy), one run per
    seed with one value (unit integer)."""
    import pyperf

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in doc["records"]:
        groups.setdefault(f"{r['workload_label']}/{r['policy_label']}", []).append(r)
    profile = doc["meta"]["cost_profile"]["name"]
    benchmarks = []
    for name, records in groups.items():
        runs = []
        for r in sorted(records, key=lambda r: r["seed"]):
            if r["cycles"] <= 0:
                continue
            runs.append(pyperf.Run([r["cycles"]], collect_metadata=False, metadata={
                "name": name, "unit": "integer", "description":
                    f"simulated cycles, cost profile {profile}",
                "duration": r["cycles"] / (PYPERF_GHZ * 1e9),
                "shadowbench_version": doc["meta"]["project_version"],
                "shadowbench_seed": r["seed"], "shadowbench_cell": r["cell"],
                "shadowbench_cost_profile": profile}))
        if runs:
            benchmarks.append(pyperf.Benchmark(runs))
    return pyperf.BenchmarkSuite(benchmarks) if benchmarks else None


def write_pyperf(doc: dict[str, Any], path: str) -> bool:
    """Write pyperf.json; False (nothing written) when there is no record with cycles > 0."""
    suite = pyperf_suite(doc)
    if suite is None:
        return False
    atomic_write(path, lambda handle: suite.dump(handle, compact=True))
    return True


def write_folder(doc: dict[str, Any], folder: str) -> list[str]:
    """results.json, results.csv, passes.csv and pyperf.json into ``folder``; returns the paths
    written."""
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, RESULTS_JSON), os.path.join(folder, RESULTS_CSV),
             os.path.join(folder, PASSES_CSV)]
    write_json(doc, paths[0])
    atomic_write_text(paths[1], csv_text(doc))
    atomic_write_text(paths[2], passes_csv_text(doc))
    ppath = os.path.join(folder, PYPERF_JSON)
    if write_pyperf(doc, ppath):
        paths.append(ppath)
    return paths


def stable(doc: dict[str, Any]) -> dict[str, Any]:
    """The document without ``meta.volatile`` (what must repeat byte for byte)."""
    out = dict(doc)
    out["meta"] = {k: v for k, v in doc["meta"].items() if k != "volatile"}
    return out
