"""The `record` and `inspect` verbs (kept here so bench/__main__.py only registers them)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from bench.record.errors import EnvironmentFailure


def add_record_verbs(sub: argparse._SubParsersAction) -> None:
    from bench.record.fetch import KERNELS
    from bench.record.scenarios import SCENARIOS
    p = sub.add_parser("record", help="record a real 32-bit Linux guest's page-table traffic "
                                      "under QEMU TCG")
    p.add_argument("scenario", metavar="SCENARIO", help=f"one of {', '.join(SCENARIOS)}")
    p.add_argument("--kernel", required=True, metavar="FLAVOUR",
                   help=f"Debian i386 kernel flavour: {', '.join(KERNELS)}")
    p.add_argument("--out", required=True, metavar="FILE.rec", help="the recording to write")
    p.add_argument("--icount", action="store_true",
                   help="deterministic run (-icount shift=0,sleep=off and an RTC on the virtual "
                        "clock): two recordings of a scenario have identical events")
    p.add_argument("--work", metavar="DIR", help="cache of packages and builds "
                                                 "(default ~/.cache/shadowbench/record)")
    p.add_argument("--timeout", type=float, default=1800, metavar="S",
                   help="give up on the guest after this many seconds (default 1800)")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("inspect", help="summarise a recording")
    p.add_argument("recording", metavar="FILE.rec")
    p.add_argument("--top", type=int, default=10, metavar="N", help="writers to list (default 10)")
    p.set_defaults(func=cmd_inspect)


def cmd_record(args: argparse.Namespace) -> int:
    from bench.record.recorder import record
    # a terminated recorder unwinds like an interrupted one: QEMU is killed, no file is left
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        record(args.scenario, args.kernel, Path(args.out),
               work=Path(args.work) if args.work else None, icount=args.icount,
               timeout=args.timeout)
    except EnvironmentFailure as err:
        sys.stderr.write(f"bench: error: {' '.join(str(err).split())}\n")
        return 1
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from bench.record.format import open_recording
    from bench.record.inspect import render, summarise
    print(render(summarise(open_recording(args.recording)), top=args.top))
    return 0
