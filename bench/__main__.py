"""The command line: ``python -m bench VERB ...`` with one cmd_<verb>() per sub-command.

Every BenchError becomes one line ``bench: error: ...`` on stderr and exit status 2; all input
is validated before any work starts or any file is written. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from bench import costs
from bench import experiment as exp
from bench import outputs, registry, results
from bench.errors import BenchError
from bench.files import atomic_write_text
from bench.progress import Progress

DEFAULT_OUT = os.path.join("results", "latest")
DEFAULT_SWEEP_OUT = os.path.join("results", "sweep")
CHARTS_DIR = "charts"
GHZ_DEFAULT = 3.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop a run cleanly (bench.runner holds the same list)."""


MAX_JOBS = 1024


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2, like every other bad input;
    no abbreviated options (``--seed`` is not ``--seeds``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"bench: error: {' '.join(message.split())} "
                         f"(see {self.prog} --help)\n")
        sys.exit(2)


def bounded_int(low: int, high: int):
    """An argparse type: a decimal whole number from ``low`` to ``high``."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} must be from {low} to {high}")
        return value
    return parse


def positive_int(text: str) -> int:
    return bounded_int(1, 2**31)(text)


def nonempty(text: str) -> str:
    """An argparse type: any text but an empty one (an empty value is never a default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


# -- shared steps of run and sweep -------------------------------------------------------------
def experiment_from_args(args: argparse.Namespace, grid: dict[str, list[Any]] | None = None,
                         toml: dict[str, Any] | None = None) -> exp.Experiment:
    toml = toml or {}
    policies = args.policy or toml.get("policies")
    workloads = args.workload or toml.get("workloads")
    seeds = args.seeds if args.seeds is not None else toml.get("seeds", exp.DEFAULT_SEEDS)
    profile = args.cost_profile or toml.get("cost_profile", costs.DEFAULT_PROFILE)
    quick = args.quick or toml.get("quick", False)
    seed_start = (args.seed_start if args.seed_start is not None
                  else toml.get("seed_start", 0))
    return exp.build(policies, workloads, args.set, quick, seeds, profile, grid,
                     set_values=toml.get("set"), seed_start=seed_start)


def sweep_options(args: argparse.Namespace) -> tuple[Any, tuple[int, int] | None]:
    """The executor choice and the shard the options ask for, checked (dask installed, the
    address and shard well formed) before anything is simulated or written."""
    from bench.executors import choose
    from bench.executors.shards import parse_shard

    jobs = args.jobs or os.cpu_count() or 1
    shard = parse_shard(args.shard) if args.shard is not None else None
    return choose(args.dask, args.scheduler, jobs), shard


def check_output_paths(args: argparse.Namespace, out: str | None) -> None:
    """Refuse outputs that cannot be written (the folder ``out``, ``--json PATH``), before
    anything is simulated or written (bench.outputs)."""
    if out is not None:
        outputs.check_folder(out)
    json_path = getattr(args, "json", None)
    if json_path is not None and json_path != "-":
        outputs.check_file(json_path)


class Deferred:
    """Hold SIGINT/SIGTERM/SIGHUP while results are written, so no file is left half-made."""

    def __enter__(self) -> "Deferred":
        self.signum: int | None = None
        self.previous = {s: signal.signal(s, self._note) for s in STOP_SIGNALS}
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def write_outputs(doc: dict[str, Any], out: str, charts: bool = True, jobs: int = 1) -> list[str]:
    """results.json, results.csv, pyperf.json, charts and report.md into ``out``."""
    from bench.report import write_report

    paths = results.write_folder(doc, out)
    chart_paths: list[str] = []
    if charts and doc["complete"]:
        chart_paths = write_charts(doc, out, jobs)
    paths += chart_paths
    paths.append(write_report(doc, chart_paths, out))
    return paths


def write_charts(doc: dict[str, Any], out: str, jobs: int = 1, **options: Any) -> list[str]:
    """Charts into OUT/charts (drawn by ``jobs`` processes; ``options``: formats, width, only
    of bench.charts.write_charts), removing charts a previous run left there."""
    from bench.plots import write_charts as draw
    from bench.runner import clean_temporaries

    folder = os.path.join(out, CHARTS_DIR)
    clean_temporaries(folder)  # what a killed drawing left
    try:
        # bench.charts removes the chart files of other names or formats a previous run left
        return draw(doc, folder, jobs, **options) if options else draw(doc, folder, jobs)
    finally:
        clean_temporaries(folder)


FAILURE_TXT = "failure.txt"
"""OUT/failure.txt: the traceback of the cell that raised (removed by a run that completes)."""


def execute(args: argparse.Namespace, experiment: exp.Experiment, out: str,
            reuse: bool = True) -> tuple[dict[str, Any], int | None]:
    """Run the experiment into ``out`` and write every output; returns (document, exit status
    or None): 128 + the signal's number when interrupted, 1 when a cell raised."""
    from bench import runner
    from bench.executors import open_executor
    from bench.executors.shards import shard_digests

    choice, shard = sweep_options(args)
    jobs = args.jobs or os.cpu_count() or 1
    progress = None if args.no_progress else Progress()
    executor = None
    try:
        if progress:
            progress.phase("building the guests (memory estimate, input files)")
        local_workers = choice.workers if choice.kind != "dask-scheduler" else 1
        weights = runner.check_memory(experiment, local_workers, args.force_memory)
        runner.check_inputs(experiment)
        only = shard_digests(experiment, *shard) if shard else None
        if choice.kind != "local":
            if progress:
                progress.phase("connecting to Dask" if choice.address else
                               "starting the Dask LocalCluster")
            executor = open_executor(choice)
        with outputs.locked(out, shared=True) as lock:
            return _execute_locked(args, experiment, out, reuse, jobs, weights, progress,
                                   lock, executor, only, shard)
    finally:
        if executor is not None:
            executor.close()
        if progress:
            progress.stop()


def warn_slow_path() -> None:
    """One line on stderr when the native core is not in use (issue 17): the simulation then
    runs in the Python reference, many times slower."""
    from bench import core

    if not core.available():
        print(f"shadowbench: running the slow path: the native core is {core.state()}; "
              "the simulation runs in Python (`pip install .` with a C compiler builds it)",
              file=sys.stderr)


def _execute_locked(args: argparse.Namespace, experiment: exp.Experiment, out: str, reuse: bool,
                    jobs: int, weights: dict[str, float], progress: Progress | None,
                    lock: outputs.FolderLock, executor: Any, only: set[str] | None,
                    shard: tuple[int, int] | None) -> tuple[dict[str, Any], int | None]:
    from bench import runner

    warn_slow_path()  # after the inputs and the output folder are known good: never beside an error
    started = results.now()
    if progress:
        progress.phase("cells")
    try:
        outcome = runner.execute(experiment, out, jobs,
                                 reuse=reuse and not (args.rebuild or args.no_cache),
                                 progress=progress, weights=weights, store=not args.no_cache,
                                 executor=executor, only=only, keep_going=args.keep_going)
    finally:
        if progress:
            progress.stop()
    described = executor.description if executor is not None else (
        "local (1 process)" if jobs <= 1 else f"local ({jobs} processes)")
    notes: list[str] = []
    failures = dict(outcome.failures)
    failure = outcome.failed if not failures else None  # the one that stopped the run
    if failure is not None:
        notes.append(f"stopped because a cell raised: {failure.message}")
    for digest, err in failures.items():
        notes.append(f"cell {digest} failed (--keep-going): {err.message}")
    if shard is not None:
        notes.append(f"shard {shard[0]}/{shard[1]}: only this shard's cells were run; "
                     f"python -m bench merge joins the shards' folders")
    complete = (outcome.interrupted is None and failure is None and not failures
                and shard is None)
    with Deferred() as deferred:
        if progress:
            progress.phase("waiting for the other run on this folder to write its results")
        if not lock.exclusive(lambda: deferred.signum is not None):
            sys.stderr.write(f"bench: interrupted by {signal.Signals(deferred.signum or 2).name} "
                             f"while waiting for another run on {out}: the finished cells are "
                             f"kept in {out}/cells; rerun the same command to write the "
                             f"results\n")
            return {}, 128 + (deferred.signum or 2)
        if progress:
            progress.stop()
            progress.phase("results (pricing, the offline optimum, results files)")
        volatile = {
            "command": _program().split() + list(args.argv),
            "started": started, "finished": results.now(), "host": results.host_description(),
            "jobs": jobs, "executor": described, "cells_reused": outcome.reused,
            "cells_computed": outcome.computed,
        }
        if shard is not None:
            volatile["shard"] = f"{shard[0]}/{shard[1]}"
        doc = results.make_document(experiment, outcome.cells, outcome.oracles, complete,
                                    volatile, notes)
        write_outputs(doc, out, jobs=jobs, charts=False)
        failure_txt = os.path.join(out, FAILURE_TXT)
        if failure is not None:
            atomic_write_text(failure_txt, failure.message + "\n\n" + failure.details)
        elif failures:
            atomic_write_text(failure_txt, "\n\n".join(
                f"cell {digest}: {err.message}\n\n{err.details}"
                for digest, err in failures.items()))
        elif complete and os.path.exists(failure_txt):
            os.unlink(failure_txt)
        if args.json and args.json != "-" and complete:
            results.write_json(doc, args.json)
    if progress:
        progress.stop()
    done = f"{doc['meta']['cells_done']} of {doc['meta']['cells_expected']} cells done"
    if failure is not None:
        sys.stderr.write(f"bench: error: {failure.message}; {done}, kept in {out} (results marked "
                         f"partial; traceback in {failure_txt})\n")
        return doc, 1
    signum = outcome.interrupted.signum if outcome.interrupted else None
    if signum:
        sys.stderr.write(f"bench: interrupted by {signal.Signals(signum).name}: {done}, kept in "
                         f"{out}; rerun the same command to resume\n")
        return doc, 128 + signum
    if deferred.signum:
        sys.stderr.write(f"bench: interrupted by {signal.Signals(deferred.signum).name} while "
                         f"writing the results: all {done}; results.json is complete in {out}, "
                         f"charts not drawn (python -m bench plot {out} draws them)\n")
        return doc, 128 + deferred.signum
    if failures:
        finish(args, doc, out)
        sys.stderr.write(f"bench: {len(failures)} cells failed (--keep-going); {done}, kept in "
                         f"{out} (results marked partial, charts not drawn; tracebacks in "
                         f"{failure_txt}):\n")
        for digest, err in failures.items():
            sys.stderr.write(f"  cell {digest}: {err.message}\n")
        return doc, 1
    if shard is not None:
        from bench.report import write_report

        with Deferred():
            write_report(doc, [], out)
        return doc, None
    signum = draw_charts_and_report(doc, out, jobs, progress, draw=args.json != "-")
    if signum:
        return doc, 128 + signum
    return doc, None


def draw_charts_and_report(doc: dict[str, Any], out: str, jobs: int,
                           progress: "Progress | None", draw: bool = True) -> int | None:
    """Charts, then report.md; SIGINT/SIGTERM while drawing stops the charts (the results are
    already written), keeps report.md consistent and returns the signal. ``draw`` False (a run
    printing its document, ``--json -``) draws none: the charts already drawn of these very
    results are kept, any other chart file is removed (bench.plots.keep_drawn)."""
    from bench.report import write_report

    if not draw:
        from bench.plots import keep_drawn

        with Deferred():
            write_report(doc, keep_drawn(doc, os.path.join(out, CHARTS_DIR)), out)
        return None
    if progress:
        progress.phase("charts")
    stop: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        stop.append(signum)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in STOP_SIGNALS}
    chart_paths: list[str] = []
    try:
        chart_paths = write_charts(doc, out, jobs)
    except KeyboardInterrupt:
        if not stop:
            raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if progress:
            progress.stop()
    with Deferred():
        write_report(doc, chart_paths, out)
    if stop:
        sys.stderr.write(f"bench: interrupted by {signal.Signals(stop[0]).name} while drawing the "
                         f"charts: the results are complete in {out}; python -m bench plot {out} "
                         f"draws the charts\n")
        return stop[0]
    return None


