"""The workload interface: a guest kernel code path turned into a lazy stream of guest operations."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bench.guest import Guest
from bench.params import Param, resolve


@dataclass
class GuestRun:
    """What a workload hands the executors: the booted guest, each vCPU's initial cr3, the lazy
    operation stream, and the sizes it derived (pages, page tables, passes...).

    ``ops`` may read guest memory while it generates (the kernel reads ptes it then decides
    on): it is consumed one operation at a time, so what it reads is the memory after every
    operation it has yielded so far. It reads only through GuestMemory's read methods (looked up
    at the call) and writes memory only through operations: bench.cell.run_cells records the
    reads to replay the run to several policies (docs/workloads.md, "The contract"). ``sizes``
    may grow while ``ops`` runs (passes, for example).
    """

    guest: Guest
    cr3s: list[int]
    ops: Iterator[tuple]
    sizes: dict[str, int] = field(default_factory=dict)


class Workload:
    """Base class of every workload. Subclasses set the class attributes and implement build().

    ``name`` is the registry name, ``summary`` one line on the kernel code path and its source,
    ``params`` the parameter schema; the constructor validates what it is given, fills in the
    defaults and sets them as attributes before build is called.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    seeded: ClassVar[bool] = True
    """False when the stream does not depend on the seed (a recorded guest): an experiment then
    runs the workload with its first seed only, since more seeds would repeat the same run."""
    quick_sizes: ClassVar[dict[str, Any]] = {}
    """What ``quick=true`` means: the most each listed parameter may be in a quick run. A listed
    parameter that is not given explicitly takes min(its default, this value); one given
    explicitly keeps its value (``resolve_params``), so a label always names the size used."""
    unbounded_zero: ClassVar[frozenset[str]] = frozenset()
    """Listed parameters whose 0 means "no bound" (a recorded guest's ``events``): quick takes
    the quick size for them, not min(0, quick size)."""

    def __init__(self, **params: Any) -> None:
        """Validate ``params`` against ``params`` (defaults filled in, quick sizes applied) and
        set them as attributes."""
        for key, value in resolve_params(type(self), params).items():
            setattr(self, key, value)

    def build(self, rng: random.Random) -> GuestRun:
        """Boot the guest and return its operation stream; ``rng`` is the only randomness."""
        raise NotImplementedError

    def check_inputs(self) -> None:
        """Read every input file the run will read and raise BenchError at the first problem,
        before anything is simulated or written (a trace read lazily during the run would
        otherwise fail part way). By default nothing: ``build`` reads its inputs at once."""


def resolve_params(cls: type[Workload], given: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of workload class ``cls``, validated, defaults filled in; with
    ``quick`` true, each of ``cls.quick_sizes`` not in ``given`` is min(default, quick size)."""
    full = resolve(f"workload {cls.name}", cls.params, given)
    if full.get("quick") is True:
        for key, most in cls.quick_sizes.items():
            if key not in given:
                unbounded = key in cls.unbounded_zero and full[key] == 0
                full[key] = most if unbounded else min(full[key], most)
    return full
