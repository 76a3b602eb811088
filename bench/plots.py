"""Charts from stored results only (matplotlib, Agg; PNG and SVG, written atomically).

- ``cycles-<workload>``: stacked bars of cycles by cause per policy (means over seeds), with the
  native cycles of the same operations as the first segment for scale;
- ``traps-<workload>``: exits per kscand pass against guest time (native cycles at each MARK),
  one line per policy (first seed);
- ``opt-ratio``: each policy's cycles over the offline optimum's, per workload;
- ``sweep-<param>-<workload>``: a swept parameter against cycles, one line per policy, the band
  showing the spread over seeds.

Every chart names its units, the cost profile and the guest configuration. Nothing here runs a
simulation.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from bench import costs
from bench.files import atomic_write
from bench.stats import group, mean

FORMATS = ("png", "svg")
CAUSE_LABELS = {
    "emulated_pte_writes": "emulated pte writes", "extra_emulation": "extra emulation",
    "hidden_faults": "hidden faults (#PF exits)", "guest_faults": "guest faults (reflected)",
    "unshadow": "unshadow + zap", "rebuild": "shadow page rebuild", "unsync_resync": "unsync / resync",
    "invlpg_exits": "invlpg exits", "cr3_exits": "cr3 exits", "tdp_walks": "2-D page walks",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "shadowbench", "font.size": 9})
    return plt


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "chart"


def _save(fig, folder: str, name: str) -> list[str]:
    paths = []
    for fmt in FORMATS:
        path = os.path.join(folder, f"{name}.{fmt}")
        meta = {"Date": None} if fmt == "svg" else {"Software": "shadowbench"}
        atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, dpi=120,
                                                      bbox_inches="tight", metadata=meta),
                     binary=True)
        paths.append(path)
    return paths


def _subtitle(doc: dict[str, Any], records: list[dict[str, Any]]) -> str:
    profile = doc["meta"]["cost_profile"]
    params = records[0]["workload_params"] if records else {}
    guest = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    sizes = records[0]["sizes"] if records else {}
    size_text = ", ".join(f"{k} {v}" for k, v in sorted(sizes.items()))
    return (f"cost profile {profile['name']} ({profile['cpu']}); "
            f"{len({r['seed'] for r in records})} seed(s)\nguest: {guest or 'defaults'}"
            + (f"\nsizes: {size_text}" if size_text else ""))


def _titles(fig, ax, title: str, subtitle: str) -> None:
    ax.set_title(title, loc="left", fontweight="bold", pad=8 + 11 * (subtitle.count("\n") + 1))
    ax.text(0.0, 1.01, subtitle, transform=ax.transAxes, fontsize=7, va="bottom")


def _color(plt, i: int):
    """Distinct hues first (tab20's dark shades, then its light ones)."""
    return plt.get_cmap("tab20")((2 * i) % 20 + (i // 10) % 2)


def cycles_chart(plt, doc: dict[str, Any], label: str, records: list[dict[str, Any]],
                 folder: str) -> list[str]:
    by_policy = group(records, "policy_label")
    policies = [p for (p,) in by_policy]
    causes = [c for c in costs.CAUSES if any(r["cycles_by_cause"].get(c) for r in records)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(policies) + 3), 4.8))
    xs = range(len(policies))
    bottom = [mean([r["native_cycles"] for r in by_policy[(p,)]]) / 1e6 for p in policies]
    ax.bar(xs, bottom, color="#d9d9d9", edgecolor="#888888", hatch="//",
           label="native (same operations on bare metal)")
    cmap = plt.get_cmap("tab10")
    for i, cause in enumerate(causes):
        heights = [mean([r["cycles_by_cause"].get(cause, 0) for r in by_policy[(p,)]]) / 1e6
                   for p in policies]
        ax.bar(xs, heights, bottom=bottom, color=cmap(i % 10), label=CAUSE_LABELS.get(cause, cause))
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(list(xs), policies, rotation=35, ha="right")
    ax.set_ylabel("simulated cycles (millions, mean over seeds)")
    _titles(fig, ax, f"{label}: cycles by cause per policy", _subtitle(doc, records))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    paths = _save(fig, folder, f"cycles-{slug(label)}")
    plt.close(fig)
    return paths


def traps_chart(plt, doc: dict[str, Any], label: str, records: list[dict[str, Any]],
                folder: str) -> list[str]:
    profile = costs.profile_from_dict(doc["meta"]["cost_profile"])
    seed = min(r["seed"] for r in records)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, r in enumerate(x for x in records if x["seed"] == seed):
        xs, ys, prev = [], [], 0
        for mark in r["marks"]:
            xs.append(profile.native_cycles(mark["counters"]) / 1e6)
            exits = mark["counters"].get("exits", 0)
            ys.append(exits - prev)
            prev = exits
        ax.plot(xs, ys, marker=".", markersize=3, linewidth=1, color=_color(plt, i),
                label=r["policy_label"])
    ax.set_xlabel("guest time (native cycles, millions)")
    ax.set_ylabel("traps (VM exits) per pass")
    ax.set_yscale("symlog", linthresh=10)
    from matplotlib.ticker import ScalarFormatter

    ax.yaxis.set_major_formatter(ScalarFormatter())
    _titles(fig, ax, f"{label}: traps per kscand pass (seed {seed})", _subtitle(doc, records))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3)
    paths = _save(fig, folder, f"traps-{slug(label)}")
    plt.close(fig)
    return paths


