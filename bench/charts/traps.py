"""``traps-<workload>``: VM exits in each interval between the workload's MARKs (kscand and
linear-scan: per scan pass; kmap: warm-up and measured iterations), per policy.

Up to ``MAX_BAR_INTERVALS`` intervals are grouped bars (mean, min-max whiskers over seeds); more
are steps per policy with the min-max band. The axis is linear unless the nonzero values span
more than ``LOG_SPAN``; a policy with no exits in an interval is marked 0, never left out.
"""

from __future__ import annotations

from typing import Any

from bench.charts import data, style

MAX_BAR_INTERVALS = 6
LOG_SPAN = 100.0
MAX_STEP_LABELS = 12


def has_chart(records: list[data.Record]) -> bool:
    """Whether the records have at least two intervals to compare."""
    if not records or not records[0]["marks"]:
        return False
    phases, tail = data.intervals(records)
    return len(phases) + tail >= 2


def draw(doc: dict[str, Any], workload: str, width: str):
    records = [r for r in doc["records"] if r["workload_label"] == workload]
    policies = data.by_policy(records)
    phases, tail = data.intervals(records)
    count = len(phases) + (1 if tail else 0)
    names = data.phase_names(records[0]["workload"], phases, tail)
    spreads = [[data.Spread.of([data.exits_per_interval(r)[i] if i < len(phases) else
                                data.exits_per_interval(r)[-1] for r in rs])
                for i in range(count)] for _, _, rs in policies]
    fig = style.figure(width, 3.0 if width == "full" else 2.5)
    ax = fig.add_subplot()
    nonzero = [s.low for row in spreads for s in row if s.low > 0]
    top = max([s.high for row in spreads for s in row] + [0.0])
    log = bool(nonzero) and top / min(nonzero) > LOG_SPAN
    handles = []
    if count <= MAX_BAR_INTERVALS:
        slot = 0.84 / len(policies)
        for i, (label, name, _) in enumerate(policies):
            xs = [j - 0.42 + slot * (i + 0.5) for j in range(count)]
            row = spreads[i]
            ax.bar(xs, [s.mean for s in row], width=slot, color=style.policy_colour(name, label),
                   hatch=style.policy_hatch(name), edgecolor="white", linewidth=0.2)
            handles.append(style.policy_patch(name, label))
            ax.errorbar(xs, [s.mean for s in row],
                        yerr=data.whiskers(row),
                        fmt="none", ecolor="black", elinewidth=0.5, capsize=1, capthick=0.5)
            for x, s in zip(xs, row):
                if s.high == 0:
                    ax.annotate("0", (x, 0), xytext=(0, 1), textcoords="offset points",
                                ha="center", va="bottom", fontsize=style.MIN_FONT_PT,
                                color="#555555")
        ax.set_xticks(range(count), names)
        ax.set_xlim(-0.5, count - 0.5)
        marks = "bars: mean, whiskers: min-max"
    else:
        edges = [i - 0.5 for i in range(count + 1)]
        for i, (label, name, _) in enumerate(policies):
            colour = style.policy_colour(name, label)
            row = spreads[i]
            handles.append(ax.stairs([s.mean for s in row], edges, baseline=None, color=colour,
                                     linewidth=1.0))
            ax.stairs([s.high for s in row], edges, baseline=[s.low for s in row], fill=True,
                      color=colour, alpha=0.25, linewidth=0)
        every = -(-count // MAX_STEP_LABELS)
        ticks = list(range(0, count, every))
        ax.set_xticks(ticks, [names[i] for i in ticks], rotation=45, ha="right",
                      rotation_mode="anchor")
        ax.set_xlim(edges[0], edges[-1])
        marks = "steps: mean, bands: min-max"
    if log:
        ax.set_yscale("symlog", linthresh=max(1.0, min(nonzero)), linscale=0.3)
        ax.set_ylim(0, top * 2.0)
    else:
        style.headroom(ax, top, factor=1.1)
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(style.count_text))
    ax.set_ylabel("VM exits")
    ax.grid(axis="y", alpha=0.3, linewidth=0.4)
    ax.set_axisbelow(True)
    right = style.legend(fig, handles, [label for label, _, _ in policies], width)
    style.titles(fig, ax, f"{workload}: {data.phase_title(records[0]['workload'])}",
                 data.caption(doc, records, marks), right)
    return fig