def finish(args: argparse.Namespace, doc: dict[str, Any], out: str) -> None:
    from bench import stats

    if args.json == "-":
        sys.stdout.write(results.dumps(doc))
    else:
        sys.stdout.write(stats.summary_text(doc))
        sys.stdout.write(f"results in {out}/ (results.json, results.csv, passes.csv, "
                         f"pyperf.json, {CHARTS_DIR}/, report.md)\n")
    sys.stdout.flush()


# -- verbs -------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    out = DEFAULT_OUT if args.out is None else args.out
    previous = None
    if args.from_:
        given = [o for o, v in (("-p", args.policy), ("-w", args.workload), ("--set", args.set),
                                ("--quick", args.quick), ("--seeds", args.seeds),
                                ("--seed-start", args.seed_start is not None),
                                ("--cost-profile", args.cost_profile)) if v]
        if given:
            raise BenchError(f"--from reruns the file's own configuration; drop {', '.join(given)}")
        previous = results.load(args.from_)
        experiment = exp.from_dict(previous["meta"]["experiment"])
    else:
        experiment = experiment_from_args(args)
    check_output_paths(args, out)
    doc, status = execute(args, experiment, out, reuse=previous is None)
    if status:
        return status
    finish(args, doc, out)
    if previous is not None:
        lines = differences(previous, doc)
        stream = sys.stderr if args.json == "-" else sys.stdout
        stream.write("\n".join(lines) + "\n")
        return 1 if len(lines) > 1 else 0
    return 0


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """A report of counter differences between a results file and its rerun (first line a
    summary; more lines only when something differs)."""
    before = {r["cell"]: r for r in old["records"]}
    after = {r["cell"]: r for r in new["records"]}
    lines = []
    for cell in before.keys() | after.keys():
        a, b = before.get(cell), after.get(cell)
        if a is None or b is None:
            r = a or b
            lines.append(f"  {r['workload_label']} / {r['policy_label']} / seed {r['seed']}: "
                         f"only in the {'original' if b is None else 'rerun'}")
            continue
        diff = sorted(k for k in a["counters"].keys() | b["counters"].keys()
                      if a["counters"].get(k) != b["counters"].get(k))
        if diff or a["guest_ops"] != b["guest_ops"]:
            shown = ", ".join(f"{k} {a['counters'].get(k)} -> {b['counters'].get(k)}"
                              for k in diff[:6])
            lines.append(f"  {a['workload_label']} / {a['policy_label']} / seed {a['seed']}: "
                         f"{shown or 'guest_ops differ'}")
    lines.sort()
    version = ""
    if old["meta"]["project_version"] != new["meta"]["project_version"]:
        version = (f" (recorded with {old['meta']['project_version']}, rerun with "
                   f"{new['meta']['project_version']})")
    if not lines:
        return [f"rerun: all {len(after)} records have identical counters{version}"]
    return [f"rerun: {len(lines)} of {len(before.keys() | after.keys())} records differ"
            f"{version}:"] + lines


