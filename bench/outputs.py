"""Output locations: checked before anything is simulated, locked while a run writes them.

A results folder or file that cannot be written (a path through a file, /proc, a read-only
mount, a folder without write permission) is refused with one line before any simulation, by
creating and removing a probe file where the output will go. A results folder is locked
(flock on the folder itself, so nothing is added to it) for as long as a run writes it: a second
run on the same folder is refused instead of mixing two experiments' files.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from bench.errors import BenchError


def _nearest_existing(path: str) -> str:
    folder = path
    while not os.path.lexists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def _probe(folder: str, option: str, given: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=".shadowbench-probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise BenchError(f"{option} {given}: cannot write in {folder}: "
                         f"{err.strerror or err}") from None


def check_folder(path: str, option: str = "--out") -> None:
    """Refuse a results folder that does not exist and cannot be made, or cannot be written."""
    if not path or not path.strip():
        raise BenchError(f"{option} must not be empty (give a folder)")
    full = os.path.abspath(path)
    if os.path.exists(full):
        if not os.path.isdir(full):
            raise BenchError(f"{option} {path} exists and is not a folder")
        _probe(full, option, path)
        return
    existing = _nearest_existing(full)
    if not os.path.isdir(existing):
        raise BenchError(f"{option} {path}: {existing} is not a folder")
    _probe(existing, option, path)


def check_file(path: str, option: str = "--json") -> None:
    """Refuse an output file whose folder is missing or not writable, or that is a folder."""
    if not path or not path.strip():
        raise BenchError(f"{option} must not be empty (give a file name, or - for stdout)")
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise BenchError(f"{option} {path} is a folder (give a file name or -)")
    parent = os.path.dirname(full)
    if not os.path.isdir(parent):
        raise BenchError(f"{option} {path}: folder {parent} does not exist")
    _probe(parent, option, path)


@contextmanager
def locked(folder: str) -> Iterator[None]:
    """Create ``folder`` if needed and hold an exclusive lock on it; another holder is an
    error. Forked workers share the lock, so it lasts until the last of them has ended."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise BenchError(f"cannot create the results folder {folder}: "
                         f"{err.strerror or err}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(f"{folder} is being written by another shadowbench run; wait for "
                             f"it to finish or give another --out") from None
        yield
    finally:
        os.close(fd)
