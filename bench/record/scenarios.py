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


def _num(out: dict[str, str], key: str) -> int:
    try:
        return int(out.get(key, "-1"))
    except ValueError:
        return -1


def _check_demand(out: dict[str, str]) -> dict[str, int]:
    """The touch loop took exactly one minor fault per 4 KiB page (getrusage around it), the
    system's pgfault grew by at least as much across it and no huge page was faulted."""
    proof = {k: _num(out, f"demand.{k}") for k in ("pages", "minflt", "pgfault", "thp_fault_alloc")}
    if proof["pages"] <= 0 or proof["minflt"] != proof["pages"] or \
            proof["pgfault"] < proof["pages"] or proof["thp_fault_alloc"] != 0:
        raise ScenarioFailed(f"scenario demand-paging did not take one fault per 4 KiB page it "
                             f"touched ({proof})")
    return {f"demand.{k}": v for k, v in proof.items()}


def _check_shared(out: dict[str, str]) -> dict[str, int]:
    """Every child mapped the whole file, took one fault per page, and while all held it each
    page was mapped by several ptes: smaps Rss and Shared_* equal the file's size, and Pss is
    the size divided by the number of children (rounded)."""
    keys = ("children", "children_ok", "smaps_seen", "pages", "minflt_min", "minflt_max",
            "rss_kb_min", "shared_kb_min", "pss_kb_max", "pgfault")
    proof = {k: _num(out, f"shared.{k}") for k in keys}
    n, kb = proof["children"], proof["pages"] * 4
    ok = n >= 2 and proof["pages"] > 0 and proof["children_ok"] == n == proof["smaps_seen"] and \
        proof["minflt_min"] == proof["minflt_max"] == proof["pages"] and \
        proof["rss_kb_min"] == kb == proof["shared_kb_min"] and \
        0 < proof["pss_kb_max"] <= kb // n + 1 and proof["pgfault"] >= n * proof["pages"]
    if not ok:
        raise ScenarioFailed(f"scenario shared-file: the children did not all map every page of "
                             f"the file, shared ({proof})")
    return {f"shared.{k}": v for k, v in proof.items()}


def _proof_demand(before: Vmstat, after: Vmstat, out: dict[str, str]) -> dict[str, int]:
    return _check_demand(out)


def _proof_shared(before: Vmstat, after: Vmstat, out: dict[str, str]) -> dict[str, int]:
    return _check_shared(out)


def _proof_mixed(before: Vmstat, after: Vmstat, out: dict[str, str]) -> dict[str, int]:
    """Each part's own proof; the reclaim part's from /proc/vmstat across that part only."""
    proof = _check_demand(out)
    fork = {k: _num(out, f"fork.{k}") for k in ("children", "children_ok")}
    if fork["children"] <= 0 or fork["children_ok"] != fork["children"]:
        raise ScenarioFailed(f"scenario mixed: fork-exit children did not all exit cleanly ({fork})")
    proof.update({f"fork.{k}": v for k, v in fork.items()})
    proof.update(_check_shared(out))
    reclaim = {k: _num(out, f"reclaim.{k}") for k in ("pgscan", "pgsteal", "pswpout", "pswpin")}
    if min(reclaim.values()) <= 0:
        raise ScenarioFailed(f"scenario mixed: its reclaim part created no memory pressure "
                             f"(vmstat deltas {reclaim})")
    proof.update({f"reclaim.{k}": v for k, v in reclaim.items()})
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
    Scenario("demand-paging", "write each 4 KiB page of a fresh MADV_NOHUGEPAGE anonymous "
                              "mapping once, then unmap it",
             "demand-paging.sh", ("touch", "unmap"), {"SB_MB": "16"}, _proof_demand),
    Scenario("shared-file", "children each map one tmpfs file MAP_SHARED and write every page "
                            "(several ptes per page), then unmap it and exit",
             "shared-file.sh", ("map", "unmap"), {"SB_CHILDREN": "8", "SB_KB": "1024"},
             _proof_shared),
    Scenario("mixed", "demand-paging, fork-exit, shared-file and reclaim in turn, under a cgroup "
                      "memory.max with zram swap",
             "mixed.sh", ("demand-touch", "demand-unmap", "fork-setup", "fork-exit",
                          "shared-setup", "shared-map", "shared-unmap", "reclaim-fill",
                          "reclaim"),
             {"SB_DEMAND_MB": "4", "SB_FORK_CHILDREN": "8", "SB_FORK_KB": "512",
              "SB_SHARED_CHILDREN": "4", "SB_SHARED_KB": "512", "SB_MB": "16",
              "SB_LIMIT_MB": "8", "SB_PASSES": "2"}, _proof_mixed, swap=True),
)}


def get(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise unknown_name("scenario", name, SCENARIOS)
    return SCENARIOS[name]
