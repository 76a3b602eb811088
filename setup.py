"""Build: the native core and the mypyc-compiled modules where the machine can, else pure Python.

The project's metadata is in pyproject.toml. This script only adds two optional builds:

- the native core, bench/core/_core.c, _scan.c and _guest.c (the shadow MMU, the built-in
  policies, the kscand, linear-scan and kmap generators and the replay of a recorded guest in C,
  issue 17;
  bench/core/__init__.py explains what runs there), compiled with the machine's C compiler;
  beside the module it writes ``bench/core/_core.json`` with the SHA-256 of the source it was
  built from, so a checkout uses it only for that very source;
- the simulator's hot modules compiled with mypyc (bench/_compiled.py lists them and explains
  how a checkout finds them): the same Python sources as C extension modules.

Results do not depend on either, only the speed (docs/performance.md). With no C compiler, no
mypyc, or SHADOWBENCH_PURE=1, the install is the pure-Python package and still works; either
build failing leaves the other.
"""

import hashlib
import json
import os
import runpy
import sys
from pathlib import Path

import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CORE = runpy.run_path(str(ROOT / "bench" / "_compiled.py"))
PURE = os.environ.get(CORE["PURE_ENV"], "") not in ("", "0")
NATIVE = "bench.core._core"
NATIVE_SOURCES = tuple(Path("bench") / "core" / name
                       for name in ("_core.c", "_scan.c", "_guest.c", "_stream.h"))
"""The native core's C sources and its header, in the order their SHA-256 is taken
(bench.core.SOURCES)."""


def _warn(message: str) -> None:
    print(f"shadowbench: {message}; installing the pure-Python simulator", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python, and records the sources it compiled."""

    def run(self) -> None:
        if not self.extensions:
            return
        self.built: set[str] = set()
        try:
            super().run()  # build_extension below keeps one extension's failure from the others
        except Exception as exc:  # no compiler at all, missing headers
            _warn(f"the compiled core could not be built ({exc})")
        target = ROOT if self.inplace else Path(self.build_lib)
        if NATIVE in self.built:
            manifest = target / "bench" / "core" / "_core.json"
            manifest.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256(b"".join((ROOT / source).read_bytes()
                                             for source in NATIVE_SOURCES)).hexdigest()
            manifest.write_text(json.dumps({"source": digest}) + "\n")
        if self._mypyc_built():
            manifest = target / "bench" / CORE["MANIFEST"]
            manifest.parent.mkdir(parents=True, exist_ok=True)
            manifest.write_text(json.dumps(CORE["manifest"](ROOT), indent=1, sort_keys=True) + "\n")

    def _mypyc_built(self) -> bool:
        names = [e.name for e in self.extensions if e.name != NATIVE]
        return bool(names) and all(n in getattr(self, "built", ()) for n in names)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # a failed compile: this extension only
            if ext.name == NATIVE:
                print(f"shadowbench: the native core could not be built ({exc}); the Python "
                      "simulator will replay instead", file=sys.stderr)
            else:
                _warn(f"the compiled core could not be built ({exc})")
            return
        self.built.add(ext.name)

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()
        if not self.inplace:
            if NATIVE in getattr(self, "built", ()):
                outputs.append(str(Path(self.build_lib) / "bench" / "core" / "_core.json"))
            if self._mypyc_built():
                outputs.append(str(Path(self.build_lib) / "bench" / CORE["MANIFEST"]))
        return outputs


def _git_commit() -> str | None:
    """The checkout's commit (``-dirty`` with local changes), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


RECORDINGS = ROOT / "recordings"
SHIPPED = Path("bench") / "_recordings"
"""Where an installed package keeps the shipped real-guest recordings (bench.record.replay
SHIPPED_DIR): the checkout's recordings/ folder is beside the package, not in it."""


def _shipped_recordings() -> list[Path]:
    return sorted(RECORDINGS.glob("*.rec")) + [RECORDINGS / "README.md"]


class StampedBuildPy(build_py):
    """build_py that stamps the git commit of the sources into the installed package
    (bench/_build_info.json), so an installed copy reports it (bench.results.git_commit), and
    copies the shipped recordings into it (bench/_recordings/), so an installed ``shadowbench``
    runs its default comparison, whose real-guest cells replay them, from any folder."""

    def run(self) -> None:
        super().run()
        if not self.dry_run:
            info = Path(self.build_lib) / "bench" / "_build_info.json"
            info.parent.mkdir(parents=True, exist_ok=True)
            info.write_text(json.dumps({"git_commit": _git_commit()}) + "\n")
            shipped = Path(self.build_lib) / SHIPPED
            shipped.mkdir(parents=True, exist_ok=True)
            for source in _shipped_recordings():
                self.copy_file(str(source), str(shipped / source.name))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return super().get_outputs(include_bytecode) + [
            str(Path(self.build_lib) / "bench" / "_build_info.json")] + [
            str(Path(self.build_lib) / SHIPPED / source.name) for source in _shipped_recordings()]


def native_extension() -> list:
    """The native core (a plain C extension: any C99 compiler and the Python headers)."""
    if PURE:
        return []
    return [Extension(NATIVE, [str(source) for source in NATIVE_SOURCES if source.suffix == ".c"],
                      depends=[str(source) for source in NATIVE_SOURCES if source.suffix == ".h"],
                      extra_compile_args=["-O2"])]


def extensions() -> list:
    if PURE:
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _warn("mypyc is not available")
        return []
    sources = [str(CORE["source_path"](Path("."), m)) for m in CORE["COMPILED"]]
    try:
        return mypycify(sources, opt_level="3", group_name=CORE["GROUP"])
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error
        _warn(f"mypyc could not compile the core ({exc})")
        return []


setup(ext_modules=native_extension() + extensions(),
      cmdclass={"build_ext": OptionalBuildExt, "build_py": StampedBuildPy})