def cmd_sweep(args: argparse.Namespace) -> int:
    toml = exp.load_toml(args.experiment) if args.experiment else {}
    grid: dict[str, list[Any]] = dict(toml.get("grid", {}))
    grid.update(exp.parse_grid(args.grid or []))
    if not grid:
        raise BenchError("sweep needs a grid: --grid KEY=V1,V2,... or a [grid] table in an "
                         "experiment file")
    experiment = experiment_from_args(args, grid, toml)
    out = DEFAULT_SWEEP_OUT if args.out is None else args.out
    check_output_paths(args, out)
    doc, status = execute(args, experiment, out)
    if status:
        return status
    finish(args, doc, out)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from bench.executors import merge

    experiment, folders = merge.load_inputs(list(args.folders))
    out = args.out
    outputs.check_folder(out)
    jobs = args.jobs or os.cpu_count() or 1
    started = results.now()
    with outputs.locked(out):
        with Deferred() as deferred:
            cells, oracles, copied = merge.join_cells(experiment, folders, out)
            missing = len(experiment.cells()) - len(cells)
            notes = [] if not missing else [
                f"merged from {len(folders)} folders: {missing} cells missing (a shard not run "
                f"or not finished, or cells of other code)"]
            volatile = {"command": _program().split() + list(args.argv), "started": started,
                        "finished": results.now(), "host": results.host_description(),
                        "merged_from": [os.path.abspath(f) for f in folders],
                        "cells_copied": copied}
            doc = results.make_document(experiment, cells, oracles, not missing, volatile,
                                        notes)
            write_outputs(doc, out, jobs=jobs, charts=False)
        if deferred.signum:
            sys.stderr.write(f"bench: interrupted by {signal.Signals(deferred.signum).name}; "
                             f"the merged results are complete in {out}, charts not drawn\n")
            return 128 + deferred.signum
        if missing:
            from bench.report import write_report

            write_report(doc, [], out)
            sys.stderr.write(f"bench: merge: {missing} of {len(experiment.cells())} cells are in "
                             f"none of the folders; results in {out} marked partial\n")
            return 1
        signum = draw_charts_and_report(doc, out, jobs, None)
        if signum:
            return 128 + signum
    sys.stdout.write(f"merged {len(folders)} folders: {len(cells)} cells ({copied} copied) "
                     f"into {out}/\n")
    return 0


