"""What to run: policies x workloads x seeds under one cost profile, validated before any work.

An experiment comes from the command line (``-p``, ``-w``, ``--set``, ``--quick``, ``--grid``),
from a TOML experiment file, or from a results file (``--from``). Every name and parameter is
checked here through bench.registry, so a bad one fails before a folder is created. The
experiment then lists its cells: one per (policy, workload entry, seed), each keyed by a hash of
everything that determines its counters.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

import bench
import bench.registry as registry
from bench import costs
from bench.errors import BenchError, unknown_name
from bench.params import parse_assignment, parse_spec

DEFAULT_SEEDS = 3
MAX_SEEDS = 10000
"""The most seeds a run may have (each seed is a guest run per workload entry)."""
MAX_SEED_START = 2**31
"""The largest first seed (``--seed-start``)."""
MAX_CELLS = 1_000_000
"""The most cells an experiment may have (policies x workload entries x seeds)."""
KMAP_KERNELS = ("rhel3", "rhel3-debug", "2.6.20")
REAL_GUESTS = ("reclaim-686-pae", "reclaim-686", "fork-exit-686-pae", "fork-exit-686")
"""The shipped recordings (recordings/README.md) in the default comparison."""
DEFAULT_WORKLOADS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("kscand", {}),
    ("linear-scan", {}),
    *(("kmap", {"pae": pae, "kernel": kernel}) for pae in (False, True) for kernel in KMAP_KERNELS),
    *(("guest", {"recording": name}) for name in REAL_GUESTS),
)
"""The default comparison (issue 5): kscand, linear-scan, and kmap with and without PAE under
the three kmap variants that differ most; and (issue 19) the shipped recordings of a real 6.1
guest, PAE and not (one seed each: a replay does not depend on the seed)."""

PROFILE_PARAM = "cost_profile"
"""A policy parameter that, when the user does not set it, takes the run's cost profile."""


@dataclass
class Entry:
    """One policy or workload with its full, validated parameters and a display label."""

    name: str
    params: dict[str, Any]
    label: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "label": self.label}


CELL_SCHEMA = 2
"""The version of a stored cell's layout (OUT/cells/<digest>.json); part of every key."""


