"""The command line: ``python -m bench VERB ...`` with one cmd_<verb>() per sub-command.

Every BenchError becomes one line ``bench: error: ...`` on stderr and exit status 2; all input
is validated before any work starts or any file is written. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

from bench import costs
from bench import experiment as exp
from bench import registry
from bench import results
from bench.errors import BenchError

DEFAULT_OUT = os.path.join("results", "latest")
DEFAULT_SWEEP_OUT = os.path.join("results", "sweep")
CHARTS_DIR = "charts"


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"bench: error: {message} (see python -m bench {self._verb()}--help)\n")
        sys.exit(2)

    def _verb(self) -> str:
        parts = self.prog.split()
        return parts[-1] + " " if len(parts) > 2 else ""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


# -- progress ----------------------------------------------------------------------------------
class Progress:
    """A one-line progress display on stderr (rewritten in place on a terminal, else a line
    every few seconds)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.width = 0

    def __call__(self, done: int, total: int, reused: int, what: str, fraction: float) -> None:
        """``fraction``: the share of the work to compute that is done (cells weighted by the
        size of their guest), which the time left is estimated from."""
        now = time.monotonic()
        final = done == total
        if not self.tty and not final and now - self.last < 5:
            return
        self.last = now
        elapsed = now - self.start
        computed = done - reused
        left = elapsed * (1 - fraction) / fraction if fraction > 0 else 0
        eta = f", ~{left:.0f}s left" if computed and not final else ""
        text = (f"[{done}/{total} cells{f', {reused} reused' if reused else ''}, "
                f"{elapsed:.0f}s{eta}] {what}")
        if self.tty:
            text = text[:150]
            sys.stderr.write("\r" + text.ljust(self.width) + ("\n" if final else ""))
            self.width = len(text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()


# -- shared steps of run and sweep -------------------------------------------------------------
def experiment_from_args(args: argparse.Namespace, grid: dict[str, list[Any]] | None = None,
                         toml: dict[str, Any] | None = None) -> exp.Experiment:
    toml = toml or {}
    policies = args.policy or toml.get("policies")
    workloads = args.workload or toml.get("workloads")
    seeds = args.seeds if args.seeds is not None else toml.get("seeds", exp.DEFAULT_SEEDS)
    profile = args.cost_profile or toml.get("cost_profile", costs.DEFAULT_PROFILE)
    quick = args.quick or toml.get("quick", False)
    return exp.build(policies, workloads, args.set, quick, seeds, profile, grid,
                     set_values=toml.get("set"))


def check_output_paths(args: argparse.Namespace, out: str) -> None:
    """Refuse outputs that cannot be written, before anything is."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise BenchError(f"--out {out} exists and is not a folder")
    if args.json and args.json != "-":
        parent = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(parent):
            raise BenchError(f"--json {args.json}: folder {parent} does not exist")
        if os.path.isdir(args.json):
            raise BenchError(f"--json {args.json} is a folder (give a file name or -)")


class Deferred:
    """Hold SIGINT/SIGTERM while results are written, so no file is left half-made."""

    def __enter__(self) -> "Deferred":
        self.signum: int | None = None
        self.previous = {s: signal.signal(s, self._note) for s in (signal.SIGINT, signal.SIGTERM)}
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


def write_charts(doc: dict[str, Any], out: str, jobs: int = 1) -> list[str]:
    """Charts into OUT/charts (drawn by ``jobs`` processes), removing charts a previous run
    left there."""
    from bench.plots import write_charts as draw

    folder = os.path.join(out, CHARTS_DIR)
    paths = draw(doc, folder, jobs)
    keep = {os.path.abspath(p) for p in paths}
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            path = os.path.abspath(os.path.join(folder, name))
            if path not in keep and name.endswith((".png", ".svg")):
                os.unlink(path)
    return paths


def execute(args: argparse.Namespace, experiment: exp.Experiment, out: str,
            reuse: bool = True) -> tuple[dict[str, Any], int | None]:
    """Run the experiment into ``out`` and write every output; returns (document, signal)."""
    from bench import runner

    jobs = args.jobs or os.cpu_count() or 1
    weights = runner.check_memory(experiment, jobs, args.force_memory)
    started = results.now()
    progress = None if args.no_progress else Progress()
    outcome = runner.execute(experiment, out, jobs, reuse=reuse, progress=progress,
                             weights=weights)
    notes: list[str] = []
    with Deferred() as deferred:
        volatile = {
            "command": ["python", "-m", "bench"] + list(args.argv),
            "started": started, "finished": results.now(), "host": results.host_description(),
            "jobs": jobs, "cells_reused": outcome.reused, "cells_computed": outcome.computed,
        }
        doc = results.make_document(experiment, outcome.cells, outcome.oracles,
                                    outcome.interrupted is None, volatile, notes)
        write_outputs(doc, out, jobs=jobs)
        if args.json and args.json != "-" and outcome.interrupted is None:
            results.write_json(doc, args.json)
    signum = outcome.interrupted.signum if outcome.interrupted else deferred.signum
    if signum:
        sys.stderr.write(
            f"bench: interrupted by {signal.Signals(signum).name}: {doc['meta']['cells_done']} of "
            f"{doc['meta']['cells_expected']} cells done, kept in {out}; "
            f"rerun the same command to resume\n")
    return doc, signum


def finish(args: argparse.Namespace, doc: dict[str, Any], out: str) -> None:
    from bench import stats

    if args.json == "-":
        sys.stdout.write(results.dumps(doc))
    else:
        sys.stdout.write(stats.summary_text(doc))
        sys.stdout.write(f"results in {out}/ (results.json, results.csv, pyperf.json, "
                         f"{CHARTS_DIR}/, report.md)\n")
    sys.stdout.flush()


# -- verbs -------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    out = args.out or DEFAULT_OUT
    previous = None
    if args.from_:
        given = [o for o, v in (("-p", args.policy), ("-w", args.workload), ("--set", args.set),
                                ("--quick", args.quick), ("--seeds", args.seeds),
                                ("--cost-profile", args.cost_profile)) if v]
        if given:
            raise BenchError(f"--from reruns the file's own configuration; drop {', '.join(given)}")
        previous = results.load(args.from_)
        experiment = exp.from_dict(previous["meta"]["experiment"])
    else:
        experiment = experiment_from_args(args)
    check_output_paths(args, out)
    doc, signum = execute(args, experiment, out, reuse=previous is None)
    if signum:
        return 128 + signum
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
    out = args.out or DEFAULT_SWEEP_OUT
    check_output_paths(args, out)
    doc, signum = execute(args, experiment, out)
    if signum:
        return 128 + signum
    finish(args, doc, out)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
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
    lines.append("cost profiles (* = estimate; cycles per event):")
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
        + f"; {exp.DEFAULT_SEEDS} seeds; cost profile {costs.DEFAULT_PROFILE}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from bench.report import write_report

    doc = results.load(args.results)
    folder = args.out or _folder_of(args.results)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise BenchError(f"--out {folder} exists and is not a folder")
    os.makedirs(folder, exist_ok=True)
    with Deferred():
        paths = write_charts(doc, folder, os.cpu_count() or 1)
        paths.append(write_report(doc, paths, folder))
    sys.stdout.write("".join(p + "\n" for p in paths))
    return 0


def _folder_of(path: str) -> str:
    return path if os.path.isdir(path) else (os.path.dirname(path) or ".")


def cmd_compare(args: argparse.Namespace) -> int:
    from bench import stats

    doc = results.load(args.results)
    if args.kvm_stat:
        return _kvm_stat(doc, args)
    sys.stdout.write(stats.compare_text(doc, args.policy))
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    return _kvm_stat(results.load(args.results), args)


def _kvm_stat(doc: dict[str, Any], args: argparse.Namespace) -> int:
    from bench import stats

    if not args.ghz > 0:
        raise BenchError(f"--ghz must be above 0, got {args.ghz}")
    profile = results.profile_of(doc)
    chosen = stats.select(doc["records"], args.policy, args.workload, args.seed)
    sys.stdout.write("\n".join(stats.kvm_stat_text(r, profile, args.ghz) for r in chosen))
    return 0


def cmd_reprice(args: argparse.Namespace) -> int:
    from bench import stats

    profile = costs.profile(args.cost_profile)
    doc = results.load(args.results)
    if args.out:
        check_output_paths(args, args.out)
    elif args.json and args.json != "-":
        check_output_paths(args, ".")
    new = results.reprice(doc, profile)
    with Deferred():
        if args.out:
            write_outputs(new, args.out, charts=False)
        if args.json and args.json != "-":
            results.write_json(new, args.json)
    if args.json == "-":
        sys.stdout.write(results.dumps(new))
    else:
        sys.stdout.write(stats.summary_text(new))
    return 0


# -- the parser --------------------------------------------------------------------------------
def _run_options(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("-p", "--policy", action="append", metavar="POLICY[:k=v,...]",
                   help="a policy and its parameters (repeatable; default: every policy)")
    p.add_argument("-w", "--workload", action="append", metavar="WORKLOAD[:k=v,...]",
                   help="a workload (repeatable; default: kscand, linear-scan, kmap variants)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a workload parameter for every selected workload that takes it")
    p.add_argument("--cost-profile", metavar="NAME",
                   help=f"cost profile to price with (default {costs.DEFAULT_PROFILE})")
    p.add_argument("--seeds", type=positive_int, metavar="N",
                   help=f"run seeds 0..N-1 (default {exp.DEFAULT_SEEDS})")
    p.add_argument("--jobs", type=positive_int, metavar="N",
                   help="worker processes (default: the number of CPUs)")
    p.add_argument("--out", metavar="DIR", help=f"results folder (default {out_default})")
    p.add_argument("--json", metavar="PATH|-",
                   help="also write the results document to PATH (- = stdout, nothing else)")
    p.add_argument("--quick", action="store_true", help="shrink the guests (quick=true)")
    p.add_argument("--force-memory", action="store_true",
                   help="run even if the memory estimate exceeds the available memory")
    p.add_argument("--no-progress", action="store_true", help="no progress display on stderr")


def create_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m bench",
                    description="Compare shadow-paging unshadow policies on simulated guests.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)

    p = sub.add_parser("run", help="run policies on workloads (default: the standard comparison)")
    _run_options(p, DEFAULT_OUT)
    p.add_argument("--from", dest="from_", metavar="RESULTS",
                   help="rerun a results file's configuration and report counter differences")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="run over a parameter grid")
    p.add_argument("experiment", nargs="?", metavar="EXPERIMENT.toml",
                   help="experiment file (policies, workloads, set, grid, seeds, cost_profile)")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                   help="a policy or workload parameter and its values (repeatable; "
                        "policy.KEY / workload.KEY when both have KEY)")
    _run_options(p, DEFAULT_SWEEP_OUT)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("list", help="policies, workloads and cost profiles with their parameters")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("plot", help="redraw the charts and report.md from a results file")
    p.add_argument("results", metavar="RESULTS", help="results.json or its folder")
    p.add_argument("--out", metavar="DIR", help="folder for charts/ and report.md "
                                                "(default: the results file's folder)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("compare", help="policies against a baseline, paired by seed")
    p.add_argument("results", metavar="RESULTS", help="results.json or its folder")
    p.add_argument("-p", "--policy", metavar="BASELINE",
                   help="baseline policy (default always-emulate); with --kvm-stat: the policy")
    p.add_argument("--kvm-stat", action="store_true",
                   help="print `perf kvm stat report` tables per cell instead")
    _stat_options(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("stat", help="`perf kvm stat report` tables per cell")
    p.add_argument("results", metavar="RESULTS", help="results.json or its folder")
    p.add_argument("-p", "--policy", metavar="POLICY", help="only this policy")
    _stat_options(p)
    p.set_defaults(func=cmd_stat)

    p = sub.add_parser("reprice", help="price stored results under another cost profile")
    p.add_argument("results", metavar="RESULTS", help="results.json or its folder")
    p.add_argument("--cost-profile", required=True, metavar="NAME", help="the new cost profile")
    p.add_argument("--out", metavar="DIR", help="write the re-priced results folder here")
    p.add_argument("--json", metavar="PATH|-", help="write the re-priced document (- = stdout)")
    p.set_defaults(func=cmd_reprice)
    _add_recording_verbs(sub)
    return parser


def _add_recording_verbs(sub: argparse._SubParsersAction) -> None:
    """`record` and `inspect` (real guests; bench/record/)."""
    from bench.record.cli import add_record_verbs
    add_record_verbs(sub)


def _stat_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-w", "--workload", metavar="WORKLOAD", help="only this workload (label or name)")
    p.add_argument("--seed", type=int, metavar="N", help="only this seed")
    p.add_argument("--ghz", type=float, default=3.0,
                   help="clock to turn cycles into microseconds (default 3.0)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = create_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help(sys.stderr)
        return 2
    args.argv = argv
    try:
        return args.func(args)
    except BenchError as err:
        message = " ".join(str(err).split())
        sys.stderr.write(f"bench: error: {message}\n")
        return 2
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