def _param_json(p: Any) -> dict[str, Any]:
    return {"type": p.kind.__name__, "default": p.default, "help": p.help,
            "choices": list(p.choices) if p.choices else None, "minimum": p.minimum,
            "maximum": p.maximum}


def list_json() -> dict[str, Any]:
    """What ``list`` shows, as data (``list --json``)."""
    def entries(classes: dict[str, Any]) -> dict[str, Any]:
        return {name: {"summary": cls.summary,
                       "params": {k: _param_json(p) for k, p in sorted(cls.params.items())}}
                for name, cls in classes.items()}

    return {"policies": entries(registry.policies()), "workloads": entries(registry.workloads()),
            "cost_profiles": {name: prof.as_dict() for name, prof in costs.PROFILES.items()},
            "default_cost_profile": costs.DEFAULT_PROFILE,
            "default_run": {"workloads": [exp.label(n, p, set(p)) for n, p in exp.DEFAULT_WORKLOADS],
                            "seeds": exp.DEFAULT_SEEDS}}


def cmd_list(args: argparse.Namespace) -> int:
    if args.json:
        sys.stdout.write(results.dumps(list_json()))
        return 0
    lines = ["policies:"]
    for name, cls in registry.policies().items():
        lines.append(f"  {name}: {cls.summary}")
        lines += [f"      {k}: {p.describe()}" for k, p in sorted(cls.params.items())]
    lines.append("")
    lines.append("workloads:")
    for name, cls in registry.workloads().items():
        lines.append(f"  {name}: {cls.summary}")
        lines += [f"      {k}: {p.describe()}" for k, p in sorted(cls.params.items())]
    lines.append("")
    lines.append("cost profiles (* = estimate; cycles per event; sources in docs/costs.md):")
    for name, prof in costs.PROFILES.items():
        default = " (default)" if name == costs.DEFAULT_PROFILE else ""
        lines.append(f"  {name}{default}: {prof.cpu}")
        numbers = [f"{k}={v}{'*' if k in prof.estimates else ''}" for k, v in prof.as_dict().items()
                   if isinstance(v, int) and not isinstance(v, bool) and k != "version"]
        for i in range(0, len(numbers), 6):
            lines.append("      " + " ".join(numbers[i:i + 6]))
    lines.append("")
    lines.append("default run: every policy on " + ", ".join(
        exp.label(n, p, set(p)) for n, p in exp.DEFAULT_WORKLOADS)
        + f"; {exp.DEFAULT_SEEDS} seeds (1 for a recorded guest, whose replay does not depend "
        f"on the seed); cost profile {costs.DEFAULT_PROFILE}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from bench import charts
    from bench.report import write_report

    formats = charts.parse_formats(args.format)
    only = [n.strip() for given in args.only or [] for n in given.split(",") if n.strip()] or None
    doc = results.load(args.results)
    charts.select(doc, only)  # unknown names are refused before anything is written
    folder = args.out if args.out is not None else _folder_of(args.results)
    outputs.check_folder(folder)
    charts_folder = os.path.join(folder, CHARTS_DIR)
    try:
        os.makedirs(charts_folder, exist_ok=True)
    except OSError as err:
        raise BenchError(f"cannot create the charts folder {charts_folder}: {err.strerror}") from None
    if not all(os.access(f, os.W_OK) for f in (folder, charts_folder)):
        raise BenchError(f"cannot write to {charts_folder}: not writable")
    with outputs.locked(folder):
        with Deferred():
            paths = write_charts(doc, folder, os.cpu_count() or 1, formats=formats,
                                 width=args.width, only=only)
            if only is None:
                paths.append(write_report(doc, paths, folder))
    sys.stdout.write("".join(p + "\n" for p in paths))
    return 0


def _folder_of(path: str) -> str:
    return path if os.path.isdir(path) else (os.path.dirname(path) or ".")


def cmd_compare(args: argparse.Namespace) -> int:
    from bench import stats

    if not args.kvm_stat:
        ignored = [o for o, v in (("-w", args.workload), ("--seed", args.seed),
                                  ("--ghz", args.ghz)) if v is not None]
        if ignored:
            raise BenchError(f"compare: {', '.join(ignored)} only apply with --kvm-stat (the "
                             f"comparison covers every workload and seed); add --kvm-stat or "
                             f"drop them")
    doc = results.load(args.results)
    if args.kvm_stat:
        return _kvm_stat(doc, args)
    if args.json:
        sys.stdout.write(results.dumps(stats.compare_json(doc, args.policy)))
    else:
        sys.stdout.write(stats.compare_text(doc, args.policy))
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    return _kvm_stat(results.load(args.results), args)


def _kvm_stat(doc: dict[str, Any], args: argparse.Namespace) -> int:
    from bench import stats

    ghz = GHZ_DEFAULT if args.ghz is None else args.ghz
    if not 0 < ghz < 1000:
        raise BenchError(f"--ghz must be above 0 and below 1000, got {ghz}")
    profile = results.profile_of(doc)
    chosen = stats.select(doc["records"], args.policy, args.workload, args.seed)
    if args.json:
        sys.stdout.write(results.dumps([stats.kvm_stat_rows(r, profile, ghz) for r in chosen]))
    else:
        sys.stdout.write("\n".join(stats.kvm_stat_text(r, profile, ghz) for r in chosen))
    return 0


def cmd_reprice(args: argparse.Namespace) -> int:
    from bench import stats

    profile = costs.profile(args.cost_profile)
    doc = results.load(args.results)
    check_output_paths(args, args.out)
    new = results.reprice(doc, profile)
    if args.out is not None:
        with outputs.locked(args.out), Deferred():
            write_outputs(new, args.out, charts=False)
    with Deferred():
        if args.json is not None and args.json != "-":
            results.write_json(new, args.json)
    if args.json == "-":
        sys.stdout.write(results.dumps(new))
    else:
        sys.stdout.write(stats.summary_text(new))
    return 0


# -- the parser --------------------------------------------------------------------------------
def _run_options(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("-p", "--policy", action="append", metavar="POLICY[:k=v,...]", type=nonempty,
                   help="a policy and its parameters (repeatable; default: every policy)")
    p.add_argument("-w", "--workload", action="append", metavar="WORKLOAD[:k=v,...]",
                   type=nonempty,
                   help="a workload (repeatable; default: kscand, linear-scan, kmap variants)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", type=nonempty,
                   help="a workload parameter for every selected workload that takes it")
    p.add_argument("--cost-profile", metavar="NAME", type=nonempty,
                   help=f"cost profile to price with (default {costs.DEFAULT_PROFILE})")
    p.add_argument("--seeds", type=bounded_int(1, exp.MAX_SEEDS), metavar="N",
                   help=f"run seeds 0..N-1 (default {exp.DEFAULT_SEEDS}, at most "
                        f"{exp.MAX_SEEDS})")
    p.add_argument("--seed-start", type=bounded_int(0, exp.MAX_SEED_START), metavar="S",
                   help="the first seed: run seeds S..S+N-1 (default 0; cells of seeds already "
                        "computed come from the cache)")
    p.add_argument("--jobs", type=bounded_int(1, MAX_JOBS), metavar="N",
                   help="worker processes (default: the number of CPUs)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--dask", metavar="local[:N]", type=nonempty,
                       help="compute the cells on a Dask LocalCluster of N worker processes "
                            "(default --jobs; needs the dask extra)")
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT", type=nonempty,
                       help="compute the cells on the Dask cluster of this scheduler (OUT on a "
                            "file system the workers share; needs the dask extra)")
    p.add_argument("--shard", metavar="I/N", type=nonempty,
                   help="run only shard I of N of the cells (python -m bench merge joins them)")
    p.add_argument("--keep-going", action="store_true",
                   help="a cell that raises is recorded and the other cells go on (exit "
                        "status 1 at the end)")
    p.add_argument("--out", metavar="DIR", type=nonempty,
                   help=f"results folder (default {out_default})")
    p.add_argument("--json", metavar="PATH|-", type=nonempty,
                   help="also write the results document to PATH (- = stdout, nothing else)")
    p.add_argument("--quick", action="store_true",
                   help="small default sizes (quick=true; sizes given explicitly are kept)")
    p.add_argument("--force-memory", action="store_true",
                   help="run even if the memory estimate exceeds the available memory")
    p.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--rebuild", action="store_true",
                       help="recompute every cell, replacing the ones stored in OUT/cells")
    cache.add_argument("--no-cache", action="store_true",
                       help="recompute every cell and store none (OUT/cells is neither read nor "
                            "written; an interrupted run cannot resume)")