@dataclass
class Cell:
    """One simulation: a policy on a workload entry with one seed (policy None: the oracle's
    record of the workload entry and seed, shared by every policy)."""

    policy: Entry | None
    workload: Entry
    seed: int
    _key: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def key(self) -> dict[str, Any]:
        """Everything that determines the cell's result: names, parameters and seed, the schema
        and project versions, the digest of the code that runs, the contents of the input files
        the parameters name, and the numbers of a cost profile the policy decides by
        (bench.fingerprint). Computed once per Cell object."""
        if self._key is None:
            self._key = self._make_key()
        return self._key

    def _make_key(self) -> dict[str, Any]:
        from bench import fingerprint

        out: dict[str, Any] = {"schema": CELL_SCHEMA, "version": bench.__version__}
        wcls = registry.workload_class(self.workload.name)
        code = [fingerprint.class_digest(wcls)]
        inputs = {"workload": fingerprint.input_digests(
            f"workload {self.workload.name}", wcls.params, self.workload.params)}
        if self.policy is None:
            out["kind"] = "oracle"
        else:
            pcls = registry.policy_class(self.policy.name)
            code.append(fingerprint.class_digest(pcls))
            inputs["policy"] = fingerprint.input_digests(
                f"policy {self.policy.name}", pcls.params, self.policy.params)
            out.update(kind="cell", policy=self.policy.name, policy_params=self.policy.params)
            profile_name = self.policy.params.get(PROFILE_PARAM)
            if PROFILE_PARAM in pcls.params and isinstance(profile_name, str):
                numbers = costs.profile(profile_name).as_dict()
                out["policy_cost_numbers"] = {k: v for k, v in numbers.items()
                                              if k not in ("sources", "cpu")}
        out.update(workload=self.workload.name, workload_params=self.workload.params,
                   seed=self.seed, code=sorted(set(code)),
                   inputs={k: v for k, v in inputs.items() if v})
        return out

    def digest(self) -> str:
        text = json.dumps(self.key(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class Experiment:
    """A validated configuration. ``grid`` names the swept parameters ("policy.K"/"workload.K")."""

    policies: list[Entry]
    workloads: list[Entry]
    seeds: list[int]
    cost_profile: str
    grid: dict[str, list[Any]] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """Every policy cell, in the order records are stored (workload, policy, seed)."""
        return [Cell(p, w, s) for w in self.workloads for p in self.policies
                for s in self.seeds_of(w)]

    def oracle_cells(self) -> list[Cell]:
        return [Cell(None, w, s) for w in self.workloads for s in self.seeds_of(w)]

    def seeds_of(self, workload: Entry) -> list[int]:
        """The seeds a workload entry runs: all, or the first for one whose stream does not
        depend on the seed (``Workload.seeded`` False: a recorded guest)."""
        return self.seeds if registry.workload_class(workload.name).seeded else self.seeds[:1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "policies": [p.as_dict() for p in self.policies],
            "workloads": [w.as_dict() for w in self.workloads],
            "seeds": list(self.seeds),
            "cost_profile": self.cost_profile,
            "grid": self.grid,
        }


# -- labels ------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def label(name: str, params: dict[str, Any], shown: set[str]) -> str:
    """``name[k=v,...]`` with the ``shown`` keys, sorted."""
    keys = sorted(k for k in params if k in shown)
    return name + ("[" + ",".join(f"{k}={_fmt(params[k])}" for k in keys) + "]" if keys else "")


def _label_entries(entries: list[Entry], schema_of, hidden: set[str], run_profile: str,
                   defaults_of=None) -> None:
    """Label each entry by its non-default parameters plus those that vary between entries of
    the same name; ``hidden`` keys are left out unless they vary; a policy's cost_profile equal
    to the run's is left out. ``defaults_of(name, params)`` gives the defaults an entry is
    compared with (a quick workload's: its quick sizes), else the schema's."""
    by_name: dict[str, list[Entry]] = {}
    for e in entries:
        by_name.setdefault(e.name, []).append(e)
    for name, group in by_name.items():
        schema = schema_of(name)
        varying = {k for k in schema if len({json.dumps(e.params.get(k)) for e in group}) > 1}
        for e in group:
            shown = set(varying)
            defaults = defaults_of(name, e.params) if defaults_of else {
                k: p.default for k, p in schema.items()}
            for k, p in schema.items():
                if k in hidden or k in varying:
                    continue
                if k == PROFILE_PARAM and e.params.get(k) == run_profile:
                    continue
                if e.params.get(k) != defaults[k]:
                    shown.add(k)
            e.label = label(name, e.params, shown)
        seen: dict[str, Entry] = {}
        for e in group:
            if e.label in seen:  # same label for different params: show everything
                for x in group:
                    x.label = label(name, x.params, set(x.params))
                break
            seen[e.label] = e


# -- building ----------------------------------------------------------------------------------
def _policy_entry(name: str, given: dict[str, Any], cost_profile: str) -> Entry:
    cls = registry.policy_class(name)
    given = dict(given)
    if PROFILE_PARAM in cls.params and PROFILE_PARAM not in given:
        given[PROFILE_PARAM] = cost_profile
    return Entry(name, registry.policy_params(name, given))


def _grid_target(key: str, policy_names: list[str], workload_names: list[str]) -> tuple[str, str]:
    """'threshold' or 'policy.threshold' -> ('policy', 'threshold')."""
    scope, dot, bare = key.partition(".")
    if dot and scope in ("policy", "workload"):
        names = policy_names if scope == "policy" else workload_names
        cls_of = registry.policy_class if scope == "policy" else registry.workload_class
        known = {k for n in names for k in cls_of(n).params}
        if bare not in known:
            raise unknown_name(f"{scope} parameter for --grid", bare, known)
        return scope, bare
    in_policy = {k for n in policy_names for k in registry.policy_class(n).params}
    in_workload = {k for n in workload_names for k in registry.workload_class(n).params}
    if key in in_policy and key in in_workload:
        raise BenchError(f"--grid {key} is both a policy and a workload parameter; "
                         f"write policy.{key} or workload.{key}")
    if key in in_policy:
        return "policy", key
    if key in in_workload:
        return "workload", key
    raise unknown_name("parameter for --grid (of the selected policies or workloads)", key,
                       in_policy | in_workload)


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``KEY=V1,V2,...`` items -> {KEY: [V1, V2, ...]}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, value = parse_assignment(item, "--grid")
        values = [v.strip() for v in value.split(",")]
        if not all(values):
            raise BenchError(f"malformed --grid {item!r} (expected KEY=V1,V2,...)")
        if key in grid:
            raise BenchError(f"--grid {key} given twice")
        grid[key] = values
    return grid


def build(policy_specs: list[str] | None = None, workload_specs: list[str] | None = None,
          sets: list[str] | None = None, quick: bool = False, seeds: int = DEFAULT_SEEDS,
          cost_profile: str = costs.DEFAULT_PROFILE,
          grid: dict[str, list[Any]] | None = None,
          set_values: dict[str, Any] | None = None, seed_start: int = 0) -> Experiment:
    """A validated experiment. Policies default to every registered one, workloads to
    DEFAULT_WORKLOADS. ``sets`` are ``KEY=VALUE`` workload parameters applied to every selected
    workload that takes KEY (an error if none does); ``set_values`` the same, already split
    (from TOML). A parameter given in a ``-w NAME:k=v`` spec wins over ``--set``. The seeds are
    ``seed_start`` .. ``seed_start + seeds - 1``."""
    costs.profile(cost_profile)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or not 1 <= seeds <= MAX_SEEDS:
        raise BenchError(f"seeds must be a whole number from 1 to {MAX_SEEDS}, got {seeds!r}")
    if (not isinstance(seed_start, int) or isinstance(seed_start, bool)
            or not 0 <= seed_start <= MAX_SEED_START):
        raise BenchError(f"seed_start must be a whole number from 0 to {MAX_SEED_START}, got "
                         f"{seed_start!r}")
    policy_given = [parse_spec(s) for s in policy_specs] if policy_specs else [
        (name, {}) for name in registry.policies()]
    workload_given = [parse_spec(s) for s in workload_specs] if workload_specs else [
        (name, dict(params)) for name, params in DEFAULT_WORKLOADS]
    for name, _ in policy_given:
        registry.policy_class(name)
    for name, _ in workload_given:
        registry.workload_class(name)

    assignments: dict[str, Any] = dict(set_values or {})
    given_sets: set[str] = set()
    for text in sets or ():
        key, value = parse_assignment(text)
        if key in given_sets:
            raise BenchError(f"--set {key} given twice")
        given_sets.add(key)
        assignments[key] = value
    names = sorted({n for n, _ in workload_given})
    for key in assignments:
        if not any(key in registry.workload_class(n).params for n in names):
            known = {k for n in names for k in registry.workload_class(n).params}
            raise unknown_name(f"--set parameter (of workloads {', '.join(names)})", key, known)
    merged = []
    for name, given in workload_given:
        schema = registry.workload_class(name).params
        full = {k: v for k, v in assignments.items() if k in schema}
        full.update(given)
        if quick and "quick" in schema:
            if "quick" in full and not schema["quick"].parse(f"workload {name}", "quick",
                                                             full["quick"]):
                raise BenchError(f"--quick contradicts workload {name} parameter "
                                 f"quick={full['quick']}; drop one of them")
            full["quick"] = True
        merged.append((name, full))

    targets = {}
    for key in grid or {}:
        targets[key] = _grid_target(key, [n for n, _ in policy_given], names)

    def expand(items, scope):
        out = []
        for name, given in items:
            cls = (registry.policy_class if scope == "policy" else registry.workload_class)(name)
            axes = [(bare, grid[key]) for key, (sc, bare) in targets.items()
                    if sc == scope and bare in cls.params]
            for combo in itertools.product(*(values for _, values in axes)):
                g = dict(given)
                g.update({bare: v for (bare, _), v in zip(axes, combo)})
                out.append((name, g))
        return out

    policies = _dedupe([_policy_entry(n, g, cost_profile) for n, g in expand(policy_given, "policy")])
    workloads = _dedupe([Entry(n, registry.workload_params(n, g))
                         for n, g in expand(merged, "workload")])
    _label_entries(policies, lambda n: registry.policy_class(n).params, set(), cost_profile)
    _label_entries(workloads, lambda n: registry.workload_class(n).params, set(), cost_profile,
                   _workload_defaults)
    canon = {k: [v for v in vals] for k, vals in (grid or {}).items()}
    cells = len(policies) * len(workloads) * seeds
    if cells > MAX_CELLS:
        raise BenchError(f"the experiment has {cells:,} cells ({len(policies)} policies x "
                         f"{len(workloads)} workload entries x {seeds} seeds), more than the "
                         f"{MAX_CELLS:,} allowed; fewer seeds or a smaller grid")
    return Experiment(policies, workloads, list(range(seed_start, seed_start + seeds)), cost_profile,
                      {f"{sc}.{bare}": canon[key] for key, (sc, bare) in targets.items()})


def _workload_defaults(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The values a workload entry's parameters take when not given: the schema's defaults, or
    with quick=true the quick sizes (bench.workload.resolve_params)."""
    if params.get("quick") is not True:
        return registry.workload_params(name, {})
    defaults = registry.workload_params(name, {"quick": True})
    defaults["quick"] = registry.workload_class(name).params["quick"].default  # quick is shown
    return defaults


def _dedupe(entries: list[Entry]) -> list[Entry]:
    seen, out = set(), []
    for e in entries:
        k = json.dumps([e.name, e.params], sort_keys=True)
        if k not in seen:
            seen.add(k)
            out.append(e)
    return out


def from_dict(data: dict[str, Any]) -> Experiment:
    """The experiment a results file recorded (``meta.experiment``), re-validated."""
    try:
        profile_name = data["cost_profile"]
        pol = [(p["name"], p["params"]) for p in data["policies"]]
        wl = [(w["name"], w["params"]) for w in data["workloads"]]
        seeds = [int(s) for s in data["seeds"]]
        grid = dict(data.get("grid") or {})
    except (KeyError, TypeError, ValueError) as err:
        raise BenchError(f"results file has a malformed experiment section ({err})") from None
    costs.profile(profile_name)  # a recorded profile this version does not know: now, not later
    if not 1 <= len(seeds) <= MAX_SEEDS or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise BenchError(f"results file has a malformed seed list ({len(seeds)} seeds)")
    policies = [Entry(n, registry.policy_params(n, dict(p))) for n, p in pol]
    workloads = [Entry(n, registry.workload_params(n, dict(p))) for n, p in wl]
    _label_entries(policies, lambda n: registry.policy_class(n).params, set(), profile_name)
    _label_entries(workloads, lambda n: registry.workload_class(n).params, set(), profile_name,
                   _workload_defaults)
    return Experiment(policies, workloads, seeds, profile_name, grid)


# -- TOML experiment files ---------------------------------------------------------------------
TOML_KEYS = {
    "policies": "list of POLICY[:k=v,...] strings",
    "workloads": "list of WORKLOAD[:k=v,...] strings",
    "set": "table of workload parameters",
    "grid": "table of parameter -> list of values",
    "seeds": "number of seeds",
    "seed_start": "the first seed (default 0)",
    "cost_profile": "cost profile name",
    "quick": "true to shrink the guests",
    "description": "free text",
}


def load_toml(path: str) -> dict[str, Any]:
    """Read an experiment file; malformed TOML or an unknown key is an error naming file and line."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise BenchError(f"cannot read experiment file {path}: {err.strerror}") from None
    return parse_toml(raw, path)


def parse_toml(raw: bytes | str, path: str = "<experiment>") -> dict[str, Any]:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BenchError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as err:
        text = str(err)
        m = re.search(r"\(at line (\d+), column (\d+)\)", text)
        line = m.group(1) if m else str(max(1, len(raw.splitlines())))  # "at end of document"
        where = f"{path}:{line}"
        msg = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", text)
        raise BenchError(f"{where}: malformed TOML: {msg}") from None
    for key in data:
        if key not in TOML_KEYS:
            raise unknown_name(f"key in experiment file {path}", key, TOML_KEYS)
    out: dict[str, Any] = {}
    for key in ("policies", "workloads"):
        if key in data:
            value = data[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise BenchError(f"{path}: {key} must be a list of strings ({TOML_KEYS[key]})")
            out[key] = value
    for key in ("set", "grid"):
        if key in data:
            if not isinstance(data[key], dict):
                raise BenchError(f"{path}: {key} must be a table ({TOML_KEYS[key]})")
            out[key] = {}
            for k, v in data[key].items():
                if key == "grid":
                    if not isinstance(v, list) or not v or any(isinstance(x, (dict, list)) for x in v):
                        raise BenchError(f"{path}: grid.{k} must be a non-empty list of values")
                    out[key][k] = [_scalar(x) for x in v]
                else:
                    if isinstance(v, (dict, list)):
                        raise BenchError(f"{path}: set.{k} must be a single value")
                    out[key][k] = _scalar(v)
    if "seeds" in data:
        if not isinstance(data["seeds"], int) or isinstance(data["seeds"], bool) or data["seeds"] < 1:
            raise BenchError(f"{path}: seeds must be a whole number >= 1")
        out["seeds"] = data["seeds"]
    if "seed_start" in data:
        value = data["seed_start"]
        if not isinstance(value, int) or isinstance(value, bool) or not (
                0 <= value <= MAX_SEED_START):
            raise BenchError(f"{path}: seed_start must be a whole number from 0 to "
                             f"{MAX_SEED_START}")
        out["seed_start"] = value
    if "cost_profile" in data:
        if not isinstance(data["cost_profile"], str):
            raise BenchError(f"{path}: cost_profile must be a string")
        out["cost_profile"] = data["cost_profile"]
    if "quick" in data:
        if not isinstance(data["quick"], bool):
            raise BenchError(f"{path}: quick must be true or false")
        out["quick"] = data["quick"]
    return out


def _scalar(value: Any) -> Any:
    """TOML dates and times become their text; everything else is kept (Param.parse converts)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
