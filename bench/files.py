"""Atomic file writes: a temporary file in the same folder, then os.replace (never half a file)."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from typing import IO


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}{OWNER_SEP}{owner_tag()}{OWNER_SEP}",
                               suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for sharing
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8",
                                                                            "newline": "\n"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


OWNER_SEP = "~"
"""Separates a temporary file's name, its writer (host and pid) and mkstemp's random part."""


def owner_tag() -> str:
    """``HOST-PID`` of this process: a temporary file names its writer, so a run sharing a
    folder can tell a dead writer's leftover (removable at once) from another live run's cell
    being written (bench.runner.clean_temporaries)."""
    return f"{socket.gethostname().replace(OWNER_SEP, '_')}-{os.getpid()}"


def writer_is_gone(name: str) -> bool:
    """Whether the temporary file ``name`` was written by a process of this host that no
    longer runs (False when it names another host, or no writer)."""
    parts = name.split(OWNER_SEP)
    if len(parts) != 3:
        return False
    host, _, pid = parts[1].rpartition("-")
    if host != socket.gethostname().replace(OWNER_SEP, "_") or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text))