def _examples(prog: str, *lines: str) -> str:
    return "examples:\n" + "".join(f"  {prog} {line}".rstrip() + "\n" for line in lines)


def version_text() -> str:
    """``--version``: the project version, the git commit of the sources (stamped at build
    time for an installed copy) and the simulator core in use."""
    import bench
    from bench import _compiled

    commit = results.git_commit() or "unknown"
    from bench import core

    return (f"shadowbench {bench.__version__} (git commit {commit}; {_compiled.state()}; "
            f"native core {core.state()})")


class _Version(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        sys.stdout.write(version_text() + "\n")
        parser.exit(0)


def create_parser(prog: str = "python -m bench") -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog, description="Compare shadow-paging unshadow policies on simulated guests: "
        "run policies on workloads, sweep parameters, compare, re-price and chart the results.",
        epilog=_examples(prog, "run --quick -p flood-count -w kscand", "list",
                         "compare results/latest", "VERB --help   (each verb's options)"))
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the version, git commit and simulator core, and exit")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)

    def verb(name: str, summary: str, description: str, *examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=description,
                              epilog=_examples(f"{prog} {name}", *examples))

    p = verb("run", "run policies on workloads (default: the standard comparison)",
             "Run every selected policy on every selected workload for each seed and write a "
             "results folder (results.json, results.csv, pyperf.json, charts, report.md). "
             "Finished cells are cached in OUT/cells: an interrupted run resumes.",
             "", "--quick -p flood-count -p accessed-clear -w kscand",
             "-p flood-count:variant=2.6.27 -w kmap:kernel=2.6.20,pae=false --seeds 5",
             "--from results/latest --out /tmp/rerun")
    _run_options(p, DEFAULT_OUT)
    p.add_argument("--from", dest="from_", metavar="RESULTS", type=nonempty,
                   help="rerun a results file's configuration and report counter differences")
    p.set_defaults(func=cmd_run)

    p = verb("sweep", "run over a parameter grid",
             "Run the selected policies and workloads once per combination of the grid's values "
             "(from --grid and/or an experiment file) and chart each swept parameter.",
             "--grid threshold=1,2,3,4,8 -p flood-count -w kscand --quick",
             "experiments/threshold.toml --jobs 2")
    p.add_argument("experiment", nargs="?", metavar="EXPERIMENT.toml", type=nonempty,
                   help="experiment file (policies, workloads, set, grid, seeds, cost_profile)")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2,...", type=nonempty,
                   help="a policy or workload parameter and its values (repeatable; "
                        "policy.KEY / workload.KEY when both have KEY)")
    _run_options(p, DEFAULT_SWEEP_OUT)
    p.set_defaults(func=cmd_sweep)

    p = verb("list", "policies, workloads and cost profiles with their parameters",
             "Every registered policy and workload with its parameters (type, default, allowed "
             "values), every cost profile with its numbers, and the default run.",
             "", "--json")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=cmd_list)

    p = verb("plot", "redraw the charts and report.md from a results file",
             "Draw the charts and report.md again from results.json alone (nothing simulated).",
             "results/latest", "results/latest/results.json --out /tmp/charts --width column "
             "--format pdf")
    p.add_argument("results", metavar="RESULTS", type=nonempty, help="results.json or its folder")
    p.add_argument("--out", metavar="DIR", type=nonempty,
                   help="folder for charts/ and report.md (default: the results file's folder)")
    p.add_argument("--format", default="pdf,svg,png", metavar="pdf,svg,png", type=nonempty,
                   help="the file formats to write, comma-separated (default: all three)")
    p.add_argument("--width", default="full", choices=("column", "full"),
                   help="figure width: column (3.3 in) or full (7 in, the default)")
    p.add_argument("--only", action="append", metavar="NAME", type=nonempty,
                   help="only these charts (a chart name such as cycles-kscand, or a kind: "
                        "cycles, traps, opt-ratio, sweep, sweep-ratio; repeatable or "
                        "comma-separated); report.md is then left as it is")
    p.set_defaults(func=cmd_plot)

    p = verb("compare", "policies against a baseline, paired by seed",
             "Per workload, each policy's cycles relative to a baseline, paired by seed: the "
             "geometric mean ratio with an interval the seeds support (the method is named), "
             "and win/tie/loss counts.",
             "results/latest", "results/latest -p flood-count --json",
             "results/latest --kvm-stat -p always-emulate -w kscand --seed 0")
    p.add_argument("results", metavar="RESULTS", type=nonempty, help="results.json or its folder")
    p.add_argument("-p", "--policy", metavar="BASELINE", type=nonempty,
                   help="baseline policy (default always-emulate); with --kvm-stat: the policy")
    p.add_argument("--kvm-stat", action="store_true",
                   help="print `perf kvm stat report` tables per cell instead")
    _stat_options(p)
    p.set_defaults(func=cmd_compare)

    p = verb("stat", "`perf kvm stat report` tables per cell",
             "A `perf kvm stat report` table (exit reasons, samples, time shares, min/max/avg "
             "handling time) for each selected cell of a results file.",
             "results/latest -p flood-count -w kscand --seed 0", "results/latest --json")
    p.add_argument("results", metavar="RESULTS", type=nonempty, help="results.json or its folder")
    p.add_argument("-p", "--policy", metavar="POLICY", type=nonempty, help="only this policy")
    _stat_options(p)
    p.set_defaults(func=cmd_stat)

    p = verb("reprice", "price stored results under another cost profile",
             "Price a results file's counters under another cost profile, without simulating.",
             "results/default --cost-profile skylake-2015 --out results/skylake",
             "results/latest --cost-profile nehalem-2009 --json -")
    p.add_argument("results", metavar="RESULTS", type=nonempty, help="results.json or its folder")
    p.add_argument("--cost-profile", required=True, metavar="NAME", type=nonempty,
                   help="the new cost profile")
    p.add_argument("--out", metavar="DIR", type=nonempty,
                   help="write the re-priced results folder here")
    p.add_argument("--json", metavar="PATH|-", type=nonempty,
                   help="write the re-priced document (- = stdout)")
    p.set_defaults(func=cmd_reprice)
    p = verb("merge", "join the cell caches of shards into one results folder",
             "Copy the finished cells of several results folders of one experiment (the shards "
             "of --shard I/N, or runs on several machines) into OUT/cells and write one results "
             "folder from them, as a run would; folders of differing experiments are refused.",
             "results/shard-1 results/shard-2 --out results/merged")
    p.add_argument("folders", nargs="+", metavar="DIR", type=nonempty,
                   help="results folders of one experiment")
    p.add_argument("--out", required=True, metavar="DIR", type=nonempty,
                   help="the merged results folder (may be one of the DIRs)")
    p.add_argument("--jobs", type=bounded_int(1, MAX_JOBS), metavar="N",
                   help="chart processes (default: the number of CPUs)")
    p.set_defaults(func=cmd_merge)
    _add_recording_verbs(sub)
    return parser


