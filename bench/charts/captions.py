"""The full configuration behind each chart, for the caption under it in report.md (the chart
itself carries a short title and a one-line caption only)."""

from __future__ import annotations

from typing import Any

from bench.charts import data


def _profile(doc: dict[str, Any]) -> str:
    profile = doc["meta"]["cost_profile"]
    return f"cost profile {profile['name']} ({profile['cpu']})"


def _guest(record: data.Record) -> str:
    params = ", ".join(f"{k}={data.value_text(v)}" for k, v in sorted(record["workload_params"].items()))
    sizes = ", ".join(f"{k} {v:,}" for k, v in sorted(record["sizes"].items()))
    return f"guest {record['workload']}: {params or 'defaults'}" + (f"; sizes: {sizes}" if sizes else "")


def _spread(records: list[data.Record]) -> str:
    """``min-max over 3 seeds`` (with the recorded guests' one seed named, bench.charts.data)."""
    return f"min-max over {data.seeds_text(records)}"


def caption(doc: dict[str, Any], name: str) -> str:
    from bench.charts import kind_of, slug, sweep

    kind = kind_of(name)
    records = doc["records"]
    spread = _spread(records)
    if kind in ("sweep", "sweep-ratio"):
        what = "cycles" if kind == "sweep" else "ratio to the offline optimum"
        return f"{what.capitalize()} against {sweep.caption(doc, name)}; lines: means, bands: " \
               f"{spread}; {_profile(doc)}."
    if kind == "opt-ratio":
        return ("Cycles of each policy's emulate/unshadow decisions over the offline optimum's, "
                f"per workload (bars from 1, the optimum; whiskers: {spread}; x: outside the "
                f"optimum's model); {_profile(doc)}.")
    record = next(r for r in records if f"{kind}-{slug(r['workload_label'])}" == name)
    spread = _spread([r for r in records if r["workload_label"] == record["workload_label"]])
    if kind == "cycles":
        head = (f"Simulated cycles by cause per policy, stacked on the native cycles of the same "
                f"operations (whiskers: {spread} of the total)")
    else:
        head = (f"VM exits between the workload's MARKs per policy (whiskers or bands: {spread}; "
                f"{data.phase_note(record['workload'])})")
    return f"{head}; {_guest(record)}; {_profile(doc)}."
