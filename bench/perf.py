"""The simulator's speed and memory benchmarks (pyperf), for docs/performance.md.

    python -m bench.perf -o perf.json                  # speed suite (pyperf Runner options apply)
    python -m pyperf compare_to old.json perf.json     # compare two versions
    python -m bench.perf --memory                      # peak resident memory of cells and of a run
    python -m bench.perf --scaling [MIB...]            # a kscand PAE cell from 256 MiB to 64 GiB

Speed benchmarks time the simulation of a fixed number of guest operations (generation and
execution, the guest's boot excluded), with ``inner_loops`` = operations, so pyperf reports
seconds per simulated operation; operations per second is its inverse:

- kscand-native: kscand executed natively;
- kscand-flood-count: kscand under flood-count (the trap-dense case);
- linear-scan-flood-count: linear-scan under flood-count;
- kscand-record: kscand executed natively while its operations and reads are recorded (the
  shared part of a guest run, bench.cell.run_cells);
- kscand-flood-count-replay: that recording replayed under flood-count, its reads checked (what
  each further policy of the run costs);
- kscand-record-native, kscand-flood-count-replay-native: the same two on the native core
  (bench.core: execution, tee and replay in C; the workload's generation stays Python);
- reference-kscand-flood-count: the C reference of the hot path (bench/core/reference/hotpath.c,
  compiled with ``cc -O2``) replaying the same recording under flood-count, its own timing of
  the simulation loop (issue 17's yardstick; skipped with a note when there is no C compiler);
- oracle: recording a kscand run and computing its offline optimum;
- reprice-100-cells: re-pricing 100 stored cells under another cost profile (inner_loops 100).
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # pyperf's worker processes run this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OPS = 100_000
"""Operations per timed sample: kscand's first 100,000 operations are the user processes' first
half second (hidden faults building the shadow tables) and the start of the first pass (the
trap-dense part); linear-scan's likewise."""


def _sim(policy: str | None, workload: str, params: dict, n: int):
    from bench.cell import build_run, executor_for
    from bench.registry import make_policy

    def time_func(loops: int) -> float:
        total = 0.0
        for _ in range(loops):
            run = build_run(workload, params, 0)
            machine = executor_for(run, None if policy is None else make_policy(policy))
            step = machine.step
            ops = itertools.islice(run.ops, n)
            t0 = time.perf_counter()
            for op in ops:
                step(op)
            total += time.perf_counter() - t0
        return total

    return time_func


def _recorded(n: int):
    """A kscand default run's guest, its first ``n`` operations recorded (bench.recording), and
    the seconds the recording took (the guest's boot excluded)."""
    from bench.cell import build_run
    from bench.machine.native import NativeMachine
    from bench.recording import OpRecording

    run = build_run("kscand", {}, 0)
    initial = run.guest.mem.copy()
    recording = OpRecording()
    native = NativeMachine(run.guest.mem, run.guest.mode, run.cr3s)
    t0 = time.perf_counter()
    native.run(recording.tee(itertools.islice(run.ops, n), run.guest.mem))
    return run, initial, recording, time.perf_counter() - t0


def _record(n: int):
    def time_func(loops: int) -> float:
        total = 0.0
        for _ in range(loops):
            recording, seconds = _recorded(n)[2:]
            recording.close()
            total += seconds
        return total

    return time_func


def _replay(policy: str, n: int, native: bool = False):
    """The recording replayed under ``policy``: by the Python executor, or by the native core
    (bench.core: C reads the packed columns)."""
    from bench import core
    from bench.cell import machine_for
    from bench.registry import make_policy

    def time_func(loops: int) -> float:
        run, initial, recording, _ = _recorded(n)
        total = 0.0
        for _ in range(loops):
            if native:
                t0 = time.perf_counter()
                core.replay(recording, make_policy(policy), initial, run.guest.mode.pae, run.cr3s)
            else:
                mem = initial.copy()
                machine = machine_for(make_policy(policy), mem, run.guest.mode, run.cr3s)
                t0 = time.perf_counter()
                recording.run(machine.step, mem)
            total += time.perf_counter() - t0
        return total

    return time_func


