"""guest: replay a recorded real guest (bench/record, docs/recording.md) through the policies.

``-w guest:NAME`` runs a shipped recording (recordings/README.md), ``-w guest:FILE.rec`` any
recording; ``events`` replays a bounded prefix. How events become operations:
bench/record/replay.py (with the native core, bench/core/_guest.c: the same operations, in C);
what is approximated and how the real kernel compares with the synthetic workloads:
docs/real-guests.md.
"""

from __future__ import annotations

import random

from bench.core.generators import Deferred, guest_stream
from bench.params import Param
from bench.record import replay
from bench.workload import GuestRun, Workload


def _recording_path(value: str) -> str | None:
    """The recording whose bytes enter the cell cache's key (Param.input_file)."""
    if not value:
        return None
    try:
        return str(replay.resolve(value))
    except Exception:
        return value


QUICK_EVENTS = 20_000
"""``quick=true`` (``--quick``) replays this prefix of a recording unless ``events`` is given
(counted after the snapshot, as ``events`` is; on every shipped recording a part of its first
phase, so a quick replay checks a pipeline, it does not measure a scenario)."""


class GuestReplay(Workload):
    seeded = False
    quick_sizes = {"events": QUICK_EVENTS}
    unbounded_zero = frozenset({"events"})
    name = "guest"
    summary = ("replay a recorded real 32-bit Linux guest (guest:NAME of a shipped recording, or "
               "guest:FILE.rec; docs/real-guests.md)")
    params = {
        "recording": Param(str, "", "a shipped recording (" + ", ".join(replay.shipped())
                           + ") or a .rec file (required)", input_file=_recording_path),
        "events": Param(int, 0, "replay only the first N events, ending the phase there "
                        "(0: the whole recording)", minimum=0),
        "quick": Param(bool, False, f"replay the first {QUICK_EVENTS:,} events unless "
                       "events is given"),
    }

    recording: str
    events: int
    quick: bool

    def build(self, rng: random.Random) -> GuestRun:
        player = replay.Replayer(replay.resolve(self.recording), self.events)
        sizes = {"page_tables": len(player.guest.mem.tables)}
        self.last_player = player
        return GuestRun(player.guest, [player.cr3],
                        Deferred(lambda: guest_stream(player), player.ops), sizes)

    def check_inputs(self) -> None:
        """Read the whole recording now (its events are read lazily during the run)."""
        replay.check(replay.resolve(self.recording))


WORKLOAD = GuestReplay
