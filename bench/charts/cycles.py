"""``cycles-<workload>``: simulated cycles by cause per policy, stacked on the native cycles of
the same operations, with the min-max of the total over seeds."""

from __future__ import annotations

from typing import Any

from bench import costs
from bench.charts import data, style


def causes_present(records: list[data.Record]) -> list[str]:
    """Cycle causes any record has cycles for, in bench.costs.CAUSES order (unknown ones after)."""
    seen = {c for r in records for c, v in r["cycles_by_cause"].items() if v}
    return [c for c in costs.CAUSES if c in seen] + sorted(seen - set(costs.CAUSES))


def draw(doc: dict[str, Any], workload: str, width: str):
    records = [r for r in doc["records"] if r["workload_label"] == workload]
    policies = data.by_policy(records)
    causes = causes_present(records)
    fig = style.figure(width, 3.0 if width == "full" else 2.7)
    ax = fig.add_subplot()
    xs = list(range(len(policies)))
    bottom = [data.Spread.of([r["native_cycles"] / 1e6 for r in rs]).mean for _, _, rs in policies]
    handles = [ax.bar(xs, bottom, width=0.75, color=style.NATIVE_COLOUR, edgecolor="#777777",
                      hatch=style.NATIVE_HATCH, linewidth=0.4)]
    labels = ["native (same operations)"]
    for cause in causes:
        heights = [data.Spread.of([r["cycles_by_cause"].get(cause, 0) / 1e6 for r in rs]).mean
                   for _, _, rs in policies]
        handles.append(ax.bar(xs, heights, bottom=bottom, width=0.75,
                              color=style.cause_colour(cause), linewidth=0))
        labels.append(style.cause_label(cause))
        bottom = [b + h for b, h in zip(bottom, heights)]
    totals = [data.Spread.of([r["cycles"] / 1e6 for r in rs]) for _, _, rs in policies]
    ax.errorbar(xs, [t.mean for t in totals],
                yerr=data.whiskers(totals),
                fmt="none", ecolor="black", elinewidth=0.7, capsize=2, capthick=0.7)
    ax.set_xticks(xs, [label for label, _, _ in policies], rotation=45, ha="right",
                  rotation_mode="anchor")
    ax.set_xlim(-0.6, len(policies) - 0.4)
    ax.set_ylabel("simulated Mcycles")
    style.headroom(ax, max([t.high for t in totals] + [0.0]), factor=1.14)
    style.mark_families(ax, [name for _, name, _ in policies])
    ax.grid(axis="y", alpha=0.3, linewidth=0.4)
    ax.set_axisbelow(True)
    right = style.legend(fig, handles[::-1], labels[::-1], width)
    style.titles(fig, ax, f"{workload}: cycles by cause",
                 data.caption(doc, records, "bars: mean, whiskers: min-max of the total"), right)
    return fig
