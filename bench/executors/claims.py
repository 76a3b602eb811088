"""Claims: a cell being computed is claimed, so runs sharing a results folder share the work.

Before a run hands a cell to a worker it creates ``OUT/cells/<digest>.claim`` atomically (the
owner's description is written to a temporary file, then hard-linked to the claim's name, which
fails if the name exists), and a heartbeat thread of the run refreshes the claim's modification
time every ``HEARTBEAT_SECONDS``. Another run finding the claim leaves the cell alone and waits
for its file to appear. A claim expires when its heartbeat is older than ``EXPIRE_SECONDS`` (its
owner is gone or hung, on any host), or at once when its owner ran on this host and that process
no longer exists; an expired claim is taken over under an exclusive lock on
``OUT/cells/.claims.lock``, so two runs never both take it. The claim is removed once the cell's
file is stored, or when the run stops; a run that ends removes the expired claims it finds.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

SUFFIX = ".claim"
LOCK_NAME = ".claims.lock"
HEARTBEAT_SECONDS = 2.0
"""How often a run refreshes the claims it holds."""
EXPIRE_SECONDS = 30.0
"""A claim not refreshed for this long belongs to a run that is gone (or hung): it is taken over."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), which tells
    a live owner from a later process that reused its pid; None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rpartition(")")[2].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return started is None or _start_time(pid) in (None, started)


class Claims:
    """The claims one run holds in a cells folder, with the thread that keeps them alive."""

    def __init__(self, cells_dir: str) -> None:
        self.cells_dir = cells_dir
        self.owner: dict[str, Any] = {
            "host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid()),
            "token": uuid.uuid4().hex}
        self.held: set[str] = set()
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="shadowbench-claims", daemon=True)
        self._thread.start()

    def path(self, digest: str) -> str:
        return os.path.join(self.cells_dir, digest + SUFFIX)

    def take(self, digest: str) -> bool:
        """Claim a cell (True when this run holds it already); False when another live run
        holds it."""
        if digest in self.held:
            return True
        if self._create(digest):
            return True
        if not self.expired(digest):
            return False
        with open(os.path.join(self.cells_dir, LOCK_NAME), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            if not self.expired(digest):  # taken over by another run meanwhile
                return False
            try:
                os.unlink(self.path(digest))
            except FileNotFoundError:
                pass
            return self._create(digest)

    def _create(self, digest: str) -> bool:
        tmp = os.path.join(self.cells_dir, f".{digest}.{self.owner['token']}.claim.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(self.owner, handle)
        try:
            os.link(tmp, self.path(digest))
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        with self._mutex:
            self.held.add(digest)
        return True

    def expired(self, digest: str) -> bool:
        """Whether a claim on the cell is absent, stale or its owner's process is gone."""
        path = self.path(digest)
        try:
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            return True
        if age > EXPIRE_SECONDS:
            return True
        try:
            with open(path, encoding="utf-8") as handle:
                owner = json.load(handle)
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            return False
        if isinstance(owner, dict) and owner.get("host") == self.owner["host"] and isinstance(
                owner.get("pid"), int):
            return not _alive(owner["pid"], owner.get("started"))
        return False

    def claimed_by_other(self, digest: str) -> bool:
        return digest not in self.held and os.path.exists(self.path(digest))

    def release(self, digest: str) -> None:
        with self._mutex:
            if digest not in self.held:
                return
            self.held.discard(digest)
        try:
            os.unlink(self.path(digest))
        except OSError:
            pass

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with self._mutex:
                held = list(self.held)
            for digest in held:
                try:
                    os.utime(self.path(digest))
                except OSError:
                    pass

    def close(self) -> None:
        """Stop the heartbeat and remove every claim still held."""
        self._stop.set()
        self._thread.join(5)
        with self._mutex:
            held, self.held = list(self.held), set()
        for digest in held:
            try:
                os.unlink(self.path(digest))
            except OSError:
                pass
        self.remove_expired()

    def remove_expired(self) -> None:
        """Remove the expired claims of runs that are gone (on cells they never finished, or
        finished just before they were killed)."""
        try:
            names = [n for n in os.listdir(self.cells_dir) if n.endswith(SUFFIX)]
        except OSError:
            return
        if not names:
            return
        with open(os.path.join(self.cells_dir, LOCK_NAME), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            for name in names:
                digest = name[:-len(SUFFIX)]
                if self.expired(digest):
                    try:
                        os.unlink(self.path(digest))
                    except OSError:
                        pass
