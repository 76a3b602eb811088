"""Policies and workloads found by name: in-tree modules and third-party entry points.

An in-tree policy is a module of the ``policies`` package with a ``POLICY`` attribute (a Policy
subclass); a workload is a module of ``workloads`` with a ``WORKLOAD`` attribute. Modules whose
name starts with ``_`` are helpers. Third-party packages add their own through the entry-point
groups ``shadowbench.policies`` and ``shadowbench.workloads`` (each entry point loads the class).
A name that is not found is an error that suggests the close matches, never a silent default.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from bench.errors import BenchError, unknown_name
from bench.params import parse_spec, resolve
from bench.policy import Policy
from bench.workload import Workload, resolve_params

POLICY_GROUP = "shadowbench.policies"
WORKLOAD_GROUP = "shadowbench.workloads"


def _discover(package: str, attribute: str, group: str, base: type) -> dict[str, type]:
    found: dict[str, type] = {}
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        cls = getattr(module, attribute, None)
        if cls is None:
            raise BenchError(f"module {package}.{info.name} defines no {attribute}")
        _add(found, cls, f"{package}.{info.name}", base)
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        _add(found, ep.load(), f"entry point {ep.name} ({ep.value})", base)
    return dict(sorted(found.items()))


def _add(found: dict[str, type], cls: Any, origin: str, base: type) -> None:
    name = getattr(cls, "name", "")
    if not (isinstance(cls, type) and issubclass(cls, base)) or not name:
        raise BenchError(f"{origin} is not a named {base.__name__} subclass")
    if name in found:
        raise BenchError(f"two {base.__name__.lower()}s are named {name!r} ({origin})")
    found[name] = cls


@cache
def policies() -> dict[str, type[Policy]]:
    """Every registered policy class by name, sorted."""
    return _discover("policies", "POLICY", POLICY_GROUP, Policy)


@cache
def workloads() -> dict[str, type[Workload]]:
    """Every registered workload class by name, sorted."""
    return _discover("workloads", "WORKLOAD", WORKLOAD_GROUP, Workload)


def policy_class(name: str) -> type[Policy]:
    known = policies()
    if name not in known:
        raise unknown_name("policy", name, known)
    return known[name]


def workload_class(name: str) -> type[Workload]:
    known = workloads()
    if name not in known:
        raise unknown_name("workload", name, known)
    return known[name]


def policy_params(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The full, validated parameter set of a policy (defaults filled in)."""
    return resolve(f"policy {name}", policy_class(name).params, given)


def workload_params(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The full, validated parameter set of a workload (defaults filled in; with quick=true,
    the quick sizes of the parameters not given: bench.workload.resolve_params)."""
    return resolve_params(workload_class(name), given)


def make_policy(spec: str | tuple[str, dict[str, Any]]) -> Policy:
    """A policy instance from ``NAME[:k=v,...]`` or (name, params)."""
    name, given = parse_spec(spec) if isinstance(spec, str) else spec
    cls = policy_class(name)
    return cls(**policy_params(name, given))


def make_workload(name: str, given: dict[str, Any]) -> Workload:
    cls = workload_class(name)
    return cls(**workload_params(name, given))
