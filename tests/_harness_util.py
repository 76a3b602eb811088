"""Helpers shared by the harness tests: run the CLI in-process or as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
TINY_MAIN = os.path.join(TESTS, "_tiny_workload.py")


DASK_PRELOAD = {"DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([TINY_MAIN])}
"""Dask's own configuration (an environment variable): every Dask worker imports the test
workloads (tests/_tiny_workload.py ``dask_setup``) when it starts."""


def env(charts: bool = False) -> dict[str, str]:
    e = dict(os.environ, **DASK_PRELOAD)
    if not charts:
        e["TINY_NO_CHARTS"] = "1"
    e["PYTHONPATH"] = os.pathsep.join([ROOT, TESTS] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    return e


def bench(*argv: str, cwd: str | None = None, tiny: bool = True, charts: bool = False,
          timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m bench ARGV`` (with the test workloads registered, and no charts drawn unless
    ``charts``, when ``tiny``)."""
    cmd = [sys.executable, TINY_MAIN] if tiny else [sys.executable, "-m", "bench"]
    return subprocess.run(cmd + list(argv), cwd=cwd or ROOT, env=env(charts), capture_output=True,
                          text=True, timeout=timeout)


SLOW_PATH = "shadowbench: running the slow path:"
"""How the one line that says the native core is not in use begins (bench.__main__.warn_slow_path);
tests/test_native_core.py checks when it is printed."""


def diagnostics(stderr: str) -> list[str]:
    """The lines of a run's stderr other than the slow-path notice, which a run prints, once,
    whenever the native core is off (SHADOWBENCH_NATIVE=0) or absent: the tests that count a
    run's lines of error hold whichever core is in use."""
    return [line for line in stderr.splitlines() if not line.startswith(SLOW_PATH)]


def stable_bytes(path: str) -> str:
    """results.json without meta.volatile, re-serialised exactly as the harness writes it."""
    from bench.results import dumps, stable

    with open(path, encoding="utf-8") as handle:
        return dumps(stable(json.load(handle)))


def has_workloads(*names: str) -> bool:
    try:
        from bench import registry

        known = registry.workloads()
    except Exception:
        return False
    return all(n in known for n in names)


def has_policies(*names: str) -> bool:
    try:
        from bench import registry

        known = registry.policies()
    except Exception:
        return False
    return all(n in known for n in names)


def processes_naming(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (a run and the workers it forked)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if text.encode() in handle.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found
