"""Failures of the recording environment (exit status 1); bad input stays bench.errors.BenchError
(exit status 2)."""

from __future__ import annotations


class EnvironmentFailure(Exception):
    """Something the recorder needs is missing or failed (a package, the compiler, QEMU, a boot,
    a scenario that did not do what it claims). The message is one line."""
