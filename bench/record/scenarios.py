"""The guest scenarios: which script runs, with which settings, its phases and its proof.

Each scenario is a shell script in guest/scenarios/ run by the guest's /init (guest/init.sh) with
the settings below in its environment; it drives guest/sbload.c, which marks the phases. Its proof
is checked from /proc/vmstat before and after (and the program's own output): a scenario that did
not do what it claims ends the recording with an error, never a recording.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench.errors import unknown_name
from bench.record.errors import EnvironmentFailure

Vmstat = dict[str, int]


class ScenarioFailed(EnvironmentFailure):
    """The guest ran, but the scenario's proof does not hold (exit status 1)."""


def _delta(before: Vmstat, after: Vmstat, prefix: str) -> int:
    return sum(after.get(k, 0) - before.get(k, 0) for k in after if k.startswith(prefix))


def _proof_reclaim(before: Vmstat, after: Vmstat, out: dict[str, str]) -> dict[str, int]:
    proof = {"pgscan": _delta(before, after, "pgscan_"), "pgsteal": _delta(before, after, "pgsteal_"),
             "pswpout": _delta(before, after, "pswpout"), "pswpin": _delta(before, after, "pswpin")}
    if min(proof.values()) <= 0:
        raise ScenarioFailed(f"scenario reclaim created no memory pressure (vmstat deltas {proof})")
    return proof


def _proof_fork(before: Vmstat, after: Vmstat, out: dict[str, str]) -> dict[str, int]:
    proof = {"children_ok": int(out.get("children_ok", "0")),
             "pgfault": _delta(before, after, "pgfault")}
    if proof["children_ok"] <= 0 or str(proof["children_ok"]) != out.get("children"):
        raise ScenarioFailed(f"scenario fork-exit: children did not all exit cleanly ({out})")
    return proof


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    script: str
    phases: tuple[str, ...]
    """Names of phases 1, 2, ... (what guest/sbload.c marks)."""
    settings: dict[str, str]
    proof: Callable[[Vmstat, Vmstat, dict[str, str]], dict[str, int]] = field(compare=False)
    swap: bool = False
    """Whether the guest sets up zram swap."""


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("reclaim", "anonymous memory above a cgroup v2 memory.max with zram swap",
             "reclaim.sh", ("fill", "reclaim"),
             {"SB_MB": "16", "SB_LIMIT_MB": "8", "SB_PASSES": "2"}, _proof_reclaim, swap=True),
    Scenario("fork-exit", "a parent forks children one at a time; each writes its pages and exits",
             "fork-exit.sh", ("fork-exit",), {"SB_CHILDREN": "16", "SB_KB": "1024"}, _proof_fork),
)}


def get(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise unknown_name("scenario", name, SCENARIOS)
    return SCENARIOS[name]
