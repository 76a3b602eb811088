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

from setuptools import setup
from setuptools.command.build_ext import build_ext

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


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
