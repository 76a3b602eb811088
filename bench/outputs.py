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
import time
from collections.abc import Callable, Iterator
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


class FolderLock:
    """The lock a command holds on a results folder (``locked`` yields it)."""

    def __init__(self, fd: int, folder: str) -> None:
        self.fd = fd
        self.folder = folder

    def exclusive(self, stop: Callable[[], bool], waiting: Callable[[], None] | None = None) -> bool:
        """Turn a shared lock into an exclusive one, waiting while other runs that share the
        folder compute or write; False when ``stop()`` became true first (a signal arrived)."""
        first = True
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            if stop():
                return False
            if first and waiting is not None:
                waiting()
            first = False
            time.sleep(0.1)


@contextmanager
def locked(folder: str, shared: bool = False) -> Iterator[FolderLock]:
    """Create ``folder`` if needed and hold an exclusive lock on it; another holder is an
    error. Forked workers share the lock, so it lasts until the last of them has ended.

    ``shared``: a run computing cells holds a shared lock, so other runs may compute into the
    same folder at the same time (the cells they claim are shared out, bench.executors.claims),
    while ``plot``, ``reprice --out`` and ``merge`` (exclusive) are refused; it takes the lock
    exclusively (``FolderLock.exclusive``) to write the results files."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        raise BenchError(f"cannot create the results folder {folder}: "
                         f"{err.strerror or err}") from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(f"{folder} is being written by another shadowbench run; wait for "
                             f"it to finish or give another --out") from None
        yield FolderLock(fd, folder)
    finally:
        os.close(fd)
