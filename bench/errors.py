"""The project's one error type for bad input: the CLI turns it into one line and exit status 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """Bad input (name, parameter, file) or an impossible configuration.

    The message is one line that says what is wrong and what is allowed.
    """


def unknown_name(kind: str, name: str, known: Iterable[str]) -> BenchError:
    """An error for an unknown name, suggesting close matches and listing what is valid."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return BenchError(f"unknown {kind} {name!r}{hint} (valid: {', '.join(known)})")
