"""report.md: the run's provenance, a summary table per workload with the spread over seeds
(rows by cost), a comparison against a named baseline, and the charts with their captions."""

from __future__ import annotations

import os
from typing import Any

from bench import stats
from bench.files import atomic_write_text

REPORT_MD = "report.md"
REAL_GUEST = "guest"
"""The workload that replays a recorded real guest: its tables carry the era markers."""
IMAGE_FORMATS = ("png", "svg", "pdf")
"""The format a chart is embedded in: the first of these that was written."""

COLUMNS = ("policy", "exits", "pte writes emulated", "unshadows", "shadow pages rebuilt",
           "Mcycles", "overhead", "opt ratio")


def _spread(values: list[float], digits: int, suffix: str = "") -> str:
    """``mean (min-max)``, or the value alone when the min and the max round the same."""
    if not values:
        return "-"
    mean = sum(values) / len(values)
    lo, hi = min(values), max(values)
    text = f"{mean:,.{digits}f}{suffix}"
    if f"{lo:,.{digits}f}" != f"{hi:,.{digits}f}":
        text += f" ({lo:,.{digits}f}-{hi:,.{digits}f}{suffix})"
    return text


def summary_table(records: list[dict[str, Any]], marked: bool = False) -> str:
    """One row per policy: mean (min-max over seeds) of each column, cheapest policy first;
    ``marked`` adds each policy's era marker (bench.record.era: a real guest's table)."""
    from bench.record import era

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["policy_label"], []).append(r)
    order = sorted(groups, key=lambda p: (sum(r["cycles"] for r in groups[p]) / len(groups[p]), p))
    rows = []
    for label in order:
        rs = groups[label]
        rows.append([
            era.marked(rs[0]["policy"], label) if marked else label,
            _spread([r["counters"].get("exits", 0) for r in rs], 0),
            _spread([r["counters"].get("mmu_pte_write", 0) for r in rs], 0),
            _spread([stats.unshadows(r["counters"]) for r in rs], 0),
            _spread([r["counters"].get("mmu_cache_miss", 0) for r in rs], 0),
            _spread([r["cycles"] / 1e6 for r in rs], 2),
            _spread([r["overhead"] for r in rs if r["overhead"] is not None], 2, "x"),
            _spread([r["opt_ratio"] for r in rs if r["opt_ratio"] is not None], 3),
        ])
    return stats.markdown_table(list(COLUMNS), rows)


TIE = 0.001
"""Two cells tie when their cycles differ by at most 0.1% (as in ``python -m bench compare``)."""


def comparison_table(records: list[dict[str, Any]], base: str) -> str | None:
    """Per policy: its cycles over the baseline's, paired by seed: the geometric mean and the
    min-max of the per-seed ratios, and win/tie/loss counts; the cheapest policy first."""
    import math

    cells = {(r["policy_label"], r["seed"]): r["cycles"] for r in records}
    rows = []
    for label in dict.fromkeys(r["policy_label"] for r in records):
        if label == base:
            continue
        ratios = [cells[(label, seed)] / cells[(base, seed)]
                  for (lab, seed) in cells if lab == label
                  and cells.get((base, seed), 0) > 0 and cells[(label, seed)] > 0]
        if not ratios:
            continue
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        wins = sum(x < 1 - TIE for x in ratios)
        ties = sum(abs(x - 1) <= TIE for x in ratios)
        rows.append((geo, label, [label, str(len(ratios)), f"{geo:.3f}",
                                  f"{min(ratios):.3f}-{max(ratios):.3f}",
                                  f"{wins}/{ties}/{len(ratios) - wins - ties}"]))
    if not rows:
        return None
    rows.sort(key=lambda row: (row[0], row[1]))
    return stats.markdown_table(["policy", "seeds", "ratio (geometric mean)", "min-max over seeds",
                                 "win/tie/loss"], [row[2] for row in rows])


def baseline(doc: dict[str, Any]) -> tuple[str, str]:
    """The comparison's baseline policy label and why it is the one."""
    records = doc["records"]
    labels = list(dict.fromkeys(r["policy_label"] for r in records))
    if "always-emulate" in labels:
        return "always-emulate", "the bare mechanism, every page-table write emulated"
    grid = doc["meta"]["experiment"].get("grid") or {}
    from bench.registry import policies

    known = policies()
    for key in grid:
        scope, _, param = key.partition(".")
        if scope != "policy":
            continue
        for r in records:
            cls = known.get(r["policy"])
            spec = getattr(cls, "params", {}).get(param) if cls is not None else None
            if spec is not None and r["policy_params"].get(param) == spec.default:
                return r["policy_label"], f"{r['policy']} with {param} at its default"
    from bench.charts import style

    first = style.order_policies([(r["policy"], r["policy_label"]) for r in records])[0]
    return first, "the first policy in chart order (this run has no always-emulate)"


