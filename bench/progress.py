"""The progress display on stderr: phases, cells done, time left; a heartbeat when piped.

On a terminal one line is rewritten in place, cut to the terminal's width (read at every update,
so a resized window is followed) and refreshed every second so the elapsed time moves while a
long cell runs. Piped (a log file, CI), a line is written at each phase, at most every
``PIPE_SECONDS`` for cells, and a heartbeat line when nothing was written for
``HEARTBEAT_SECONDS``, so a log never goes silent during a long cell or the charts.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from typing import TextIO

PIPE_SECONDS = 5.0
HEARTBEAT_SECONDS = 15.0
TICK_SECONDS = 1.0


class Progress:
    """Call ``phase(name)`` as the run moves on, the instance itself after each cell (the
    runner's progress callback), and ``stop()`` at the end of a phase that should not tick."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.last_write = 0.0
        self.last_cell = 0.0
        self.name = ""
        self.status = ""
        self.shown = 0
        self.lock = threading.Lock()
        self.ticker: threading.Thread | None = None
        self.stopped = threading.Event()
        self.pending = False

    # -- what the run reports ------------------------------------------------------------------
    def phase(self, name: str) -> None:
        """A new phase (building the guests, cells, charts), shown at the first tick (so a run
        that fails at once, on bad input, prints nothing but its error) or the first cell."""
        with self.lock:
            self.name = name
            self.status = ""
            self.pending = True
        self._tick_on()

    def __call__(self, done: int, total: int, reused: int, what: str, fraction: float) -> None:
        """After each cell. ``fraction``: the share of the work to compute that is done (cells
        weighted by the size of their guest), which the time left is estimated from."""
        now = time.monotonic()
        elapsed = now - self.start
        computed = done - reused
        final = done == total
        left = elapsed * (1 - fraction) / fraction if fraction > 0 else 0
        eta = f", ~{left:.0f}s left" if computed and not final and fraction > 0 else ""
        status = (f"{done}/{total} cells{f', {reused} reused' if reused else ''}{eta}"
                  + (f"; last: {what}" if what else ""))
        with self.lock:
            self.status = status
            if self.tty or final or self.pending or now - self.last_cell >= PIPE_SECONDS:
                self.last_cell = now
                self._draw(force=True)

    def stop(self) -> None:
        """End the ticking (and the terminal's line)."""
        self.stopped.set()
        if self.ticker is not None:
            self.ticker.join()
            self.ticker = None
        with self.lock:
            if self.tty and self.shown:
                self.stream.write("\n")
                self.stream.flush()
            self.shown = 0

    # -- drawing -------------------------------------------------------------------------------
    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        text = f"[{elapsed:.0f}s] {self.name}"
        return text + (f": {self.status}" if self.status else "")

    def _draw(self, force: bool = False) -> None:
        self.pending = False
        text = self.line()
        try:
            if self.tty:
                width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
                text = text if len(text) <= width else text[:width - 3] + "..."
                self.stream.write("\r" + text.ljust(self.shown))
                self.shown = len(text)
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # stderr gone or full: progress is not worth failing for
            pass
        self.last_write = time.monotonic()

    def _tick_on(self) -> None:
        if self.ticker is not None:
            return
        self.stopped.clear()
        self.ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
        self.ticker.start()

    def _tick(self) -> None:
        while not self.stopped.wait(TICK_SECONDS):
            with self.lock:
                quiet = time.monotonic() - self.last_write
                if self.tty or self.pending:
                    self._draw()
                elif quiet >= HEARTBEAT_SECONDS:
                    try:
                        self.stream.write(f"{self.line()} (still running)\n")
                        self.stream.flush()
                    except (OSError, ValueError):
                        pass
                    self.last_write = time.monotonic()
