"""What a cell's result depends on beyond its parameters, hashed for the cell cache's key.

A cell (bench.experiment.Cell) is cached under a hash of everything that determines its
counters; besides the names, parameters and seed that is:

- the code that runs: the SHA-256 of every source file of the ``bench``, ``policies`` and
  ``workloads`` packages (the native core's C sources and header, bench/core/*.c and *.h,
  included) except the
  modules that only present stored results (``PRESENTATION``: the command line, statistics,
  pricing of records, charts, reports, benchmarks; a cell never imports them, which
  tests/test_cache_key.py checks), and, for a policy or workload registered by a third-party
  package, the sources of that package;
- the contents (not the path) of every input file a parameter names (a parameter declared with
  ``Param(..., input_file=...)``: a lackey trace, a ``-w replay`` trace);
- the numbers of the cost profile a policy decides by (its ``cost_profile`` parameter).

Editing any of these recomputes the cells they enter; nothing stale is ever served.
"""

from __future__ import annotations

import hashlib
import os
import sys
from functools import cache
from pathlib import Path
from typing import Any

from bench._compiled import COMPILED
from bench.errors import BenchError

PACKAGES: tuple[str, ...] = ("bench", "policies", "workloads")
"""The project's packages whose sources a cell runs."""

PRESENTATION: tuple[str, ...] = (
    "bench/__main__.py",
    "bench/charts",
    "bench/executors",
    "bench/core/reference",  # the C reference of the hot path: a benchmark's yardstick
    "bench/core/benchmark.py",
    "bench/core/stream.py",
    # the recorder and its tools; bench/record/format.py (the decoder) and replay.py (the guest
    # workload's events -> operations) run inside cells and are hashed
    "bench/record/build.py",
    "bench/record/cli.py",
    "bench/record/era.py",
    "bench/record/errors.py",
    "bench/record/fetch.py",
    "bench/record/guest",
    "bench/record/inspect.py",
    "bench/record/plugin",
    "bench/record/qemu.py",
    "bench/record/recorder.py",
    "bench/record/scenarios.py",
    "bench/record/validate.py",
    "bench/fingerprint.py",
    "bench/outputs.py",
    "bench/perf.py",
    "bench/plots.py",
    "bench/progress.py",
    "bench/report.py",
    "bench/results.py",
    "bench/stats.py",
)
"""Files and folders (relative to the project root) that never run inside a cell: editing them
keeps the cache. Everything else under ``PACKAGES`` is hashed."""

_ROOT = Path(__file__).resolve().parent.parent


def _hash_files(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _excluded(relative: str) -> bool:
    return any(relative == p or relative.startswith(p + "/") for p in PRESENTATION)


@cache
def core_digest(root: Path = _ROOT) -> str:
    """SHA-256 over the sources of the project's packages that a cell runs (once per process)."""
    files = []
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            if not _excluded(path.relative_to(root).as_posix()):
                files.append(path)
    native = root / "bench" / "core"
    files.extend(path for pattern in ("*.c", "*.h") for path in native.glob(pattern)
                 if not _excluded(path.relative_to(root).as_posix()))
    return _hash_files(files, root)


@cache
def class_digest(cls: type) -> str:
    """The digest of the code behind a policy or workload class: the project's core digest, plus
    the sources of the package that defines it (its top-level package folder, or its single
    module) when it lives outside the project's packages (a third-party or test class)."""
    core = core_digest()
    if cls.__module__ in COMPILED:
        # a core module served by the compiled build: bench._compiled uses a build only when its
        # manifest records the SHA-256 of exactly these sources, which core_digest hashes
        return core
    module = sys.modules.get(cls.__module__)
    filename = getattr(module, "__file__", None)
    if not filename:
        return core
    path = Path(filename).resolve()
    if any(path.is_relative_to(_ROOT / package) for package in PACKAGES):
        return core
    top = sys.modules.get(cls.__module__.partition(".")[0])
    top_file = Path(getattr(top, "__file__", None) or path).resolve()
    if top_file.name == "__init__.py":
        folder = top_file.parent
        files = list(folder.rglob("*.py"))
        return hashlib.sha256((core + _hash_files(files, folder.parent)).encode()).hexdigest()
    return hashlib.sha256((core + _hash_files([path], path.parent)).encode()).hexdigest()


_file_digests: dict[tuple[str, int, int, int], str] = {}


def file_digest(path: str, what: str) -> str:
    """SHA-256 of a file's contents (remembered per path, size and modification time within
    one process, so a big trace is read once per run); an unreadable file is a BenchError."""
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _file_digests:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            _file_digests[key] = digest.hexdigest()
        return _file_digests[key]
    except IsADirectoryError:
        raise BenchError(f"{what} {path} is a folder, not a file") from None
    except OSError as err:
        raise BenchError(f"cannot read {what} {path}: {err.strerror}") from None


def input_digests(owner: str, schema: dict[str, Any], params: dict[str, Any]) -> dict[str, str]:
    """{parameter: contents digest} for every parameter whose value names an input file."""
    out = {}
    for key, param in sorted(schema.items()):
        name_of = getattr(param, "input_file", None)
        if name_of is None or key not in params:
            continue
        path = name_of(params[key])
        if path:
            out[key] = file_digest(path, f"{owner} parameter {key}: file")
    return out