def _embedded(charts: list[str]) -> dict[str, str]:
    """Chart name -> the path to embed (PNG, else SVG, else PDF)."""
    out: dict[str, str] = {}
    for fmt in IMAGE_FORMATS:
        for path in charts:
            name, ext = os.path.splitext(os.path.basename(path))
            if ext == f".{fmt}" and name not in out:
                out[name] = path
    return out


def _image(name: str, path: str, folder: str, doc: dict[str, Any]) -> list[str]:
    from bench.charts import captions

    return [f"![{name}]({os.path.relpath(path, folder)})", "", f"*{captions.caption(doc, name)}*",
            ""]


def policies_table(records: list[dict[str, Any]]) -> list[str]:
    """Every policy label with all its parameters, defaults included, so a row says which
    release and rule it ran (e.g. xen-batch's Xen ``version``, flood-count's ``variant``)."""
    seen: dict[str, dict[str, Any]] = {}
    for r in records:
        seen.setdefault(r["policy_label"], r["policy_params"])
    if not seen:
        return []
    out = ["| policy | parameters (defaults included) |", "|---|---|"]
    for label, params in seen.items():
        text = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                         for k, v in sorted(params.items())) or "-"
        out.append(f"| {label} | {text} |")
    return ["## Policies", "", *out, ""]


def report_text(doc: dict[str, Any], charts: list[str], folder: str) -> str:
    from bench.charts import slug

    meta = doc["meta"]
    profile = meta["cost_profile"]
    vol = meta.get("volatile", {})
    seeds = len(meta["seeds"])
    one_seed = sorted({r["workload_label"] for r in doc["records"]
                       if r["workload"] == REAL_GUEST}) if seeds > 1 else []
    lines = ["# shadowbench results", ""]
    if not doc["complete"]:
        failed = any(n.startswith("stopped because a cell raised") for n in meta.get("notes", []))
        then = ("A cell raised (see the note below and failure.txt); fix it, then rerun the "
                "same command to resume." if failed else "Rerun the same command to resume.")
        lines += [f"**Partial run: {meta['cells_done']} of {meta['cells_expected']} cells "
                  f"finished. {then}**", ""]
    lines += [
        f"- project version {meta['project_version']}, git commit {meta.get('git_commit') or 'none'}",
        f"- cost profile `{profile['name']}`: {profile['cpu']}"
        + (f" (re-priced from `{meta['repriced_from']}`)" if meta.get("repriced_from") else ""),
        f"- seeds: {', '.join(str(s) for s in meta['seeds'])}",
        f"- command: `{' '.join(vol.get('command', []))}`" if vol.get("command") else "- command: -",
        f"- started {vol.get('started', '-')}, host {vol.get('host', {}).get('hostname', '-')}",
    ]
    lines += [f"- note: {n}" for n in meta.get("notes", [])]
    lines += ["", f"Each cell is the mean over seeds with, in brackets, the min-max over {seeds} "
              f"seed{'s' if seeds != 1 else ''} (the value alone where the min and the max round to "
              "the same)"
              + ("; a recorded guest's replay does not depend on the seed, so it ran with the "
                 f"first seed only ({', '.join(one_seed)})" if one_seed else "") + ". "
              "Rows are ordered by mean cycles, cheapest first. Overhead is simulated cycles over "
              "native cycles; opt ratio is the cycles of the policy's decisions over the offline "
              "optimum's (`-` outside the optimum's model).", ""]
    lines += policies_table(doc["records"])
    images = _embedded(charts)
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for r in doc["records"]:
        by_workload.setdefault(r["workload_label"], []).append(r)
    shown = set()
    for wl, rows in by_workload.items():
        real = rows[0]["workload"] == REAL_GUEST
        lines += [f"## {wl}", "", summary_table(rows, marked=real), ""]
        if real:
            from bench.record import era

            lines += [era.LEGEND, ""]
        for name in (f"cycles-{slug(wl)}", f"traps-{slug(wl)}"):
            if name in images:
                lines += _image(name, images[name], folder, doc)
                shown.add(name)
    if doc["records"] and len({r["policy_label"] for r in doc["records"]}) > 1:
        base, why = baseline(doc)
        lines += ["## Paired comparison", "",
                  f"Cycles relative to the baseline `{base}` ({why}), paired by seed: the "
                  "geometric mean of the per-seed ratios and their min-max; a win is fewer "
                  f"cycles, a tie within {TIE:.1%}. Rows by ratio, cheapest first. "
                  "`python -m bench compare` gives intervals and other baselines.", ""]
        for wl, rows in by_workload.items():
            table = comparison_table(rows, base)
            if table:
                lines += [f"### {wl}", "", table, ""]
    others = [n for n in images if n not in shown]
    if others:
        lines += ["## Charts", ""]
        for name in others:
            lines += _image(name, images[name], folder, doc)
    lines += ["Charts are regenerated from results.json alone by "
              "`python -m bench plot results.json` (`--format`, `--width column|full`, `--only`).",
              ""]
    return "\n".join(lines)


def write_report(doc: dict[str, Any], charts: list[str], folder: str) -> str:
    path = os.path.join(folder, REPORT_MD)
    atomic_write_text(path, report_text(doc, charts, folder))
    return path
