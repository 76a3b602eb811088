"""Statistics on stored results: summaries, comparisons paired by seed, perf-kvm-stat tables.

Every policy sees the same guest run for a given seed, so policies are compared seed by seed:
the per-seed ratio of cycles to a baseline, its geometric mean with an interval that claims no
more than the seeds support (``interval``: none from one seed, a Student-t 95% interval on the
log ratios from 2 to BOOTSTRAP_MIN_SEEDS - 1 seeds, a percentile bootstrap from
BOOTSTRAP_MIN_SEEDS on; every table names the method), and win/tie/loss counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench import costs
from bench.errors import BenchError, unknown_name
from bench.machine.counters import EXIT_REASON_OF_CAUSE

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_MIN_SEEDS = 20
"""Fewer seeds than this get a t-interval: a bootstrap of a handful of seeds only resamples
them, and its percentile interval is (nearly) their range, narrower than the data supports."""
T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930)
"""The 0.975 quantile of Student's t with 1, 2, ... 19 degrees of freedom (tests/test_stats.py
checks each against a numerical integration of the density)."""
TIE_TOLERANCE = 0.001
"""Two cells tie when their cycles differ by at most 0.1%."""

SUMMARY_COLUMNS = ("policy", "exits", "pte writes emulated", "unshadows", "shadow pages rebuilt",
                   "Mcycles", "overhead", "opt ratio")


def unshadows(counters: dict[str, int]) -> int:
    """Writes answered by zapping the gfn's shadow pages: by the policy's decision
    (exit_ptwrite_unshadow) or by KVM's flood/misaligned rule (mmu_flooded)."""
    return counters.get("exit_ptwrite_unshadow", 0) + counters.get("mmu_flooded", 0)


