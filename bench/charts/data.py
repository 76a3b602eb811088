"""What the charts draw, taken from a results document: records by policy in chart order, seed
spreads (mean, min, max), the exits between MARKs, short configuration captions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bench.charts import style

Record = dict[str, Any]


@dataclass(frozen=True)
class Spread:
    """A value over seeds: its mean and its range."""

    mean: float
    low: float
    high: float

    @staticmethod
    def of(values: list[float]) -> "Spread":
        return Spread(sum(values) / len(values), min(values), max(values))


def slug(text: str) -> str:
    """A file-name-safe form of a label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "chart"


def whiskers(spreads: list[Spread]) -> list[list[float]]:
    """matplotlib's ``yerr`` for min-max whiskers around the means."""
    return [[max(0.0, s.mean - s.low) for s in spreads], [max(0.0, s.high - s.mean) for s in spreads]]


def by_policy(records: list[Record]) -> list[tuple[str, str, list[Record]]]:
    """(label, policy name, records) per policy label, in chart order (style.order_policies)."""
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(r["policy_label"], []).append(r)
    names = {label: rs[0]["policy"] for label, rs in groups.items()}
    order = style.order_policies([(names[label], label) for label in groups])
    return [(label, names[label], groups[label]) for label in order]


def workloads(records: list[Record]) -> list[str]:
    """Workload labels in the run's order."""
    return list(dict.fromkeys(r["workload_label"] for r in records))


def seed_count(records: list[Record]) -> int:
    return len({r["seed"] for r in records})


def seeds_text(records: list[Record]) -> str:
    """``3 seeds``; ``3 seeds (1 for the recorded guests)`` when workloads ran different numbers
    (a recorded guest's replay does not depend on the seed and runs one)."""
    per: dict[str, set[int]] = {}
    for r in records:
        per.setdefault(r["workload_label"], set()).add(r["seed"])
    counts = sorted({len(s) for s in per.values()}, reverse=True) or [0]
    text = f"{counts[0]} seed{'s' if counts[0] != 1 else ''}"
    for n in counts[1:]:
        fewer = {r["workload"] for r in records if len(per[r["workload_label"]]) == n}
        who = "the recorded guests" if fewer == {"guest"} else "some workloads"
        text += f" ({n} for {who})"
    return text


def caption(doc: dict[str, Any], records: list[Record], marks: str) -> str:
    """``core2-penryn-2008 prices, 3 seeds; <what the marks mean>``."""
    return f"{doc['meta']['cost_profile']['name']} prices, {seeds_text(records)}; {marks}"


# -- phases ------------------------------------------------------------------------------------
PASS_WORKLOADS = frozenset({"kscand", "linear-scan"})
"""Workloads whose MARK phase is the number of the scan pass that just ended."""
NAMED_PHASES: dict[str, dict[int, str]] = {"kmap": {0: "warm-up", 1: "measured iterations"}}


def phase_names(workload: str, phases: list[int], tail: bool) -> list[str]:
    """A name per interval: one ending at each MARK, and the one after the last MARK if
    ``tail``."""
    if workload in PASS_WORKLOADS:
        names = [f"pass {p}" for p in phases]
        after = f"after pass {phases[-1]}" if phases else "run"
    else:
        known = NAMED_PHASES.get(workload, {})
        names = [known.get(p, f"phase {p}") for p in phases]
        after = "after the last phase"
    return names + ([after] if tail else [])


def phase_title(workload: str) -> str:
    if workload in PASS_WORKLOADS:
        return "VM exits per scan pass"
    if workload in NAMED_PHASES:
        return "VM exits in " + " and ".join(NAMED_PHASES[workload].values())
    return "VM exits per phase"


def phase_note(workload: str) -> str:
    """What an interval counts, for the caption."""
    if workload in PASS_WORKLOADS:
        return "a pass counts from the previous pass's end (pass 1: from the start)"
    return "each phase counts from the previous MARK (the first: from the start)"


def exits_per_interval(record: Record) -> list[int]:
    """Exits in each interval ending at a MARK, then those after the last MARK."""
    out, previous = [], 0
    for mark in record["marks"]:
        exits = mark["counters"].get("exits", 0)
        out.append(exits - previous)
        previous = exits
    out.append(record["counters"].get("exits", 0) - previous)
    return out


def intervals(records: list[Record]) -> tuple[list[int], bool]:
    """The MARK phases every record shares (the first record's), and whether any record has
    exits after its last MARK."""
    phases = [m["phase"] for m in records[0]["marks"]] if records else []
    tail = any(exits_per_interval(r)[-1] for r in records)
    return phases, tail


# -- labels ------------------------------------------------------------------------------------
def value_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def without_param(label: str, params: dict[str, Any], key: str) -> str:
    """A ``name[k=v,...]`` label without its ``key=`` entry."""
    name, bracket, rest = label.partition("[")
    if not bracket:
        return label
    inner = rest[:-1] if rest.endswith("]") else rest
    drop = f"{key}={value_text(params[key])}" if key in params else None
    pieces = [p for p in _pieces(inner, params) if p != drop]
    return name + ("[" + ",".join(pieces) + "]" if pieces else "")


def _pieces(inner: str, params: dict[str, Any]) -> list[str]:
    """The k=v entries of a label's bracket, found by the record's own parameters (a value may
    hold a comma)."""
    found = []
    for key in sorted(params):
        piece = f"{key}={value_text(params[key])}"
        if ("," + inner + ",").find("," + piece + ",") >= 0:
            found.append(piece)
    return found
