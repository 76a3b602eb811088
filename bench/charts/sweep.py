"""Sweep charts: a swept parameter against cycles (``sweep-<param>-<workload>``) and against the
ratio to the offline optimum (``sweep-ratio-<param>-<workload>``), one line per policy (mean,
markers) with the min-max band over seeds.

One chart per swept parameter and workload configuration (the workload's other parameters;
``-2``, ``-3`` ... tell apart several configurations of one workload, in the run's order). A
policy that does not take a swept policy parameter is drawn as a dashed line at its own value;
a policy outside the optimum's model is listed as "n/a" in the ratio chart's legend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.charts import data, ratio, style


@dataclass
class Group:
    """The records of one sweep chart pair."""

    stem: str            # <param>-<workload>[-N], the file names' common part
    key: str             # the grid key (policy.KEY / workload.KEY)
    param: str
    scope: str           # policy or workload
    workload: str        # the workload configuration's label (without the swept parameter)
    swept: list[data.Record] = field(default_factory=list)
    constant: list[data.Record] = field(default_factory=list)


def groups(doc: dict[str, Any]) -> list[Group]:
    grid = doc["meta"]["experiment"].get("grid") or {}
    out: list[Group] = []
    for key in grid:
        scope, _, param = key.partition(".")
        if not param:
            scope, param = "workload", scope
        where = "policy_params" if scope == "policy" else "workload_params"
        found: dict[str, Group] = {}
        for r in doc["records"]:
            if scope == "workload":
                if param not in r["workload_params"]:
                    continue
                wl = data.without_param(r["workload_label"], r["workload_params"], param)
            else:
                wl = r["workload_label"]
            if wl not in found:
                found[wl] = Group("", key, param, scope, wl)
            g = found[wl]
            (g.swept if param in r[where] else g.constant).append(r)
        per_name: dict[str, int] = {}
        for wl, g in found.items():
            if not g.swept:
                continue
            name = wl.partition("[")[0]
            per_name[name] = per_name.get(name, 0) + 1
            g.stem = f"{data.slug(param)}-{data.slug(name)}" + (
                f"-{per_name[name]}" if per_name[name] > 1 else "")
            out.append(g)
    return out


def chart_names(doc: dict[str, Any]) -> list[str]:
    names = []
    for g in groups(doc):
        names.append(f"sweep-{g.stem}")
        if ratio.has_chart(g.swept + g.constant):
            names.append(f"sweep-ratio-{g.stem}")
    return names


def _x_values(g: Group) -> tuple[list[Any], bool]:
    where = "policy_params" if g.scope == "policy" else "workload_params"
    values = list(dict.fromkeys(r[where][g.param] for r in g.swept))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    return (sorted(values) if numeric else values), numeric


def _line_label(g: Group, r: data.Record) -> str:
    if g.scope == "policy":
        return data.without_param(r["policy_label"], r["policy_params"], g.param)
    return r["policy_label"]


def draw(doc: dict[str, Any], name: str, width: str):
    kind = "ratio" if name.startswith("sweep-ratio-") else "cycles"
    stem = name[len("sweep-ratio-"):] if kind == "ratio" else name[len("sweep-"):]
    g = next(x for x in groups(doc) if x.stem == stem)
    value = ((lambda r: r["opt_ratio"]) if kind == "ratio" else (lambda r: r["cycles"] / 1e6))
    xs_all, numeric = _x_values(g)
    where = "policy_params" if g.scope == "policy" else "workload_params"
    position = {v: (v if numeric else i) for i, v in enumerate(xs_all)}
    lines: dict[str, tuple[str, dict[Any, list[float]]]] = {}
    for r in g.swept:
        points = lines.setdefault(_line_label(g, r), (r["policy"], {}))[1]
        v = value(r)
        if v is not None:
            points.setdefault(r[where][g.param], []).append(v)
    constants: dict[str, tuple[str, list[float]]] = {}
    for r in g.constant:
        constants.setdefault(r["policy_label"], (r["policy"], []))
        if value(r) is not None:
            constants[r["policy_label"]][1].append(value(r))
    fig = style.figure(width, 2.8 if width == "full" else 2.3)
    ax = fig.add_subplot()
    handles, labels, highs, lows = [], [], [], []
    order = style.order_policies([(p, label) for label, (p, _) in lines.items()]
                                 + [(p, label) for label, (p, _) in constants.items()])
    x_lo, x_hi = position[xs_all[0]], position[xs_all[-1]]
    for label in order:
        if label in lines:
            policy, points = lines[label]
            colour = style.policy_colour(policy, label)
            xs = [x for x in xs_all if x in points]
            if not xs:
                handles.append(_na_handle())
                labels.append(f"{label}: n/a")
                continue
            spreads = [data.Spread.of(points[x]) for x in xs]
            px = [position[x] for x in xs]
            handles.append(ax.plot(px, [s.mean for s in spreads], markersize=3.5, color=colour,
                                   marker=style.policy_marker(policy, label), linewidth=1.0)[0])
            ax.fill_between(px, [s.low for s in spreads], [s.high for s in spreads],
                            color=colour, alpha=0.2, linewidth=0)
            labels.append(label)
        else:
            policy, values = constants[label]
            colour = style.policy_colour(policy, label)
            if not values:
                handles.append(_na_handle())
                labels.append(f"{label}: n/a")
                continue
            s = data.Spread.of(values)
            handles.append(ax.hlines(s.mean, x_lo, x_hi, colors=colour, linestyles="--",
                                     linewidth=1.0))
            ax.fill_between([x_lo, x_hi], [s.low] * 2, [s.high] * 2, color=colour, alpha=0.15,
                            linewidth=0)
            labels.append(f"{label} (no {g.param})")
            spreads = [s]
        highs += [s.high for s in spreads]
        lows += [s.low for s in spreads]
    if kind == "ratio":
        ratio.axis(ax, min(lows + [1.0]), max(highs + [1.0]))
        ax.set_ylabel("decision cycles / optimum's (1x: optimal)")
        what = "ratio to the offline optimum"
    else:
        style.headroom(ax, max(highs + [0.0]))
        ax.set_ylabel("simulated Mcycles")
        ax.grid(axis="y", alpha=0.3, linewidth=0.4)
        what = "cycles"
    if not numeric:
        ax.set_xticks(range(len(xs_all)), [data.value_text(v) for v in xs_all])
    if x_lo == x_hi or not numeric:
        ax.set_xlim(x_lo - 0.5, x_hi + 0.5)
    ax.set_xlabel(f"{g.param} ({g.scope} parameter)")
    records = g.swept + g.constant
    right = style.legend(fig, handles, labels, width)
    style.titles(fig, ax, f"{g.workload}: {what} against {g.param}",
                 data.caption(doc, records, "lines: mean, bands: min-max"), right)
    return fig


def _na_handle():
    from matplotlib.lines import Line2D

    return Line2D([], [], linestyle="none", marker="x", markersize=3, markeredgewidth=0.7,
                  color="#555555")


def caption(doc: dict[str, Any], name: str) -> str:
    """Which workload configuration and swept parameter a sweep chart shows (for report.md)."""
    stem = name[len("sweep-ratio-"):] if name.startswith("sweep-ratio-") else name[len("sweep-"):]
    g = next(x for x in groups(doc) if x.stem == stem)
    return f"{g.workload}, {g.scope} parameter {g.param} swept over " + ", ".join(
        data.value_text(v) for v in _x_values(g)[0])