def group(records: list[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    """Records grouped by the given fields, groups in first-seen order."""
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summary_rows(records: list[dict[str, Any]]) -> dict[str, list[tuple]]:
    """Per workload entry, one row per policy (means over seeds), in the order of SUMMARY_COLUMNS."""
    out: dict[str, list[tuple]] = {}
    for (wl,), recs in group(records, "workload_label").items():
        rows = []
        for (pl,), prs in group(recs, "policy_label").items():
            ratios = [r["opt_ratio"] for r in prs if r["opt_ratio"] is not None]
            overheads = [r["overhead"] for r in prs if r["overhead"] is not None]
            rows.append((
                pl,
                mean([r["counters"].get("exits", 0) for r in prs]),
                mean([r["counters"].get("mmu_pte_write", 0) for r in prs]),
                mean([unshadows(r["counters"]) for r in prs]),
                mean([r["counters"].get("mmu_cache_miss", 0) for r in prs]),
                mean([r["cycles"] for r in prs]) / 1e6,
                mean(overheads) if overheads else None,
                mean(ratios) if ratios else None,
            ))
        out[wl] = rows
    return out


def format_row(row: tuple) -> list[str]:
    pl, exits, ptw, unsh, rebuilt, mcyc, over, ratio = row
    return [pl, f"{exits:,.0f}", f"{ptw:,.0f}", f"{unsh:,.0f}", f"{rebuilt:,.0f}", f"{mcyc:,.2f}",
            "-" if over is None else f"{over:.3f}x", "-" if ratio is None else f"{ratio:.3f}"]


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to width; the first left-aligned, the others right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = []
    for i, row in enumerate([header] + rows):
        cells = [str(c).ljust(w) if j == 0 else str(c).rjust(w)
                 for j, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def summary_text(doc: dict[str, Any]) -> str:
    """The per-workload summary tables printed after a run."""
    profile = doc["meta"]["cost_profile"]["name"]
    parts = []
    for wl, rows in summary_rows(doc["records"]).items():
        seeds = len({r["seed"] for r in doc["records"] if r["workload_label"] == wl})
        parts.append(f"{wl}  (cost profile {profile}; means over {seeds} seed(s))")
        parts.append(text_table(list(SUMMARY_COLUMNS), [format_row(r) for r in rows]))
        parts.append("")
    if not doc["complete"]:
        parts.append(f"partial results: {doc['meta']['cells_done']} of "
                     f"{doc['meta']['cells_expected']} cells")
    return "\n".join(parts).rstrip() + "\n"


# -- paired comparison -------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """An interval for a geometric mean ratio; ``method`` says how it was made (a key of
    METHOD_LABELS); ``low``/``high`` are None when there is none (one seed)."""

    low: float | None
    high: float | None
    method: str


METHOD_LABELS = {
    "none": "no interval (one seed)",
    "t": "95% t-interval on the log ratios",
    "bootstrap": f"95% percentile bootstrap ({BOOTSTRAP_SAMPLES} resamples of the seeds)",
}


def interval_method(seeds: int) -> str:
    """Which interval ``interval`` gives for this many seeds: "none", "t" or "bootstrap"."""
    if seeds < 2:
        return "none"
    return "t" if seeds < BOOTSTRAP_MIN_SEEDS else "bootstrap"


def interval_label(seeds: int) -> str:
    """The method's words for a table or chart caption, e.g. "95% t-interval on the log ratios
    (3 seeds)"."""
    return f"{METHOD_LABELS[interval_method(seeds)]} ({seeds} seed{'s' if seeds != 1 else ''})"


@dataclass
class Comparison:
    workload: str
    policy: str
    seeds: int
    ratio: float
    low: float | None
    high: float | None
    method: str
    wins: int
    ties: int
    losses: int


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def t_interval(ratios: list[float]) -> tuple[float, float]:
    """Student-t 95% interval of the mean log ratio, mapped back (needs 2 to 20 ratios)."""
    logs = [math.log(r) for r in ratios]
    n = len(logs)
    centre = sum(logs) / n
    sd = math.sqrt(sum((x - centre) ** 2 for x in logs) / (n - 1))
    half = T_975[n - 2] * sd / math.sqrt(n)
    return math.exp(centre - half), math.exp(centre + half)


def bootstrap_ci(ratios: list[float], samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """Percentile 95% interval of the geometric mean: the seeds resampled ``samples`` times
    with numpy's generator seeded 0 (so the interval repeats), vectorised."""
    import numpy as np

    logs = np.log(np.asarray(ratios, dtype=float))
    picks = np.random.default_rng(0).integers(0, len(logs), size=(samples, len(logs)))
    means = np.sort(logs[picks].mean(axis=1))
    return (float(math.exp(means[int(0.025 * (samples - 1))])),
            float(math.exp(means[int(math.ceil(0.975 * (samples - 1)))])))


def interval(ratios: list[float]) -> Interval:
    """The interval the seeds support (see ``interval_method``)."""
    method = interval_method(len(ratios))
    if method == "none":
        return Interval(None, None, method)
    low, high = t_interval(ratios) if method == "t" else bootstrap_ci(ratios)
    return Interval(low, high, method)


def resolve_baseline(records: list[dict[str, Any]], baseline: str | None) -> str:
    """The baseline's policy label: given by label or by a unique policy name; by default
    always-emulate (the bare mechanism) when present, else the first policy."""
    labels = list(dict.fromkeys(r["policy_label"] for r in records))
    if not labels:
        raise BenchError("the results hold no records to compare")
    if baseline is None:
        return "always-emulate" if "always-emulate" in labels else labels[0]
    if baseline in labels:
        return baseline
    named = list(dict.fromkeys(r["policy_label"] for r in records if r["policy"] == baseline))
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise BenchError(f"baseline {baseline!r} is ambiguous; give one of: {', '.join(named)}")
    raise unknown_name("baseline policy", baseline, labels)


def compare(records: list[dict[str, Any]], baseline: str) -> list[Comparison]:
    """Every other policy against ``baseline``, per workload entry, paired by seed."""
    out = []
    for (wl,), recs in group(records, "workload_label").items():
        base = {r["seed"]: r["cycles"] for r in recs if r["policy_label"] == baseline}
        for (pl,), prs in group(recs, "policy_label").items():
            if pl == baseline:
                continue
            pairs = [(r["cycles"], base[r["seed"]]) for r in prs if r["seed"] in base]
            pairs = [(c, b) for c, b in pairs if c > 0 and b > 0]
            if not pairs:
                continue
            ratios = [c / b for c, b in pairs]
            ties = sum(abs(x - 1) <= TIE_TOLERANCE for x in ratios)
            wins = sum(x < 1 - TIE_TOLERANCE for x in ratios)
            iv = interval(ratios)
            out.append(Comparison(wl, pl, len(ratios), geomean(ratios), iv.low, iv.high,
                                  iv.method, wins, ties, len(ratios) - wins - ties))
    return out


def compare_text(doc: dict[str, Any], baseline: str | None) -> str:
    records = doc["records"]
    base = resolve_baseline(records, baseline)
    rows = compare(records, base)
    profile = doc["meta"]["cost_profile"]["name"]
    parts = [f"cycles relative to {base}, paired by seed (geometric mean; win = fewer cycles, "
             f"tie within {TIE_TOLERANCE:.1%}; cost profile {profile})"]
    for seeds in sorted({c.seeds for c in rows}):
        parts.append(f"interval with {seeds} seed{'s' if seeds != 1 else ''}: "
                     f"{METHOD_LABELS[interval_method(seeds)]}")
    parts.append("")
    header = ["policy", "seeds", "ratio", "interval", "method", "win/tie/loss"]
    for (wl,), comps in group([c.__dict__ for c in rows], "workload").items():
        parts.append(wl)
        parts.append(text_table(header, [
            [c["policy"], str(c["seeds"]), f"{c['ratio']:.3f}",
             "-" if c["low"] is None else f"[{c['low']:.3f}, {c['high']:.3f}]", c["method"],
             f"{c['wins']}/{c['ties']}/{c['losses']}"]
            for c in comps]))
        parts.append("")
    if not rows:
        parts.append("nothing to compare (one policy, or no seed shared with the baseline)")
    return "\n".join(parts).rstrip() + "\n"


def compare_json(doc: dict[str, Any], baseline: str | None) -> dict[str, Any]:
    """The comparison as data (``compare --json``)."""
    base = resolve_baseline(doc["records"], baseline)
    rows = compare(doc["records"], base)
    return {"baseline": base, "cost_profile": doc["meta"]["cost_profile"]["name"],
            "tie_tolerance": TIE_TOLERANCE, "methods": METHOD_LABELS,
            "bootstrap_min_seeds": BOOTSTRAP_MIN_SEEDS,
            "comparisons": [dict(c.__dict__) for c in rows]}


# -- perf kvm stat report ----------------------------------------------------------------------
_CAUSE_COST = {
    "exit_ptwrite_emulate": "ptwrite_emulate", "exit_ptwrite_unshadow": "ptwrite_unshadow",
    "exit_ptwrite_unsync": "ptwrite_unsync", "exit_hidden_fault": "hidden_fault",
    "exit_guest_fault": "guest_fault", "exit_invlpg": "invlpg_exit", "exit_cr3": "cr3_exit",
}
_REASON_OF_CYCLE_CAUSE = {
    "emulated_pte_writes": "EXCEPTION_NMI", "extra_emulation": "EXCEPTION_NMI",
    "hidden_faults": "EXCEPTION_NMI", "guest_faults": "EXCEPTION_NMI",
    "unshadow": "EXCEPTION_NMI", "rebuild": "EXCEPTION_NMI", "unsync_resync": "EXCEPTION_NMI",
    "invlpg_exits": "INVLPG", "cr3_exits": "CR_ACCESS",
}
"""Which exit's handling time a cycle cause belongs to (work done inside a #PF exit: zaps,
rebuilds, resyncs, extra emulation; 2-D walks are no exit)."""


def kvm_stat_rows(record: dict[str, Any], profile: costs.CostProfile,
                  ghz: float) -> dict[str, Any]:
    """The `perf kvm stat report` numbers for one record (``kvm_stat_text`` prints them).

    Samples are the exits by reason; Time% shares the priced handling cycles. Min and Max are
    the cheapest and dearest exit cause of the reason (round trip + handler, plus the per-event
    work done inside the reason's exits, such as zaps and rebuilds, spread evenly over them);
    +- is the relative standard deviation of the mean over the exits' costs."""
    c = record["counters"]
    rt = profile.exit_roundtrip
    per_reason: dict[str, list[tuple[int, int]]] = {}
    for cause, reason in EXIT_REASON_OF_CAUSE.items():
        if c.get(cause):
            per_reason.setdefault(reason, []).append(
                (c[cause], rt + getattr(profile, _CAUSE_COST[cause])))
    time: dict[str, int] = {}
    for cause, cycles in record["cycles_by_cause"].items():
        reason = _REASON_OF_CYCLE_CAUSE.get(cause)
        if reason in per_reason:
            time[reason] = time.get(reason, 0) + cycles
    samples = sum(n for groups in per_reason.values() for n, _ in groups)
    total_time = sum(time.values())
    us = 1.0 / (ghz * 1000.0)
    rows = []
    order = sorted(per_reason, key=lambda r: (-sum(n for n, _ in per_reason[r]), r))
    for reason in order:
        groups = per_reason[reason]
        n = sum(k for k, _ in groups)
        t = time.get(reason, 0)
        avg = t / n
        extra = (t - sum(k * v for k, v in groups)) / n  # zaps, rebuilds... spread evenly
        costs_each = [(k, v + extra) for k, v in groups]
        var = sum(k * (v - avg) ** 2 for k, v in costs_each) / n
        rows.append({
            "reason": reason, "samples": n,
            "samples_percent": 100.0 * n / samples if samples else 0.0,
            "time_percent": 100.0 * t / total_time if total_time else 0.0,
            "min_us": min(v for _, v in costs_each) * us,
            "max_us": max(v for _, v in costs_each) * us, "avg_us": avg * us,
            "rel_stddev_percent": 100.0 * math.sqrt(var / n) / avg if avg else 0.0})
    return {"workload": record["workload_label"], "policy": record["policy_label"],
            "seed": record["seed"], "cost_profile": profile.name, "ghz": ghz, "rows": rows,
            "total_samples": samples, "total_time_us": total_time * us}


def kvm_stat_text(record: dict[str, Any], profile: costs.CostProfile, ghz: float) -> str:
    """A `perf kvm stat report` table (tools/perf/builtin-kvm.c print_result) for one record
    (the numbers: ``kvm_stat_rows``)."""
    data = kvm_stat_rows(record, profile, ghz)
    lines = [f"Analyze events for all VMs, all VCPUs:  ({data['workload']} / "
             f"{data['policy']} / seed {data['seed']}; simulated, cost profile "
             f"{profile.name}, times at {ghz:.2f} GHz)", "",
             f"{'VM-EXIT':>20s} {'Samples':>10s} {'Samples%':>9s} {'Time%':>9s} "
             f"{'Min Time':>11s} {'Max Time':>11s} {'Avg time':>16s}", ""]
    for r in data["rows"]:
        lines.append("%20s %10d %8.2f%% %8.2f%% %9.2fus %9.2fus %9.2fus ( +-%7.2f%% )" % (
            r["reason"], r["samples"], r["samples_percent"], r["time_percent"], r["min_us"],
            r["max_us"], r["avg_us"], r["rel_stddev_percent"]))
    lines += ["", f"Total Samples:{data['total_samples']}, Total events handled time:"
              f"{data['total_time_us']:.2f}us.", ""]
    return "\n".join(lines)


def select(records: list[dict[str, Any]], policy: str | None, workload: str | None,
           seed: int | None) -> list[dict[str, Any]]:
    """Records matching a policy (label or name), workload (label or name) and seed."""
    def match(record, key, value):
        return value is None or value in (record[key], record[key + "_label"])

    if policy is not None and not any(match(r, "policy", policy) for r in records):
        raise unknown_name("policy in these results", policy,
                           {r["policy_label"] for r in records})
    if workload is not None and not any(match(r, "workload", workload) for r in records):
        raise unknown_name("workload in these results", workload,
                           {r["workload_label"] for r in records})
    out = [r for r in records if match(r, "policy", policy) and match(r, "workload", workload)
           and (seed is None or r["seed"] == seed)]
    if not out:
        raise BenchError(f"no record matches (seeds here: "
                         f"{', '.join(str(s) for s in sorted({r['seed'] for r in records}))})")
    return out