def opt_ratio_chart(plt, doc: dict[str, Any], folder: str) -> list[str]:
    records = [r for r in doc["records"] if r["opt_ratio"] is not None]
    if not records:
        return []
    workloads = [w for (w,) in group(records, "workload_label")]
    policies = [p for (p,) in group(records, "policy_label")]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.2 * len(workloads) + 3), 4.8))
    width = 0.8 / len(policies)
    cells = group(records, "workload_label", "policy_label")
    for i, p in enumerate(policies):
        xs, ys = [], []
        for j, w in enumerate(workloads):
            rs = cells.get((w, p))
            if rs:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(mean([r["opt_ratio"] for r in rs]))
        ax.bar(xs, ys, width=width, color=_color(plt, i), label=p)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(workloads)), workloads, rotation=25, ha="right")
    ax.set_ylabel("cycles of the decisions / offline optimum (1 = optimal)")
    ax.set_yscale("log")
    profile = doc["meta"]["cost_profile"]
    _titles(fig, ax, "ratio to the offline optimum per policy and workload",
            f"cost profile {profile['name']} ({profile['cpu']}); means over "
            f"{len(doc['meta']['seeds'])} seed(s)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    paths = _save(fig, folder, "opt-ratio")
    plt.close(fig)
    return paths


def sweep_charts(plt, doc: dict[str, Any], folder: str) -> list[str]:
    grid = doc["meta"]["experiment"].get("grid") or {}
    paths: list[str] = []
    for key in grid:
        scope, _, param = key.partition(".")
        field = "policy_params" if scope == "policy" else "workload_params"
        records = [r for r in doc["records"] if param in r[field]]
        if not records:
            continue

        def base(r, field=field, param=param):
            name = r["workload"] if field == "workload_params" else r["policy"]
            rest = {k: v for k, v in r[field].items() if k != param}
            return name, tuple(sorted((k, str(v)) for k, v in rest.items()))

        # one chart per workload configuration (without the swept parameter)
        by_workload: dict[Any, list[dict[str, Any]]] = {}
        for r in records:
            wkey = base(r) if field == "workload_params" else r["workload_label"]
            by_workload.setdefault(wkey, []).append(r)
        for wkey, recs in by_workload.items():
            fig, ax = plt.subplots(figsize=(7.0, 4.5))
            lines: dict[Any, dict[Any, list[int]]] = {}
            for r in recs:
                line = r["policy_label"] if field == "workload_params" else base(r)
                lines.setdefault(line, {}).setdefault(r[field][param], []).append(r["cycles"])
            for i, (line, points) in enumerate(lines.items()):
                xs = sorted(points)
                mid = [mean(points[x]) / 1e6 for x in xs]
                ax.plot(xs, mid, marker="o", color=_color(plt, i),
                        label=line if isinstance(line, str) else _base_label(line, param))
                ax.fill_between(xs, [min(points[x]) / 1e6 for x in xs],
                                [max(points[x]) / 1e6 for x in xs], color=_color(plt, i), alpha=0.2)
            wname = wkey if isinstance(wkey, str) else _base_label(wkey, param)
            ax.set_xlabel(f"{param} ({scope} parameter)")
            ax.set_ylabel("simulated cycles (millions; line: mean, band: min-max over seeds)")
            _titles(fig, ax, f"{wname}: cycles against {param}", _subtitle(doc, recs))
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
            ax.grid(alpha=0.3)
            paths += _save(fig, folder, f"sweep-{slug(param)}-{slug(wname)}")
            plt.close(fig)
    return paths


def _base_label(key: tuple, param: str) -> str:
    name, rest = key
    shown = [f"{k}={v}" for k, v in rest if k != "quick"]
    return name + (f"[{','.join(shown)}]" if shown else "") + f" (by {param})"


def _chart(job: tuple[str, str | None], doc: dict[str, Any], folder: str) -> list[str]:
    """Draw one chart: (kind, workload label) with kind cycles, traps, opt-ratio or sweeps."""
    plt = _plt()
    kind, label = job
    if kind in ("cycles", "traps"):
        records = [r for r in doc["records"] if r["workload_label"] == label]
        draw = cycles_chart if kind == "cycles" else traps_chart
        return draw(plt, doc, label, records, folder)
    return opt_ratio_chart(plt, doc, folder) if kind == "opt-ratio" else sweep_charts(plt, doc, folder)


def write_charts(doc: dict[str, Any], folder: str, jobs: int = 1) -> list[str]:
    """Every chart the document supports, into ``folder``; returns the paths written. With
    ``jobs`` > 1 the charts are drawn in that many worker processes (the files are the same)."""
    if not doc["records"]:
        return []
    os.makedirs(folder, exist_ok=True)
    todo: list[tuple[str, str | None]] = []
    grid = doc["meta"]["experiment"].get("grid") or {}
    for (label,), records in group(doc["records"], "workload_label").items():
        if not grid:
            todo.append(("cycles", label))
        if not grid and any(len(r["marks"]) >= 2 for r in records):
            todo.append(("traps", label))
    todo += [("opt-ratio", None), ("sweeps", None)]
    if jobs <= 1 or sys.platform == "win32":
        drawn = [_chart(job, doc, folder) for job in todo]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(jobs, len(todo)),
                                 mp_context=multiprocessing.get_context("fork")) as pool:
            drawn = list(pool.map(_chart, todo, [doc] * len(todo), [folder] * len(todo)))
    return [path for paths in drawn for path in paths]
