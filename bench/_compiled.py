"""The compiled simulator core: used only when it was compiled from the very sources in use.

``pip install .`` compiles the modules a simulation runs in (``COMPILED``: guest memory, the
walker, the native and shadow executors, the recording that replays a run, the oracle's
recorder, the guest builder, the built-in policies and workloads) with mypyc into the installed
package, when the machine has a C compiler (setup.py; otherwise the install is pure Python).
The compiled modules are the same source, so they give the same results (tests/test_compiled.py
runs the golden, differential and workload tests both ways); the default comparison runs about
twice as fast (docs/performance.md, "The compiled core").

Users run ``python -m bench`` from a checkout, whose ``bench/`` comes before site-packages on
``sys.path``, so the compiled modules would never be imported by the usual search. ``install``
(called by ``bench/__init__.py`` before anything else of the package is imported) puts a finder
first on ``sys.meta_path`` that decides, for the modules in ``COMPILED`` only, where they come
from:

- the extension modules of a build whose manifest (``bench/_compiled.json``, written by setup.py
  after a successful build) records, for every compiled module, the SHA-256 of exactly the
  source file this process would otherwise import;
- otherwise the source file itself, even if a stale extension module sits beside it (an
  in-place build of older sources is never used).

Setting ``SHADOWBENCH_PURE=1`` in the environment forces the pure-Python modules (at install
time it also skips compiling). ``state()`` says which is in use; run provenance records it.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

COMPILED: tuple[str, ...] = (
    "bench.machine.counters",
    "bench.machine.events",
    "bench.machine.memory",
    "bench.machine.paging",
    "bench.machine.native",
    "bench.machine.shadow",
    "bench.machine.tdp",
    "bench.recording",
    "bench.oracle",
    "bench.guest",
    "bench.record.format",
    "bench.record.replay",
    "policies._compose",
    "policies.accessed_clear",
    "policies.always_emulate",
    "policies.always_unshadow",
    "policies.flood_count",
    "policies.oracle",
    "policies.per_page_flood",
    "policies.ski_rental",
    "policies.ski_rental_random",
    "policies.tdp",
    "policies.unsync",
    "policies.xen_batch",
    "policies.xen_early_unshadow",
    "policies.xen_oos",
    "workloads._base",
    "workloads._kmap",
    "workloads._mm",
    "workloads._scan",
    "workloads._users",
    "workloads.demand_paging",
    "workloads.fork_exit",
    "workloads.kmap",
    "workloads.kscand",
    "workloads.linear_scan",
    "workloads.replay",
)
"""The modules mypyc compiles (together, as one group: calls between them are native). The
built-in policies' classes derive from the interpreted ``bench.policy.Policy``, so mypyc makes
them ordinary Python classes whose methods are compiled: a third-party policy can still derive
from them, or from Policy."""

GROUP = "shadowbench_core"
"""mypyc's group name: the shared library is the top-level module ``shadowbench_core__mypyc``."""
MANIFEST = "_compiled.json"
PURE_ENV = "SHADOWBENCH_PURE"

_state = "pure Python (compiled core not looked for)"


def source_path(root: Path, module: str) -> Path:
    """The source file of ``module`` under the directory ``root`` that holds the ``bench`` package."""
    return root.joinpath(*module.split(".")).with_suffix(".py")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(root: Path) -> dict:
    """What setup.py records of a build whose ``bench`` package lies under ``root``."""
    return {"group": GROUP,
            "modules": {m: digest(source_path(root, m)) for m in COMPILED}}


def _extension(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def _matching_build(here: Path) -> tuple[Path, str] | tuple[None, str]:
    """The root of a build compiled from the sources under ``here`` (the running checkout or
    installation), looked for on sys.path; or None and why not."""
    wanted = manifest(here)["modules"]
    reason = "no compiled build installed"
    seen: set[Path] = set()
    for entry in [str(here)] + sys.path:
        try:
            root = Path(entry or ".").resolve()
        except OSError:
            continue
        if root in seen:
            continue
        seen.add(root)
        try:
            recorded = json.loads((root / "bench" / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        if recorded.get("group") != GROUP or recorded.get("modules") != wanted:
            reason = f"the compiled build in {root} is of other sources"
            continue
        if any(_extension(root, m) is None for m in COMPILED) or not any(
                (root / (GROUP + "__mypyc" + s)).is_file()
                for s in importlib.machinery.EXTENSION_SUFFIXES):
            reason = f"the compiled build in {root} is incomplete"
            continue
        return root, ""
    return None, reason


class _CoreFinder:
    """Finds the ``COMPILED`` modules: extension modules of ``root``, or the sources of ``here``."""

    def __init__(self, here: Path, root: Path | None) -> None:
        self.here = here
        self.root = root

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if fullname not in COMPILED:
            return None
        if self.root is not None:
            extension = _extension(self.root, fullname)
            if extension is not None:
                return importlib.util.spec_from_file_location(fullname, extension)
        return importlib.util.spec_from_file_location(fullname, source_path(self.here, fullname))

    def invalidate_caches(self) -> None:
        pass


def install() -> None:
    """Put the finder first on sys.meta_path (once per process)."""
    global _state
    if any(isinstance(f, _CoreFinder) for f in sys.meta_path):
        return
    here = Path(__file__).resolve().parent.parent
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        root, why = None, f"{PURE_ENV} is set"
    else:
        try:
            root, why = _matching_build(here)
        except OSError as exc:  # an unreadable source: import it the usual way, and fail there
            root, why = None, str(exc)
    if root is not None and str(root) not in sys.path:
        sys.path.append(str(root))  # where the group's shared library is imported from
    sys.meta_path.insert(0, _CoreFinder(here, root))
    _state = f"compiled (mypyc, {root})" if root is not None else f"pure Python ({why})"


def state() -> str:
    """Which simulator core this process uses, and where from (or why not compiled)."""
    return _state


def active() -> bool:
    """Whether the compiled core is in use (the shadow executor is an extension module)."""
    module = sys.modules.get("bench.machine.shadow")
    if module is None:
        import bench.machine.shadow as module
    return not str(getattr(module, "__file__", "")).endswith(".py")
