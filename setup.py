"""Build: the simulator's hot modules compiled with mypyc where the machine can, else pure Python.

The project's metadata is in pyproject.toml. This script only adds the compiled core
(bench/_compiled.py lists the modules and explains how a checkout finds them): mypyc turns the
same Python sources into C extension modules, so results do not depend on it, only the speed
(docs/performance.md). With no C compiler, no mypyc, or SHADOWBENCH_PURE=1, the install is the
pure-Python package and still works.
"""

import json
import os
import runpy
import sys
from pathlib import Path

import subprocess

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CORE = runpy.run_path(str(ROOT / "bench" / "_compiled.py"))
PURE = os.environ.get(CORE["PURE_ENV"], "") not in ("", "0")


def _warn(message: str) -> None:
    print(f"shadowbench: {message}; installing the pure-Python simulator", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python, and records the sources it compiled."""

    def run(self) -> None:
        if not self.extensions:
            return
        try:
            super().run()
        except Exception as exc:  # no compiler, missing headers, a failed compile
            _warn(f"the compiled core could not be built ({exc})")
            return
        target = ROOT if self.inplace else Path(self.build_lib)
        manifest = target / "bench" / CORE["MANIFEST"]
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(CORE["manifest"](ROOT), indent=1, sort_keys=True) + "\n")

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()
        if self.extensions and not self.inplace:
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


class StampedBuildPy(build_py):
    """build_py that stamps the git commit of the sources into the installed package
    (bench/_build_info.json), so an installed copy reports it (bench.results.git_commit)."""

    def run(self) -> None:
        super().run()
        if not self.dry_run:
            info = Path(self.build_lib) / "bench" / "_build_info.json"
            info.parent.mkdir(parents=True, exist_ok=True)
            info.write_text(json.dumps({"git_commit": _git_commit()}) + "\n")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return super().get_outputs(include_bytecode) + [
            str(Path(self.build_lib) / "bench" / "_build_info.json")]


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


setup(ext_modules=extensions(),
      cmdclass={"build_ext": OptionalBuildExt, "build_py": StampedBuildPy})