def _add_recording_verbs(sub: argparse._SubParsersAction) -> None:
    """`record` and `inspect` (real guests; bench/record/)."""
    from bench.record.cli import add_record_verbs
    add_record_verbs(sub)


def _stat_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-w", "--workload", metavar="WORKLOAD", type=nonempty,
                   help="only this workload (label or name)")
    p.add_argument("--seed", type=bounded_int(0, 2**31), metavar="N", help="only this seed")
    p.add_argument("--ghz", type=finite_float,
                   help=f"clock to turn cycles into microseconds (default {GHZ_DEFAULT})")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")


def _program() -> str:
    return "shadowbench" if os.path.basename(sys.argv[0] or "") == "shadowbench" else (
        "python -m bench")


def _quiet_stdout() -> None:
    """After stdout failed (a closed pipe, a full disk): send what is left to /dev/null, so the
    interpreter's final flush does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


_fork_guard = False


def install_fork_guard() -> None:
    """Every process this one forks (cell workers, chart workers) dies with it, even when it is
    SIGKILLed (bench.runner.die_with_forking_parent in each child); once per process."""
    global _fork_guard
    if not _fork_guard and hasattr(os, "register_at_fork"):
        from bench.runner import die_with_forking_parent, note_forking_parent

        os.register_at_fork(before=note_forking_parent, after_in_child=die_with_forking_parent)
        _fork_guard = True


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    install_fork_guard()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = create_parser(_program())
        args = parser.parse_args(argv)
        if args.verb is None:
            parser.print_help(sys.stderr)
            return 2
        args.argv = argv
        status = args.func(args)
        sys.stdout.flush()
        return status
    except BenchError as err:
        message = " ".join(str(err).split())
        sys.stderr.write(f"bench: error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("bench: interrupted by SIGINT; nothing was simulated or written\n")
        return 128 + signal.SIGINT
    except BrokenPipeError:
        _quiet_stdout()
        return 1
    except OSError as err:
        if err.filename is None:
            _quiet_stdout()
        where = err.filename if err.filename is not None else "stdout"
        sys.stderr.write(f"bench: error: cannot write {where}: {err.strerror or err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
