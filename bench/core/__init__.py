"""The native simulation core: the shadow MMU and the built-in policies in C (issue 17).

``bench/core/_core.c`` implements, for replaying a recorded guest run (bench.recording), the
same model as the readable Python reference: guest memory and the hardware walk
(bench.machine.memory, bench.machine.paging), the shadow executor with every MMUConfig mechanism
(bench.machine.shadow) and the decisions and hooks of the built-in shadow-paging policies
(policies/). ``pip install .`` compiles it with the machine's C compiler (setup.py); without a
compiler, or with ``SHADOWBENCH_PURE=1`` or ``SHADOWBENCH_NATIVE=0`` in the environment, the
Python reference runs instead, at Python speed, and ``python -m bench run`` says so in one line
on stderr.

The workloads' generators run natively too, driven by bench.core.generators: kscand,
linear-scan and kmap (bench/core/_scan.c) and the guest workload's replay of a recorded real
guest (bench/core/_guest.c, which reads the recording's body itself): the same operations and
guest-memory reads as the Python generators (tests/test_native_generators.py). The other
workloads (fork-exit, demand-paging) generate in Python; their operations are executed and
recorded in C all the same.

What runs natively (``native_spec``): a replay under one of the built-in shadow-paging policies,
exactly as registered (its class, not a subclass): always-emulate, always-unshadow, flood-count
(2.6.20, 2.6.26, 2.6.27), per-page-flood, xen-early-unshadow, unsync, xen-oos, ski-rental,
ski-rental-random, oracle, tdp (bench.machine.tdp's executor) and accessed-clear or xen-batch
over any of these; and such a policy's run on a stream of its own (``generate``: its reads
differed from the recording, or it runs alone) when the workload generates natively. Everything
else runs through the Python reference: a third-party policy or a subclass of a built-in one
(through the Python hooks, at Python speed), a run whose workload writes guest memory while
generating (no recording), and a policy generating its own stream from a Python generator. tests/test_native_core.py checks, for every
policy it covers on every workload, that both give identical counters, marks and guest memory.

The extension is used only when it was built from exactly the C sources in use: setup.py
records their SHA-256 beside the built module (``_core.json``), and ``load`` compares it
(a stale build is never used), as bench._compiled does for the mypyc modules.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.machine.counters import ALL_COUNTERS

SOURCES = ("_core.c", "_scan.c", "_guest.c", "_stream.h")
"""The C sources of the extension (its header last), in the order their SHA-256 is taken
(setup.py NATIVE_SOURCES)."""
MANIFEST = "_core.json"
NATIVE_ENV = "SHADOWBENCH_NATIVE"
PURE_ENV = "SHADOWBENCH_PURE"
MODULE = "bench.core._core"

_HERE = Path(__file__).resolve().parent
_loaded: ModuleType | None = None
_state: str | None = None

# bench.core._core's policy bases (the enum in _core.c)
B_EMULATE, B_UNSHADOW, B_FLOOD, B_PERPAGE, B_XEN_EARLY, B_UNSYNC, B_XEN_OOS, B_SKI, B_ORACLE, \
    B_TDP = range(10)
SKI_FIRST_DRAWS, SKI_DRAWS = 16, 4096
"""Thresholds ski-rental-random draws ahead per call from the native core: 16 at the first call,
twice as many at each next one, at most 4096 (its private generator's draws happen in the order
the intervals start, so drawing ahead changes nothing; starting small keeps a run with few
intervals from drawing thousands it never uses)."""


def source_digest(folder: Path = _HERE) -> str:
    """The SHA-256 of the C sources in ``folder``, concatenated in SOURCES order."""
    return hashlib.sha256(b"".join((folder / name).read_bytes() for name in SOURCES)).hexdigest()


def _candidates() -> Iterator[Path]:
    """Folders that may hold a build of this package's bench/core: this one, then every
    ``bench/core`` on sys.path (an installed build, when running from a checkout)."""
    yield _HERE
    for entry in sys.path:
        try:
            folder = (Path(entry or ".") / "bench" / "core").resolve()
        except OSError:
            continue
        if folder != _HERE:
            yield folder


def _find() -> tuple[Path | None, str]:
    wanted = source_digest()
    reason = "not built (no C compiler at install, or a checkout without `pip install .`)"
    for folder in _candidates():
        try:
            recorded = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        if recorded.get("source") != wanted:
            reason = f"the build in {folder} is of other C sources"
            continue
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = folder / ("_core" + suffix)
            if candidate.is_file():
                return candidate, ""
        reason = f"the build in {folder} has no extension module for this Python"
    return None, reason


def load() -> ModuleType | None:
    """The native core's extension module, or None (``state()`` says why)."""
    global _loaded, _state
    if _state is not None:
        return _loaded
    for env, off in ((PURE_ENV, lambda v: v not in ("", "0")), (NATIVE_ENV, lambda v: v == "0")):
        if off(os.environ.get(env, "")):
            _state = f"off ({env}={os.environ[env]})"
            return None
    path, why = _find()
    if path is None:
        _state = f"not in use: {why}"
        return None
    spec = importlib.util.spec_from_file_location(MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if tuple(module.COUNTERS) != ALL_COUNTERS:
        raise RuntimeError(f"{path}: the native core's counters differ from ALL_COUNTERS")
    sys.modules[MODULE] = module
    _loaded = module
    _state = f"native ({path})"
    return module


def available() -> bool:
    return load() is not None


def state() -> str:
    """Whether the native core is in use, and where from (or why not)."""
    load()
    assert _state is not None
    return _state


# ------------------------------------------------------------------------ policies -> C specs
def _base_spec(policy: Any) -> dict[str, Any] | None:
    """The C policy of a built-in base policy (exact class), or None."""
    from policies.always_emulate import AlwaysEmulate
    from policies.always_unshadow import AlwaysUnshadow
    from policies.flood_count import FloodCount
    from policies.oracle import Oracle
    from policies.per_page_flood import PerPageFlood
    from policies.ski_rental import SkiRental
    from policies.ski_rental_random import SkiRentalRandom
    from policies.tdp import Tdp
    from policies.unsync import Unsync
    from policies.xen_early_unshadow import XenEarlyUnshadow
    from policies.xen_oos import XenOOS

    cls = type(policy)
    if cls is AlwaysEmulate:
        return {"base": B_EMULATE}
    if cls is AlwaysUnshadow:
        return {"base": B_UNSHADOW}
    if cls is FloodCount or cls is Unsync:
        return {"base": B_FLOOD if cls is FloodCount else B_UNSYNC,
                "v20": int(policy.variant == "2.6.20"), "v27": int(policy.variant == "2.6.27"),
                "threshold": policy.threshold}
    if cls is PerPageFlood:
        return {"base": B_PERPAGE, "threshold": policy.threshold,
                "include_leaf": int(policy.include_leaf)}
    if cls is XenEarlyUnshadow or cls is XenOOS:
        spec: dict[str, Any] = {"base": B_XEN_EARLY if cls is XenEarlyUnshadow else B_XEN_OOS,
                                "keep_on_unaligned_zero": int(policy.version == "4.2")}
        if cls is XenOOS:
            spec["oos_limit"] = policy.limit
        return spec
    if cls is SkiRental:
        return {"base": B_SKI, "ski_threshold": policy.interval_threshold(0)}
    if cls is SkiRentalRandom:
        return {"base": B_SKI, "draw": _thresholds_ahead(policy)}
    if cls is Tdp:
        return {"base": B_TDP, "tlb_entries": policy.tlb_entries}
    if cls is Oracle:
        if not policy._traced:
            return None  # the Python path raises the proper error
        return {"base": B_ORACLE, "plan": policy._plan,
                "oracle_native": int(policy.costs.unshadow <= policy.costs.emulate)}
    return None


def _thresholds_ahead(policy: Any) -> Callable[[], list[int]]:
    """The native core's refill of ski-rental-random thresholds: the next draws of the policy's
    own generator, SKI_FIRST_DRAWS first, then twice as many each time up to SKI_DRAWS."""
    size = SKI_FIRST_DRAWS

    def draw() -> list[int]:
        nonlocal size
        n, size = size, min(2 * size, SKI_DRAWS)
        return [policy.interval_threshold(0) for _ in range(n)]

    return draw


def native_spec(policy: Any) -> dict[str, Any] | None:
    """The native core's description of ``policy``, or None when it must run in Python."""
    from policies.accessed_clear import AccessedClear
    from policies.xen_batch import XenBatch

    cls = type(policy)
    if cls is AccessedClear or cls is XenBatch:
        inner = native_spec(policy.fallback_policy)
        if inner is None:
            return None
        if cls is AccessedClear:
            if inner.get("accessed_clear"):
                return None
            return {**inner, "accessed_clear": 1}
        if inner.get("batch") or inner.get("accessed_clear"):
            # xen-batch over accessed-clear: accessed-clear decides first either way, but keep
            # the C core to the compositions the differential test covers
            return None
        return {**inner, "batch": 1, "batch_extra": policy.extra,
                "batch_pae_only": int(policy.pae_only)}
    return _base_spec(policy)


MMU_FIELDS = ("update_spte_on_write", "dirty_bit_pte_write", "quadrant_filter",
              "user_fault_unshadow", "user_write_unshadow", "bypass_guest_pf", "intercept_invlpg",
              "invlpg_drops_spte", "sync_on_cr3", "sync_zaps_empty")


class NativeRun:
    """A policy's replay of a recording on the native core: ``counters``, ``marks`` and
    ``image()`` as the Python executor would have them."""

    def __init__(self, core: Any, done: int) -> None:
        self.core = core
        self.done = done
        self.counters = dict(zip(ALL_COUNTERS, core.counters()))
        self.marks = [(phase, dict(zip(ALL_COUNTERS, snap))) for phase, snap in core.marks()]

    def image(self) -> dict[int, int]:
        return self.core.image()


class NativeExecution:
    """Native execution of a workload's stream on its own GuestMemory (the shared part of a
    guest run, bench.cell.run_cells), in C: bench.machine.native.NativeMachine, and with
    ``trace`` bench.oracle.Recorder, whose ``finish()`` this gives the same way."""

    def __init__(self, executor: Any, trace: bool) -> None:
        self.executor = executor
        self.trace = trace

    def run(self, ops: Any) -> None:
        self.executor.run(ops)

    def run_recorded(self, recording: Any, ops: Any, mem: Any) -> None:
        """Execute ``ops`` while ``recording`` (a bench.recording.OpRecording) records them and
        the reads ``mem`` logs between them: ``run(recording.tee(ops, mem))`` in one C loop."""
        recording.tee_native(self.executor, ops, mem)

    def finish(self) -> Any:
        from bench.oracle import Interval, Trace

        creates, faults, violations, tables = self.executor.finish()
        return Trace(creates, faults, violations,
                     {gfn: [Interval(*iv) for iv in ivs] for gfn, ivs in tables.items()})

    @property
    def counters(self) -> dict[str, int]:
        counts = dict(zip(ALL_COUNTERS, self.executor.counters()))
        return counts

    @property
    def marks(self) -> list[tuple[int, dict[str, int]]]:
        return [(phase, dict(zip(ALL_COUNTERS, snap))) for phase, snap in self.executor.marks()]


def native_execution(mem: Any, pae: bool, cr3s: list[int], trace: bool) -> NativeExecution | None:
    """The native executor on ``mem`` (a bench.machine.memory.GuestMemory, whose dictionaries
    it reads and writes in place), or None without the native core."""
    module = load()
    if module is None:
        return None
    return NativeExecution(module.Native(mem.tables, mem.words, pae, list(cr3s), trace), trace)


def _core(module: ModuleType, policy: Any, mem: Any, pae: bool, cr3s: list[int],
          insn_btr: bytes) -> Any:
    """A native Core for ``policy`` on a copy of ``mem``, or None when it must run in Python."""
    spec = native_spec(policy)
    if spec is None:
        return None
    cfg = policy.mmu_config(pae)
    if cfg.tdp != (spec["base"] == B_TDP):
        return None
    config = {name: int(getattr(cfg, name)) for name in MMU_FIELDS}
    return module.Core(mem.tables, mem.words, pae, list(cr3s), config, spec, insn_btr)


def generate(run: Any, policy: Any) -> NativeRun | None:
    """``policy`` on a guest run generating its own stream (bench.cell), natively: when the
    native core runs the policy and the run's stream is a native scan stream
    (bench.core.generators), which then reads the policy's own guest memory in C. None
    otherwise; ``run.ops`` is then untouched or, if it was iterated to find out, still whole
    (bench.core.generators.Deferred keeps the iterator it chose)."""
    module = load()
    if module is None:
        return None
    ops = iter(run.ops)
    if type(ops) is not module.ScanStream:
        return None
    core = _core(module, policy, run.guest.mem, run.guest.mode.pae, list(run.cr3s), b"\0\1")
    return None if core is None else NativeRun(core, core.run_stream(ops))


def replay(recording: Any, policy: Any, mem: Any, pae: bool, cr3s: list[int]
           ) -> NativeRun | None | bool:
    """Replay ``recording`` under ``policy`` on a copy of ``mem`` natively, repeating the
    recorded reads. Returns the run, None when a read differs (the policy must generate its own
    stream), or False when the native core cannot run this policy (use the Python executor)."""
    module = load()
    if module is None:
        return False
    insn_btr = bytes(int(name == "btr") for name in recording.insn_names())
    core = _core(module, policy, mem, pae, cr3s, insn_btr)
    if core is None:
        return False
    reads = recording.read_columns()
    core.feed_reads(*next(reads, (None,)))
    for columns in recording.op_columns():
        while True:
            status = core.run_ops(*columns)
            if status == 0:
                break
            if status == 2:
                return None
            core.feed_reads(*next(reads, (None,)))
    while True:
        status = core.finish_reads()
        if status == 0:
            break
        if status == 2:
            return None
        core.feed_reads(*next(reads, (None,)))
    return NativeRun(core, core.done())