def _native_record(n: int):
    """kscand-record on the native core: generation in Python, execution and tee in C."""
    from bench import core
    from bench.cell import build_run
    from bench.recording import OpRecording

    def time_func(loops: int) -> float:
        total = 0.0
        for _ in range(loops):
            run = build_run("kscand", {}, 0)
            recording = OpRecording()
            native = core.native_execution(run.guest.mem, run.guest.mode.pae, run.cr3s, False)
            assert native is not None
            t0 = time.perf_counter()
            native.run_recorded(recording, itertools.islice(run.ops, n), run.guest.mem)
            total += time.perf_counter() - t0
            recording.close()
        return total

    return time_func


def _reference(n: int):
    """The C reference replaying the first ``n`` kscand operations under flood-count: compiled
    and fed the exported recording once per worker process, then run ``loops`` times; the
    seconds it reports for its simulation loop (bench.core.benchmark)."""
    state: dict = {}

    def time_func(loops: int) -> float:
        if not state:
            import atexit
            import shutil
            import tempfile

            from bench.core import benchmark
            from bench.core.stream import export

            folder = tempfile.mkdtemp(prefix="shadowbench-perf-hotpath-")
            atexit.register(shutil.rmtree, folder, True)
            state["binary"] = benchmark.compile_reference(folder, benchmark.compiler())
            run, initial, recording, _ = _recorded(n)
            state["stream"] = f"{folder}/stream.bin"
            export(state["stream"], recording, initial, run.guest.mode.pae, list(run.cr3s))
            recording.close()
        from bench.core.benchmark import run_reference

        return sum(run_reference(state["binary"], state["stream"])["seconds"]
                   for _ in range(loops))

    return time_func


def _oracle(params: dict):
    from bench import oracle
    from bench.cell import build_run
    from bench.costs import profile, DEFAULT_PROFILE

    def time_func(loops: int) -> float:
        total = 0.0
        for _ in range(loops):
            run = build_run("kscand", params, 0)
            t0 = time.perf_counter()
            record = oracle.record(run)
            oracle.optimum_cycles(record, profile(DEFAULT_PROFILE))
            total += time.perf_counter() - t0
        return total

    return time_func


def _reprice():
    from bench.costs import PROFILES
    from bench.machine.counters import ALL_COUNTERS

    counters = [{name: (i * 7 + j) % 1000 for j, name in enumerate(ALL_COUNTERS)} for i in range(100)]
    profiles = list(PROFILES.values())

    def time_func(loops: int) -> float:
        t0 = time.perf_counter()
        for k in range(loops):
            prof = profiles[k % len(profiles)]
            for c in counters:
                prof.price(c)
        return time.perf_counter() - t0

    return time_func


def speed_suite() -> None:
    import pyperf

    # 3 worker processes x 3 values (plus a warm-up each) unless the command line says otherwise
    runner = pyperf.Runner(loops=1, processes=3, values=3)
    runner.metadata["description"] = "shadowbench simulated guest operations (seconds per op)"
    default = {}
    runner.bench_time_func("kscand-native", _sim(None, "kscand", default, OPS), inner_loops=OPS)
    runner.bench_time_func("kscand-flood-count", _sim("flood-count", "kscand", default, OPS),
                           inner_loops=OPS)
    runner.bench_time_func("linear-scan-flood-count",
                           _sim("flood-count", "linear-scan", default, OPS), inner_loops=OPS)
    runner.bench_time_func("kscand-record", _record(OPS), inner_loops=OPS)
    runner.bench_time_func("kscand-flood-count-replay", _replay("flood-count", OPS),
                           inner_loops=OPS)
    from bench import core

    if core.available():
        runner.bench_time_func("kscand-record-native", _native_record(OPS), inner_loops=OPS)
        runner.bench_time_func("kscand-flood-count-replay-native",
                               _replay("flood-count", OPS, native=True), inner_loops=OPS)
    elif not runner.args or not runner.args.worker:
        print(f"bench.perf: the native core is {core.state()}: its benchmarks skipped",
              file=sys.stderr)
    import shutil

    if shutil.which(os.environ.get("CC") or "cc"):
        runner.bench_time_func("reference-kscand-flood-count", _reference(OPS), inner_loops=OPS)
    elif not runner.args or not runner.args.worker:
        print("bench.perf: no C compiler (cc, or $CC): reference-kscand-flood-count skipped",
              file=sys.stderr)
    runner.bench_time_func("oracle-kscand-quick", _oracle({"quick": True}))
    runner.bench_time_func("reprice-100-cells", _reprice(), inner_loops=100)


