"""Typed, validated parameters for policies and workloads (``NAME:k=v,...`` and ``--set k=v``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bench.errors import BenchError, unknown_name


@dataclass(frozen=True)
class Param:
    """One parameter: its type, default, allowed values and a one-line help.

    ``kind`` is bool, int, float or str; ``choices`` restricts a str; ``minimum``/``maximum``
    bound a number; ``check`` is an extra rule returning an error text (or None);
    ``input_file`` returns the path of the input file a value names (or None): the file's
    contents then enter the cell cache's key (bench.fingerprint).
    """

    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[Any], str | None] | None = None
    input_file: Callable[[Any], str | None] | None = None

    def describe(self) -> str:
        allowed = ""
        if self.choices:
            allowed = " (" + "|".join(self.choices) + ")"
        elif self.minimum is not None or self.maximum is not None:
            lo = "" if self.minimum is None else f">= {self.minimum:g}"
            hi = "" if self.maximum is None else f"<= {self.maximum:g}"
            allowed = " (" + ", ".join(x for x in (lo, hi) if x) + ")"
        return f"{self.kind.__name__}, default {self.default!r}{allowed}: {self.help}"

    def parse(self, owner: str, key: str, raw: Any) -> Any:
        """Convert and validate ``raw`` (a string from the command line, or a typed value)."""
        where = f"{owner} parameter {key}"
        value: Any
        if self.kind is bool:
            if isinstance(raw, bool):
                value = raw
            elif str(raw).lower() in ("1", "true", "yes", "on"):
                value = True
            elif str(raw).lower() in ("0", "false", "no", "off"):
                value = False
            else:
                raise BenchError(f"{where}={raw!r} is not a boolean (use true or false)")
        elif self.kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise BenchError(f"{where}={raw!r} is not an integer")
            try:
                if not isinstance(raw, str):
                    value = int(raw)
                else:
                    text = raw.strip().replace("_", "")
                    digits = text.lstrip("+-")
                    value = int(text, 10) if digits.isdigit() else int(text, 0)
            except ValueError:
                raise BenchError(f"{where}={raw!r} is not an integer (decimal or 0x-hex)") from None
        elif self.kind is float:
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise BenchError(f"{where}={raw!r} is not a number") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise BenchError(f"{where}={raw!r} is not a finite number")
        else:
            value = str(raw)
        if self.choices is not None and value not in self.choices:
            raise unknown_name(f"value for {where}", value, self.choices)
        if self.minimum is not None and value < self.minimum:
            raise BenchError(f"{where}={value!r} is below the minimum {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise BenchError(f"{where}={value!r} is above the maximum {self.maximum:g}")
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise BenchError(f"{where}={value!r}: {problem}")
        return value


def resolve(owner: str, schema: Mapping[str, Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter of ``schema`` with ``given`` values parsed and validated; unknown keys fail."""
    for key in given:
        if key not in schema:
            raise unknown_name(f"parameter of {owner}", key, schema) if schema else BenchError(
                f"{owner} takes no parameters (got {key!r})")
    out = {}
    for key in sorted(schema):
        param = schema[key]
        out[key] = param.parse(owner, key, given[key]) if key in given else param.default
    return out


BARE_VALUE: dict[str, str] = {"guest": "recording"}
"""Names whose spec may be ``NAME:VALUE`` (no ``=``), meaning ``NAME:KEY=VALUE``: ``-w guest:PATH``
(the whole rest is the value, so a path may hold commas)."""


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME[:k=v,...]`` -> (NAME, {k: v}); a malformed pair is an error. For a name in
    BARE_VALUE, ``NAME:VALUE`` without ``=`` is ``NAME:KEY=VALUE``."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise BenchError(f"empty name in {spec!r} (expected NAME[:key=value,...])")
    pairs: dict[str, str] = {}
    if name in BARE_VALUE and rest.strip() and "=" not in rest:
        return name, {BARE_VALUE[name]: rest.strip()}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise BenchError(f"malformed parameter {item!r} in {spec!r} (expected key=value)")
            if key.strip() in pairs:
                raise BenchError(f"parameter {key.strip()!r} given twice in {spec!r}")
            pairs[key.strip()] = value.strip()
    return name, pairs


def parse_assignment(text: str, option: str = "--set") -> tuple[str, str]:
    """``KEY=VALUE`` (from ``--set``, or the ``option`` named) -> (KEY, VALUE)."""
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        expected = "KEY=V1,V2,..." if option == "--grid" else "KEY=VALUE"
        raise BenchError(f"malformed {option} {text!r} (expected {expected})")
    return key.strip(), value.strip()
