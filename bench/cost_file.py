"""Cost profiles from TOML files (``--cost-profile path.toml``): your own measured exit costs.

The file gives the profile's ``name`` and ``cpu``, every number of bench.costs.CostProfile
(cycles per event, whole numbers from 0 to costs.MAX_EVENT_CYCLES), optionally ``estimates``
(the numbers that are estimates) and a ``[sources]`` table (number -> where it comes from)::

    name = "epyc-7763-kvm61"
    cpu = "AMD EPYC 7763, Linux 6.1 KVM"
    estimates = ["shadow_page_zap"]
    exit_roundtrip = 1300
    hidden_fault = 1900
    ...
    [sources]
    exit_roundtrip = "kvm-unit-tests vmexit cpuid, our machine, 2024-05"

Everything is checked like any other input: an unknown or missing key, a value of the wrong type
or out of range is one BenchError naming the file. A file may not take a built-in profile's name
(its numbers would then pass for the built-in ones in a results file).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from typing import Any

from bench import costs
from bench.errors import BenchError, unknown_name

NUMBERS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(costs.CostProfile)
    if f.name not in ("name", "cpu", "sources", "estimates", "version"))
"""The cycle numbers a profile file must give."""
TEXT_KEYS = ("name", "cpu")
OTHER_KEYS = ("estimates", "sources")

_loaded: dict[tuple[str, int, int], costs.CostProfile] = {}


def is_profile_file(name: str) -> bool:
    """Whether a ``--cost-profile`` value names a file rather than a built-in profile."""
    return name.endswith(".toml")


def load(path: str) -> costs.CostProfile:
    """The validated profile a TOML file describes (read once per path, size and mtime)."""
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        if key in _loaded:
            return _loaded[key]
        with open(path, "rb") as handle:
            raw = handle.read()
    except IsADirectoryError:
        raise BenchError(f"cost profile file {path} is a folder") from None
    except OSError as err:
        raise BenchError(f"cannot read cost profile file {path}: {err.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BenchError(f"cost profile file {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise BenchError(f"cost profile file {path}: malformed TOML: {err}") from None
    profile = from_mapping(data, f"cost profile file {path}")
    _loaded[key] = profile
    return profile


def from_mapping(data: dict[str, Any], where: str) -> costs.CostProfile:
    """A CostProfile from a file's parsed contents; every problem is a BenchError."""
    known = set(NUMBERS) | set(TEXT_KEYS) | set(OTHER_KEYS)
    for key in data:
        if key not in known:
            raise unknown_name(f"key in {where}", key, known)
    for key in TEXT_KEYS:
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise BenchError(f"{where}: {key} must be a non-empty string")
    if data["name"] in costs.PROFILES:
        raise BenchError(f"{where}: name {data['name']!r} is a built-in profile's; give the "
                         f"file's profile its own name")
    missing = [k for k in NUMBERS if k not in data]
    if missing:
        raise BenchError(f"{where}: missing {', '.join(missing)} (every number of a profile "
                         f"is needed; `python -m bench list` shows the built-in ones)")
    numbers = {}
    for key in NUMBERS:
        value = data[key]
        if not isinstance(value, int) or isinstance(value, bool) or not (
                0 <= value <= costs.MAX_EVENT_CYCLES):
            raise BenchError(f"{where}: {key} = {value!r} must be a whole number of cycles from "
                             f"0 to {costs.MAX_EVENT_CYCLES}")
        numbers[key] = value
    estimates = data.get("estimates", [])
    if not isinstance(estimates, list) or not all(isinstance(e, str) for e in estimates):
        raise BenchError(f"{where}: estimates must be a list of number names")
    for e in estimates:
        if e not in NUMBERS:
            raise unknown_name(f"number in {where} estimates", e, NUMBERS)
    sources = data.get("sources", {})
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise BenchError(f"{where}: [sources] must map number names to text")
    for k in sources:
        if k not in NUMBERS:
            raise unknown_name(f"number in {where} [sources]", k, NUMBERS)
    return costs.CostProfile(name=data["name"], cpu=data["cpu"], sources=dict(sources),
                             estimates=tuple(estimates), **numbers)