def _peak_rss_of_cell(workload: str, params: dict, policy: str) -> dict:
    code = (
        "import json, resource, sys, time\n"
        "from bench.cell import run_cell\n"
        f"t = time.perf_counter(); r = run_cell({policy!r}, {workload!r}, {params!r}, 0)\n"
        "print(json.dumps({'ops': r.guest_ops, 'seconds': time.perf_counter() - t,\n"
        "  'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _peak_rss_of_run(workload: str, params: dict) -> dict:
    """Peak RSS of a worker computing a whole guest run: every policy and the oracle record."""
    code = (
        "import json, resource, time\n"
        "from bench.cell import run_cells\n"
        "from bench.registry import policies\n"
        f"t = time.perf_counter(); n = sum(1 for _ in run_cells(sorted(policies()), {workload!r}, "
        f"{params!r}, 0, record_oracle=True))\n"
        "print(json.dumps({'cells': n - 1, 'seconds': time.perf_counter() - t,\n"
        "  'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def memory_suite(extra: list[str]) -> None:
    """Peak RSS of one kscand cell at the default size and at a 64 GiB PAE guest, and of a worker
    computing a whole default kscand run (``--no-run`` skips it, ``--no-64g`` the big guest)."""
    if "--no-run" not in extra:
        result = _peak_rss_of_run("kscand", {})
        print(f"kscand default run, every policy + oracle record ({result['cells']} cells): "
              f"{result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB")
    cases = [("kscand default (1 GiB highmem, PAE)", {})]
    if "--no-64g" not in extra:
        # 0.3 guest seconds: boot, build the processes' 16,777,216 ptes and 32,768 page tables,
        # and run the user processes until just before kscand's first pass. 32 processes and 1%
        # shared pages, so that every process's mappings fit its 3 GiB of user address space.
        cases.append(("kscand 64 GiB PAE (32 processes, 1% shared)",
                      {"highmem_mib": 64 * 1024, "processes": 32, "shared": 0.01,
                       "seconds": 0.3}))
    for label, params in cases:
        result = _peak_rss_of_cell("kscand", params, "flood-count")
        print(f"{label}: {result['ops']} ops, {result['seconds']:.1f} s, "
              f"peak RSS {result['peak_rss_mib']:.0f} MiB")


def _peak_rss_of_replay(recording: str, events: int) -> dict:
    """Peak RSS of replaying the first ``events`` events of a recording natively (generation
    and execution, no shared-run recording: the replay's own memory)."""
    code = (
        "import json, random, resource, time\n"
        "from bench.machine.native import NativeMachine\n"
        "from bench.registry import make_workload\n"
        f"run = make_workload('guest', {{'recording': {recording!r}, 'events': {events}}})"
        ".build(random.Random(0))\n"
        "m = NativeMachine(run.guest.mem, run.guest.mode, run.cr3s)\n"
        "t = time.perf_counter(); n = 0\n"
        "for op in run.ops:\n    m.step(op); n += 1\n"
        "print(json.dumps({'ops': n, 'seconds': time.perf_counter() - t,\n"
        "  'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


REPLAY_RECORDING = "reclaim-686-pae"
REPLAY_PREFIXES = (10_000, 90_000, 180_000, 360_000, 0)
"""Event prefixes of the largest shipped recording (0: all of its 723,842 events)."""


def replay_memory_suite() -> None:
    """A recorded guest's replay streams: peak RSS against the number of events replayed."""
    print(f"replay of {REPLAY_RECORDING} (native): events, operations, seconds, peak RSS")
    for events in REPLAY_PREFIXES:
        r = _peak_rss_of_replay(REPLAY_RECORDING, events)
        print(f"  {events or 'all':>8}  {r['ops']:>9,} ops  {r['seconds']:6.1f} s  "
              f"{r['peak_rss_mib']:5.1f} MiB")


SCALING_MIB = (256, 1024, 4096, 16384, 65536)
SCALING_PARAMS = {"processes": 32, "shared": 0.01, "seconds": 0.3}
"""The guest of the scaling table (docs/performance.md): the memory suite's 64 GiB guest at
every size (32 processes, 1% shared pages, 0.3 guest seconds: boot, every process's ptes, and
the user processes' accesses up to kscand's first pass: 12,002 operations at every size)."""


def _scaling_cell(mib: float) -> dict:
    """One kscand PAE flood-count cell of ``mib`` MiB highmem in a fresh process: the guest's
    build (bench.cell.build_run) and the simulation timed apart, peak RSS after each."""
    params = dict(SCALING_PARAMS, highmem_mib=float(mib))
    code = (
        "import json, resource, time\n"
        "import bench.cell as cell\n"
        "info = {}\n"
        "build = cell.build_run\n"
        "def timed(*args):\n"
        "    t = time.perf_counter(); run = build(*args)\n"
        "    info['build_s'] = time.perf_counter() - t\n"
        "    info['build_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "    return run\n"
        "cell.build_run = timed\n"
        f"t = time.perf_counter(); r = cell.run_cell('flood-count', 'kscand', {params!r}, 0)\n"
        "info['cell_s'] = time.perf_counter() - t\n"
        "info['sim_s'] = info['cell_s'] - info['build_s']\n"
        "info['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "info['ops'] = r.guest_ops; info['pages'] = r.sizes['pages']\n"
        "print(json.dumps(info))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def scaling_suite(extra: list[str]) -> None:
    """The scaling table: per size, build and simulation wall time and peak RSS, and the cost
    per page (MIB arguments choose the sizes; default SCALING_MIB)."""
    sizes = [float(a) for a in extra if a.replace(".", "", 1).isdigit()] or SCALING_MIB
    print(f"{'highmem':>9} {'pages':>10} {'build s':>8} {'us/page':>8} {'build MiB':>9} "
          f"{'sim s':>6} {'ops':>6} {'cell s':>7} {'peak MiB':>8} {'B/page':>6}")
    for mib in sizes:
        r = _scaling_cell(mib)
        pages = r["pages"]
        print(f"{mib:>6.0f} Mi {pages:>10,} {r['build_s']:>8.2f} "
              f"{1e6 * r['build_s'] / pages:>8.2f} {r['build_rss_mib']:>9.0f} "
              f"{r['sim_s']:>6.2f} {r['ops']:>6} {r['cell_s']:>7.2f} {r['peak_rss_mib']:>8.0f} "
              f"{r['peak_rss_mib'] * 2**20 / pages:>6.0f}", flush=True)


def main() -> None:
    if "--scaling" in sys.argv:
        scaling_suite(sys.argv[1:])
    elif "--replay-memory" in sys.argv:
        replay_memory_suite()
    elif "--memory" in sys.argv:
        memory_suite(sys.argv[1:])
    else:
        speed_suite()


if __name__ == "__main__":
    main()
