"""Issue 17's measurement: the simulator beside the C reference of its hot path.

    python -m bench.core.benchmark                      # every measurement, 3 repetitions each
    python -m bench.core.benchmark --ops 200000 --skip-end-to-end --json bench.json

It records the default kscand guest's run (seed 0) natively, as bench.cell.run_cells does,
exports it with the initial guest memory (bench.core.stream), compiles
bench/core/reference/hotpath.c with the machine's C compiler (``$CC``, default ``cc``, -O2)
into a temporary folder, and measures, each ``--repeat`` times (median and spread):

(a) the C reference replaying the stream under flood-count (its own clock_gettime timing of
    the simulation loop);
(b) the simulator replaying the same recording under flood-count (``simulate_replay``);
(c) end to end: ``python -m bench run -p flood-count -p accessed-clear -p always-emulate
    -w kscand --seeds 1 --jobs 1`` in a subprocess, guest operations of its 3 cells over its
    wall time (the whole default run: ``--ops`` does not shorten it).

It prints the figures beside issue 17's targets and the counters of both replays side by side.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError

if TYPE_CHECKING:
    from bench.machine.memory import GuestMemory
    from bench.machine.paging import Mode
    from bench.recording import OpRecording

REFERENCE = Path(__file__).resolve().parent / "reference" / "hotpath.c"
POLICY = "flood-count"
END_TO_END_POLICIES = ("flood-count", "accessed-clear", "always-emulate")
TARGETS = {"replay": (5_000_000, 0.4), "end_to_end": (1_200_000, 0.1)}
"""Issue 17's targets: (ops/s, ratio to the C reference) for (b) and (c)."""
COMPARED = ("native_load", "native_store", "native_locked_rmw", "native_invlpg", "native_cr3",
            "native_compute_cycles", "pf_fixed", "pf_guest", "pf_bypassed", "exit_hidden_fault",
            "exit_guest_fault", "exit_ptwrite_emulate", "exit_cr3", "tlb_flush",
            "insn_emulation", "mmu_pte_write", "mmu_pte_updated", "mmu_pde_zapped", "mmu_flooded",
            "mmu_shadow_zapped", "mmu_cache_miss")
"""The counters the C reference keeps (the simulator's names)."""


@dataclass
class Recorded:
    """A kscand guest run recorded natively, with the guest memory it started from."""

    recording: OpRecording
    initial: GuestMemory
    mode: Mode
    cr3s: list[int]


def record_kscand(ops: int | None, params: dict[str, Any] | None = None,
                  seed: int = 0) -> Recorded:
    """The kscand run (default guest unless ``params``), its first ``ops`` operations (None:
    all) recorded while executed natively."""
    from bench.cell import build_run
    from bench.machine.native import NativeMachine
    from bench.recording import OpRecording

    run = build_run("kscand", params or {}, seed)
    initial = run.guest.mem.copy()
    recording = OpRecording()
    source = run.ops if ops is None else itertools.islice(run.ops, ops)
    NativeMachine(run.guest.mem, run.guest.mode, run.cr3s).run(recording.tee(source,
                                                                             run.guest.mem))
    if not recording.usable:
        raise BenchError("the kscand run could not be recorded (it wrote guest memory while "
                         "generating)")
    return Recorded(recording, initial, run.guest.mode, list(run.cr3s))


def simulate_replay(recording: OpRecording, policy_spec: str | tuple[str, dict[str, Any]],
                    initial_mem: GuestMemory, mode: Mode,
                    cr3s: list[int]) -> tuple[int, dict[str, int]]:
    """The simulator's simulation loop: replay ``recording`` under ``policy_spec`` on a copy of
    ``initial_mem``, its reads checked, as bench.cell.run_cells does. Returns (operations,
    counters). The native core (bench.core) replays it when it is in use, as run_cells does;
    ``implementation()`` says which ran."""
    from bench import core
    from bench.cell import machine_for
    from bench.registry import make_policy

    done = core.replay(recording, make_policy(policy_spec), initial_mem, mode.pae, list(cr3s))
    if done is None:
        raise BenchError(f"the recording does not replay under {policy_spec} (a read differed)")
    if done is not False:
        return done.done, done.counters
    mem = initial_mem.copy()
    machine = machine_for(make_policy(policy_spec), mem, mode, list(cr3s))
    n = recording.run(machine.step, mem)
    if n is None:
        raise BenchError(f"the recording does not replay under {policy_spec} (a read differed)")
    return n, machine.counters.as_dict()


