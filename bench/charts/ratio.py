"""``opt-ratio``: each policy's cycles of its decisions over the offline optimum's, per workload.

Bars grow from 1 (the optimum) on a log axis with ticks 1x, 2x, 5x...; each bar ends in a line
of its colour, so a ratio of exactly 1 still shows, and carries the min-max over seeds. A policy
outside the optimum's model (out-of-sync pages, batched emulation, two-dimensional paging) gets
a grey x at its place, listed in the legend as n/a.
"""

from __future__ import annotations

from typing import Any

from bench.charts import data, style

NA_AT = 1.04
NA_LABEL = "n/a (outside the model)"
FULL_LINES_MOST = 8
"""The most workloads a full-width ratio chart labels in stacked lines; more (the default run's
12) collide, and take the rotated one-line labels of the column width."""


def has_chart(records: list[data.Record]) -> bool:
    return any(r["opt_ratio"] is not None for r in records)


def axis(ax, low: float, high: float) -> None:
    """A log ratio axis from just below ``low`` (and 1) to above ``high``, natural ticks, 1 drawn."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    low, high = min(low, 1.0) / 1.06, max(high, 1.0) * 1.25
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ax.yaxis.set_major_locator(FixedLocator(style.ratio_ticks(low, high)))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: style.ratio_text(v)))
    ax.axhline(1.0, color="black", linewidth=0.8, zorder=3)
    ax.grid(axis="y", alpha=0.3, linewidth=0.4)
    ax.set_axisbelow(True)


def draw(doc: dict[str, Any], width: str):
    records = doc["records"]
    workloads = data.workloads(records)
    policies = data.by_policy(records)
    fig = style.figure(width, 3.2 if width == "full" else 2.9)
    ax = fig.add_subplot()
    slot = 0.86 / len(policies)
    handles, labels, values = [], [label for label, _, _ in policies], []
    na_marks = []
    for i, (label, name, rs) in enumerate(policies):
        colour = style.policy_colour(name, label)
        xs, spreads = [], []
        for j, wl in enumerate(workloads):
            x = j - 0.43 + slot * (i + 0.5)
            cell = [r for r in rs if r["workload_label"] == wl]
            ratios = [r["opt_ratio"] for r in cell if r["opt_ratio"] is not None]
            if ratios:
                xs.append(x)
                spreads.append(data.Spread.of(ratios))
            elif cell:
                na_marks.append(x)
        ax.bar(xs, [s.mean - 1.0 for s in spreads], bottom=1.0, width=slot, color=colour,
               hatch=style.policy_hatch(name), edgecolor="white", linewidth=0.2)
        handles.append(style.policy_patch(name, label))
        ax.hlines([s.mean for s in spreads], [x - slot / 2 for x in xs],
                  [x + slot / 2 for x in xs], colors=colour, linewidth=1.2, zorder=4)
        ax.errorbar(xs, [s.mean for s in spreads],
                    yerr=data.whiskers(spreads),
                    fmt="none", ecolor="black", elinewidth=0.5, capsize=1, capthick=0.5, zorder=5)
        values += [v for s in spreads for v in (s.low, s.high)]
    axis(ax, min(values + [1.0]), max(values + [1.0]))
    if na_marks:
        from matplotlib.lines import Line2D

        ax.plot(na_marks, [NA_AT] * len(na_marks), linestyle="none", marker="x", markersize=3,
                markeredgewidth=0.7, color="#555555", zorder=5)
        handles.append(Line2D([], [], linestyle="none", marker="x", markersize=3,
                              markeredgewidth=0.7, color="#555555"))
        labels.append(NA_LABEL)
    params = {wl: next(r["workload_params"] for r in records if r["workload_label"] == wl)
              for wl in workloads}
    if width == "full" and len(workloads) <= FULL_LINES_MOST:
        ax.set_xticks(range(len(workloads)), [style.short_workload(wl, params[wl])
                                              for wl in workloads])
    else:
        ax.set_xticks(range(len(workloads)),
                      [style.short_workload(wl, params[wl], lines=False) for wl in workloads],
                      rotation=40, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.5, len(workloads) - 0.5)
    ax.set_ylabel("decision cycles / optimum's (1x: optimal)")
    right = style.legend(fig, handles, labels, width)
    style.titles(fig, ax, "Ratio to the offline optimum",
                 data.caption(doc, records, "bars: mean, whiskers: min-max"), right)
    return fig