def compiler() -> str:
    """The C compiler's path (``$CC`` or ``cc``), or a BenchError."""
    name = os.environ.get("CC") or "cc"
    path = shutil.which(name)
    if path is None:
        raise BenchError(f"no C compiler: {name!r} is not on PATH (set CC to one, e.g. CC=gcc)")
    return path


def compile_reference(folder: str, cc: str) -> str:
    """Compile hotpath.c with ``cc -O2`` into ``folder``; the executable's path."""
    binary = os.path.join(folder, "hotpath")
    done = subprocess.run([cc, "-O2", "-std=c99", "-o", binary, str(REFERENCE)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise BenchError(f"{cc} could not compile {REFERENCE.name}: {first}")
    return binary


def run_reference(binary: str, stream: str) -> dict[str, Any]:
    """One run of the compiled reference on a stream file: its JSON line."""
    done = subprocess.run([binary, stream], capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"the C reference failed: {done.stderr.strip() or done.returncode}")
    return json.loads(done.stdout)


def end_to_end(out: str) -> dict[str, Any]:
    """One ``python -m bench run`` of the three policies on kscand into ``out``: wall seconds,
    guest operations of its cells, and which simulator ran."""
    root = Path(__file__).resolve().parent.parent.parent
    command = [sys.executable, "-m", "bench", "run"]
    for policy in END_TO_END_POLICIES:
        command += ["-p", policy]
    command += ["-w", "kscand", "--seeds", "1", "--jobs", "1", "--out", out]
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise BenchError(f"bench run failed: {last}")
    with open(os.path.join(out, "results.json"), encoding="utf-8") as handle:
        doc = json.load(handle)
    records = doc["records"]
    return {"seconds": seconds, "cells": len(records),
            "guest_ops": sum(r["guest_ops"] for r in records),
            "simulator": doc["meta"]["volatile"]["host"].get("simulator"),
            "native_core": doc["meta"]["volatile"]["host"].get("native_core")}


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, minimum and maximum, and the spread ((max - min) / median)."""
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / median if median else 0.0}


def _repeat(n: int, measure: Callable[[], float]) -> list[float]:
    return [measure() for _ in range(n)]


def measure(ops: int | None, repeat: int, end_to_end_run: bool,
            say: Callable[[str], None]) -> dict[str, Any]:
    """Every measurement; the document ``--json`` writes."""
    import bench
    from bench import _compiled
    from bench.core.stream import export
    from bench.results import git_commit

    cc = compiler()
    from bench import core

    doc: dict[str, Any] = {"simulator": _compiled.state(), "native_core": core.state(),
                           "version": bench.__version__,
                           "git_commit": git_commit(),
                           "policy": POLICY, "workload": "kscand (default guest, seed 0)",
                           "repeat": repeat, "cpus": os.cpu_count(),
                           "load_before": os.getloadavg()[0], "targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="shadowbench-hotpath-") as folder:
        binary = compile_reference(folder, cc)
        say(f"recording kscand ({'all' if ops is None else ops} operations) ...")
        rec = record_kscand(ops)
        stream = os.path.join(folder, "stream.bin")
        n_ops, n_reads = export(stream, rec.recording, rec.initial, rec.mode.pae, rec.cr3s)
        doc["ops"], doc["reads"] = n_ops, n_reads

        say(f"(a) C reference, {repeat} runs ...")
        ref_runs = [run_reference(binary, stream) for _ in range(repeat)]
        ref = summary([r["ops"] / r["seconds"] for r in ref_runs])
        doc["reference"] = {"ops_per_s": ref, "runs": ref_runs, "compiler": f"{cc} -O2"}

        say(f"(b) simulator replay under {POLICY}, {repeat} runs ...")
        counters: dict[str, int] = {}

        def replay() -> float:
            nonlocal counters
            t0 = time.perf_counter()
            n, counters = simulate_replay(rec.recording, POLICY, rec.initial, rec.mode, rec.cr3s)
            return n / (time.perf_counter() - t0)

        sim = summary(_repeat(repeat, replay))
        doc["replay"] = {"ops_per_s": sim, "ratio": sim["median"] / ref["median"],
                         "counters": counters}
        rec.recording.close()
    if end_to_end_run:
        runs = []
        for i in range(repeat):
            say(f"(c) end to end, run {i + 1} of {repeat} ...")
            with tempfile.TemporaryDirectory(prefix="shadowbench-e2e-") as out:
                runs.append(end_to_end(out))
        e2e = summary([r["guest_ops"] / r["seconds"] for r in runs])
        doc["end_to_end"] = {"ops_per_s": e2e, "ratio": e2e["median"] / ref["median"],
                             "runs": runs}
    doc["load_after"] = os.getloadavg()[0]
    return doc


def report(doc: dict[str, Any]) -> str:
    """The figures as text: each measurement beside its target, then the counters."""
    def rate(s: dict[str, float]) -> str:
        return f"{s['median'] / 1e6:7.3f} M ops/s (min {s['min'] / 1e6:.3f}, max " \
               f"{s['max'] / 1e6:.3f}, spread {100 * s['spread']:.1f}%)"

    lines = [f"simulator: {doc['simulator']}; native core: {doc['native_core']}; "
             f"shadowbench {doc['version']}, "
             f"commit {doc['git_commit']}",
             f"stream: kscand default guest, seed 0, {doc['ops']:,} operations, "
             f"{doc['reads']:,} reads; {doc['repeat']} runs each; load average "
             f"{doc['load_before']:.2f} before, {doc['load_after']:.2f} after",
             f"(a) C reference ({doc['reference']['compiler']}): "
             f"{rate(doc['reference']['ops_per_s'])}"]
    for key, label in (("replay", f"(b) simulator replay, {POLICY}"),
                       ("end_to_end", "(c) end to end, 3 policies")):
        if key not in doc:
            lines.append(f"{label}: skipped")
            continue
        m = doc[key]
        target_rate, target_ratio = TARGETS[key]
        met = m["ops_per_s"]["median"] >= target_rate and m["ratio"] >= target_ratio
        lines.append(f"{label}: {rate(m['ops_per_s'])}; ratio to (a) {m['ratio']:.4f}; "
                     f"target >= {target_rate / 1e6:g} M ops/s and >= {target_ratio:g}: "
                     f"{'met' if met else 'not met'}")
    if "end_to_end" in doc:
        lines.append(f"(c) ran: {doc['end_to_end']['runs'][0]['simulator']}, "
                     f"{doc['end_to_end']['runs'][0]['guest_ops']:,} guest operations in "
                     f"{doc['end_to_end']['runs'][0]['cells']} cells per run")
    ref_run = doc["reference"]["runs"][0]
    lines.append(f"C reference: reads checked {ref_run['reads_checked']:,}, differed "
                 f"{ref_run['reads_differed']:,}; shadow pages at the end "
                 f"{ref_run['shadow_pages']:,}")
    lines.append(f"{'counter':<24}{'simulator':>14}{'C reference':>14}")
    sim = doc["replay"]["counters"]
    for name in COMPARED:
        mine, theirs = sim.get(name, 0), ref_run["counters"].get(name, 0)
        mark = "" if mine == theirs else "   differs"
        lines.append(f"{name:<24}{mine:>14,}{theirs:>14,}{mark}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"bench.core.benchmark: error: {' '.join(message.split())} "
                         f"(see {self.prog} --help)\n")
        sys.exit(2)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m bench.core.benchmark", allow_abbrev=False,
                     description="Issue 17's speed measurement: the simulator's replay and a "
                     "whole run beside the C reference of the hot path (bench/core/reference).")
    parser.add_argument("--ops", type=_count, default=None,
                        help="replay only the first N operations of the kscand run (default: "
                             "all, about 1.4 million)")
    parser.add_argument("--repeat", type=_count, default=3,
                        help="runs of each measurement (default 3)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument("--skip-end-to-end", action="store_true",
                        help="skip (c), the end-to-end bench run")
    args = parser.parse_args(argv)
    try:
        if args.json is not None:
            folder = os.path.dirname(os.path.abspath(args.json))
            if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                raise BenchError(f"cannot write {args.json}: {folder} is not a writable folder")
        compiler()  # before anything is simulated
        doc = measure(args.ops, args.repeat, not args.skip_end_to_end,
                      lambda text: print(text, file=sys.stderr, flush=True))
    except BenchError as exc:
        sys.stderr.write(f"bench.core.benchmark: error: {exc}\n")
        return 2
    if args.json is not None:
        from bench.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(report(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
