"""Running an experiment's cells in worker processes, with a resumable per-cell cache.

Each cell (and each oracle record) is written, as soon as it is finished, to
``OUT/cells/<digest>.json`` by the process that computed it (atomically: a temporary file in the
same folder, then os.replace). A later run of the same experiment finds them there, so an
interrupted run resumes where it stopped and a repeated run reuses them. SIGINT, SIGTERM and SIGHUP
stop the run: the workers are ended, the cells already finished stay, and the caller writes a partial
results file. Nothing here prices anything; the records are assembled by bench.results.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from bench.cell import NATIVE_RUN_NOTE, CellResult, build_run, run_cells
from bench.errors import BenchError
from bench.experiment import Cell, Experiment
from bench.files import atomic_write_text, writer_is_gone
from bench.recording import DEFAULT_BUDGET
from bench.registry import make_workload

if TYPE_CHECKING:
    from bench.executors import Executor

CELLS_DIR = "cells"
BYTES_PER_GUEST_PAGE = 200
"""Memory estimate: per guest page the workload derives (its frame and kernel bookkeeping)."""
BYTES_PER_PTE = 100
"""Per mapped pte: its spte and rmap entry once shadowed."""
BYTES_PER_TABLE_PAGE = 4096 * 2 + 512 * 120
"""Per page-table page: the dense guest page, its shadow page's sptes and rmap entries."""
BYTES_PER_WORKER = 60 << 20
"""A worker process with the simulator loaded."""
RECORDING_BYTES = DEFAULT_BUDGET
"""A recorded operation stream held in memory (the rest spills to a temporary file)."""
BYTES_PER_RECORD = 64 << 10
"""Per cell, in the run's own process: its stored document, its record and the results files
built from it (a default-run record is about 2.5 KB of JSON; Python objects take several times
that)."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals that stop a run cleanly (Ctrl-C, kill, a closed terminal): finished cells kept."""
POLL_SECONDS = 0.5
"""How often the parent looks for cells a worker stored before its whole group finished."""
TEMPORARY_AGE = 300.0
"""A temporary file in the cells folder older than this (seconds) was left by a killed writer;
a younger one written on another host may be another run's cell being written (runs may share a
folder); one whose writer on this host has ended is removed at once."""


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived during a run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class CellFailed(Exception):
    """A cell raised (a policy's or workload's bug): ``message`` names the cell and the error in
    one line, ``details`` is the traceback. Picklable, so a worker's failure reaches the parent."""

    def __init__(self, message: str, details: str, cell: str | None = None) -> None:
        super().__init__(message, details, cell)
        self.message = message
        self.details = details
        self.cell = cell
        """The digest of the cell that raised; None when the guest run itself raised (every
        cell of the task not finished fails with it)."""

    def __str__(self) -> str:
        return self.message


@dataclass
class Outcome:
    """What a run produced: cell results and oracle records by digest, and whether it stopped."""

    cells: Any = field(default_factory=dict)
    """Cell documents by digest (a StoredDocs: read from the cells folder when asked for)."""
    oracles: Any = field(default_factory=dict)
    reused: int = 0
    computed: int = 0
    interrupted: Interrupted | None = None
    failed: CellFailed | None = None
    failures: dict[str, CellFailed] = field(default_factory=dict)
    """With keep_going: every cell that raised, by digest (``failed`` is the first)."""


# -- the work done in a worker -----------------------------------------------------------------
def _payload(result: CellResult) -> dict[str, Any]:
    return {
        "guest_ops": result.guest_ops,
        "counters": dict(sorted(result.counters.items())),
        "marks": [[phase, {k: v for k, v in sorted(c.items()) if v}] for phase, c in result.marks],
        "sizes": dict(sorted(result.sizes.items())),
    }


def _store_doc(cell_key: dict[str, Any], digest: str, cells_dir: str | None,
               payload: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps({"key": cell_key, **payload}, sort_keys=True)
    if _orphaned():  # the run is gone: its folder may belong to another run by now
        os._exit(1)
    if cells_dir is not None:
        atomic_write_text(os.path.join(cells_dir, digest + ".json"), text)
    return json.loads(text)  # exactly what a later run reads back from the cache


def _already_stored(cells_dir: str | None, key: dict[str, Any],
                    digest: str) -> dict[str, Any] | None:
    """The cell's stored document, when a worker that died (or another run) stored it."""
    if cells_dir is None:
        return None
    try:
        with open(os.path.join(cells_dir, digest + ".json"), encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("key") == json.loads(json.dumps(key)) else None


def compute_group(items: list[tuple[dict[str, Any], str]], cells_dir: str | None,
                  done: Callable[[int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Simulate cells of one guest run (same workload, parameters and seed; the oracle record
    among them or not) through bench.cell.run_cells, storing each as soon as it is finished
    (``cells_dir`` None: not stored); ``done(i, doc)`` is called after item ``i`` is stored.
    Cells already stored (by a worker of this task that died) are read back, not computed.
    Returns the documents in item order."""
    stored = [_already_stored(cells_dir, key, digest) for key, digest in items]
    if any(doc is not None for doc in stored):
        rest = [i for i, doc in enumerate(stored) if doc is None]
        if rest:
            for j, doc in zip(rest, compute_group([items[i] for i in rest], cells_dir,
                                                  None if done is None else
                                                  lambda k, d: done(rest[k], d))):
                stored[j] = doc
        return [doc for doc in stored if doc is not None]
    first = items[0][0]
    workload, params, seed = first["workload"], first["workload_params"], first["seed"]
    oracle_at = [i for i, (key, _) in enumerate(items) if key["kind"] == "oracle"]
    policy_at = [i for i, (key, _) in enumerate(items) if key["kind"] != "oracle"]
    specs = [(items[i][0]["policy"], items[i][0]["policy_params"]) for i in policy_at]
    docs: list[dict[str, Any]] = [{} for _ in items]
    finished = -2 if oracle_at else -1  # the last run_cells index yielded
    try:
        for j, result in run_cells(specs, workload, params, seed, record_oracle=bool(oracle_at)):
            finished = j
            targets = oracle_at if j < 0 else [policy_at[j]]
            payload = {"oracle": result} if j < 0 else _payload(result)
            for i in targets:
                key, digest = items[i]
                docs[i] = _store_doc(key, digest, cells_dir, payload)
                if done:
                    done(i, docs[i])
    except (BenchError, KeyboardInterrupt, Interrupted, MemoryError, OSError):
        raise
    except Exception as err:
        native = any(NATIVE_RUN_NOTE in n for n in getattr(err, "__notes__", ()))
        nxt = finished + 1
        at = None if native or not 0 <= nxt < len(policy_at) else policy_at[nxt]
        failing = None if at is None else items[at][0]
        raise CellFailed(_failure_line(failing, first, err), traceback.format_exc(),
                         None if at is None else items[at][1]) from None
    return docs


def _params_text(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(params.items()))


def _failure_line(key: dict[str, Any] | None, first: dict[str, Any], err: BaseException) -> str:
    """One line naming the cell that raised (or the guest run, when it raised natively)."""
    where = ""
    tb = err.__traceback__
    while tb is not None:  # the innermost frame: where it raised
        where = f" at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"
        tb = tb.tb_next
    run = (f"workload {first['workload']}[{_params_text(first['workload_params'])}] "
           f"seed {first['seed']}")
    who = (f"policy {key['policy']}[{_params_text(key['policy_params'])}] on " if key
           else "the native run of ")
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return f"{who}{run} raised {text[:300]}{where}"


def compute_remote(items: list[tuple[dict[str, Any], str]],
                   cells_dir: str) -> list[dict[str, Any]]:
    """``compute_group`` on a worker of another machine (bench.executors.dask): the cells are
    stored in ``cells_dir`` when the worker sees that folder, and returned in any case."""
    return compute_group(items, cells_dir if os.path.isdir(cells_dir) else None)


def compute(cell_key: dict[str, Any], digest: str, cells_dir: str) -> dict[str, Any]:
    """Simulate one cell (or record the oracle's view of one guest run) and store it."""
    return compute_group([(cell_key, digest)], cells_dir)[0]


_parent: int | None = None
"""In a worker: the pid of the run that started it (None in the run's own process)."""


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG), so a
    killed run leaves no worker behind; elsewhere the check in ``_store_doc`` still stops it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


_forking_parent = 0


def note_forking_parent() -> None:
    """os.register_at_fork ``before`` hook: remember who is forking."""
    global _forking_parent
    _forking_parent = os.getpid()


def die_with_forking_parent() -> None:
    """os.register_at_fork ``after_in_child`` hook: die with the parent, and at once if it
    already died before the request took effect."""
    _die_with_parent()
    if _forking_parent and os.getppid() != _forking_parent:
        os._exit(1)


def _worker_init(parent: int) -> None:
    """Workers leave SIGINT to the parent (which ends them); SIGTERM ends them at once; they
    die with the parent (even a SIGKILLed one) and never write a cell after it is gone."""
    global _parent
    _parent = parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def _orphaned() -> bool:
    return _parent is not None and os.getppid() != _parent


# -- the cache ---------------------------------------------------------------------------------
def load_cached(cells_dir: str, cell: Cell) -> dict[str, Any] | None:
    """A stored cell if it exists and is the same cell; anything unreadable is recomputed."""
    path = os.path.join(cells_dir, cell.digest() + ".json")
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, ValueError):
        return None
    key = json.loads(json.dumps(cell.key()))
    if not isinstance(doc, dict) or doc.get("key") != key:
        return None
    return doc


def clean_temporaries(cells_dir: str, older_than: float = 0.0) -> None:
    """Remove temporary files a killed writer left behind: those whose writer was a process of
    this host that has ended (bench.files.writer_is_gone), and any older than ``older_than``
    seconds (a writer on another host sharing the folder)."""
    try:
        names = os.listdir(cells_dir)
    except OSError:
        return
    limit = time.time() - older_than
    for name in names:
        if name.endswith(".tmp"):
            try:
                path = os.path.join(cells_dir, name)
                if (older_than <= 0 or writer_is_gone(name)
                        or os.stat(path).st_mtime < limit):
                    os.unlink(path)
            except OSError:
                pass


# -- memory estimate ---------------------------------------------------------------------------
def estimate_memory(experiment: Experiment, jobs: int) -> tuple[int, dict[str, int]]:
    """Bytes the run will need at its peak, and the estimate per workload entry.

    Each workload entry is built once (seed 0, no operation run): its derived sizes (``pages``,
    ``page_tables``) and the guest's page-table pages give the estimate of one cell; ``jobs``
    cells run at once. Building also checks parameters only the workload itself can check."""
    per_entry: dict[str, int] = {}
    for w in experiment.workloads:
        run = build_run(w.name, w.params, 0)
        sizes = run.sizes
        tables = max(int(sizes.get("page_tables", 0)), len(run.guest.mem.tables))
        per_entry[w.label] = (int(sizes.get("pages", 0)) * BYTES_PER_GUEST_PAGE
                              + int(sizes.get("ptes", 0)) * BYTES_PER_PTE
                              + tables * BYTES_PER_TABLE_PAGE)
    biggest = max(per_entry.values(), default=0)
    workers = max(1, min(jobs, len(experiment.cells()) or 1))
    # a worker holds the native run's guest and a policy's (its shadow state included), the
    # initial guest to copy from, and the recorded operations (bench.cell.run_cells)
    # and the run's own process holds every record and the documents made from them
    cells = len(experiment.cells()) + len(experiment.oracle_cells())
    return (workers * (2 * biggest + RECORDING_BYTES + BYTES_PER_WORKER)
            + cells * BYTES_PER_RECORD), per_entry


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where it cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_inputs(experiment: Experiment) -> None:
    """Read every workload's input files through (``Workload.check_inputs``: a replay trace's
    every operation), so a malformed one fails before anything is written."""
    for w in experiment.workloads:
        make_workload(w.name, w.params).check_inputs()


def check_memory(experiment: Experiment, jobs: int, force: bool) -> dict[str, int]:
    """Refuse a run whose estimate exceeds the available memory, unless ``force``; returns the
    estimate per workload entry (``execute`` orders its work by it)."""
    need, per_entry = estimate_memory(experiment, jobs)
    have = available_memory()
    if have is not None and need > have and not force:
        worst = max(per_entry, key=per_entry.get) if per_entry else "?"
        raise BenchError(
            f"the run needs about {need / 2**20:.0f} MiB ({jobs} jobs; largest cell {worst}) but "
            f"only {have / 2**20:.0f} MiB is available; lower the guest size or --jobs, or use "
            f"--force-memory")
    return per_entry


# -- running -----------------------------------------------------------------------------------
def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def groups_of(cells: list[Cell], jobs: int,
              weights: dict[str, float] | None = None) -> list[list[Cell]]:
    """The cells grouped by guest run (workload entry and seed), heaviest group first.

    A group shares one native execution (bench.cell.run_cells). When there are fewer than two
    groups per worker, each group's policy cells are split so every worker has work (each part
    executes the run natively again). ``weights`` (per workload label: the memory estimate, a
    proxy for the guest's size) orders the groups so the longest start first."""
    by_run: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells:
        by_run.setdefault((cell.workload.label, cell.seed), []).append(cell)
    groups = list(by_run.values())
    parts = -(-2 * jobs // len(groups)) if groups and jobs > 1 else 1
    if parts > 1:
        split: list[list[Cell]] = []
        for group in groups:
            oracle_cells = [c for c in group if c.policy is None]
            policy_cells = [c for c in group if c.policy is not None]
            n = max(1, min(parts, len(policy_cells)))
            chunks = [policy_cells[k::n] for k in range(n)]
            if n < parts:  # room for the oracle record on its own as well
                chunks.insert(0, oracle_cells)
            else:
                chunks[0] = oracle_cells + chunks[0]
            split.extend(chunk for chunk in chunks if chunk)
        groups = split
    weights = weights or {}

    def cost(group: list[Cell]) -> float:
        return weights.get(group[0].workload.label, 1.0) * (len(group) + 1)

    return sorted(groups, key=cost, reverse=True)  # stable: ties keep the experiment's order


class StoredDocs(Mapping[str, Any]):
    """Cell documents stored in a cells folder, by digest, read back from it when asked for, so
    the run's own process holds digests, not documents, however many cells it runs (``part``:
    the one field wanted, e.g. an oracle record). ``mem`` holds documents that have no file
    (a run with --no-cache reads them all in before its scratch folder goes)."""

    def __init__(self, cells_dir: str, part: str | None = None) -> None:
        self.cells_dir = cells_dir
        self.part = part
        self.digests: set[str] = set()
        self.mem: dict[str, Any] = {}

    def add(self, digest: str) -> None:
        self.digests.add(digest)

    def __contains__(self, digest: object) -> bool:
        return digest in self.digests or digest in self.mem

    def __getitem__(self, digest: str) -> Any:
        if digest in self.mem:
            return self.mem[digest]
        if digest not in self.digests:
            raise KeyError(digest)
        doc = _read_doc(self.cells_dir, digest)
        return doc[self.part] if self.part else doc

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.digests | set(self.mem)))

    def __len__(self) -> int:
        return len(self.digests | set(self.mem))

    def load_all(self) -> None:
        for digest in list(self.digests):
            self.mem[digest] = self[digest]
        self.digests.clear()


@lru_cache(maxsize=64)
def _read_doc(cells_dir: str, digest: str) -> dict[str, Any]:
    path = os.path.join(cells_dir, digest + ".json")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as err:
        raise BenchError(f"the stored cell {path} vanished or changed while the run used it "
                         f"({err})") from None


def execute(experiment: Experiment, out_dir: str, jobs: int, reuse: bool = True,
            progress: Callable[[int, int, int, str, float], None] | None = None,
            weights: dict[str, float] | None = None, store: bool = True,
            executor: Executor | None = None, only: set[str] | None = None,
            keep_going: bool = False) -> Outcome:
    """Run every cell not already stored in ``out_dir`` (all of them when not ``reuse``; the
    new results then replace the stored ones). With ``store`` False nothing is read from or
    written to ``out_dir``/cells: the cells pass through a temporary folder removed at the end
    (an interrupted run then keeps nothing to resume from). ``only``: the digests of the cells
    to run (a shard, bench.executors.shards); the others are left out.

    Cells of the same guest run are computed together (``groups_of``) by ``executor`` (default:
    the local pool of ``jobs`` processes, bench.executors.local), which is closed at the end;
    at most ``executor.slots()`` groups are in flight, the next submitted as one finishes, and
    each cell is stored as soon as it is finished. Before a group is submitted its cells are
    claimed (bench.executors.claims): a cell another run on the folder has claimed is left to it
    and read back once stored (or taken over when the claim expires). A cell that raises stops
    the run (``failed``), or with ``keep_going`` is recorded in ``failures`` while the other
    cells go on. ``progress(done, total, reused, what, fraction)`` is called after each cell;
    ``fraction`` is the share of the work to compute that is done, each cell weighted by its
    workload entry's ``weights`` (cells of big guests take longer). ``done``, ``total`` and
    ``reused`` (and the outcome's ``reused``/``computed``) count policy cells, the records of
    results.json; the offline optimum's records only advance ``fraction``. A cell another run
    computed counts as reused.
    SIGINT/SIGTERM/SIGHUP end the workers and return with ``interrupted`` set; the finished
    cells are in the outcome and on disk.
    """
    from bench.executors.claims import Claims
    from bench.executors.local import Inline, Pool

    wanted = [c for c in experiment.oracle_cells() + list(experiment.cells())
              if only is None or c.digest() in only]
    for cell in wanted:  # every key (input files hashed) before anything is written
        cell.digest()
    if not store:
        scratch = tempfile.mkdtemp(prefix="shadowbench-cells-")
        try:
            outcome = execute(experiment, scratch, jobs, False, progress, weights,
                              executor=executor, only=only, keep_going=keep_going)
            for docs in (outcome.cells, outcome.oracles):
                if isinstance(docs, StoredDocs):
                    docs.load_all()
            return outcome
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    cells_dir = os.path.abspath(os.path.join(out_dir, CELLS_DIR))
    os.makedirs(cells_dir, exist_ok=True)
    clean_temporaries(cells_dir, older_than=TEMPORARY_AGE)
    _read_doc.cache_clear()
    outcome = Outcome(cells=StoredDocs(cells_dir), oracles=StoredDocs(cells_dir, "oracle"))
    todo: list[Cell] = []
    for cell in wanted:
        doc = load_cached(cells_dir, cell) if reuse else None
        if doc is None:
            todo.append(cell)
        else:
            _store(outcome, cell)
            outcome.reused += cell.policy is not None
    total = sum(cell.policy is not None for cell in wanted)  # records, as results.json counts
    count = [outcome.reused]
    weight = {c.digest(): (weights or {}).get(c.workload.label, 1.0) for c in todo}
    work = [0.0, sum(weight.values()) or 1.0]
    started = time.time_ns()

    def finished(cell: Cell, doc: dict[str, Any] | None, computed: bool = True) -> None:
        digest = cell.digest()
        if digest in outcome.cells or digest in outcome.oracles:
            return
        if doc is not None and load_cached(cells_dir, cell) is None:
            # a worker that could not see the folder (another machine) returned it
            atomic_write_text(os.path.join(cells_dir, digest + ".json"),
                              json.dumps(doc, sort_keys=True))
        _store(outcome, cell)
        claims.release(digest)
        work[0] += weight.get(digest, 0.0)
        if cell.policy is not None:
            if computed:
                outcome.computed += 1
            else:
                outcome.reused += 1
            count[0] += 1
        if progress:
            progress(count[0], total, outcome.reused, _what(cell), work[0] / work[1])

    def fresh(cell: Cell) -> dict[str, Any] | None:
        """The cell, if another run stored it (since this run started, when not ``reuse``)."""
        if not reuse and not _stored_since(cells_dir, cell, started):
            return None
        return load_cached(cells_dir, cell)

    if progress:
        progress(count[0], total, outcome.reused, "", 0.0)

    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in previous:
        signal.signal(s, _raise_interrupted)
    claims = Claims(cells_dir)
    queue: deque[list[Cell]] = deque()
    inflight: dict[int, list[Cell]] = {}
    waiting: list[Cell] = []
    try:
        if executor is None:
            parallel = max(1, min(jobs, len(groups_of(todo, jobs))))
            executor = Inline() if parallel <= 1 else Pool(parallel)
        queue.extend(groups_of(todo, max(1, executor.slots() // 2), weights))
        token = 0
        last_look = time.monotonic()
        while queue or inflight or waiting:
            while queue and len(inflight) < executor.slots():
                mine = []
                for cell in queue.popleft():
                    if cell.digest() in outcome.cells or cell.digest() in outcome.oracles:
                        continue
                    if claims.take(cell.digest()):
                        doc = fresh(cell)  # stored by another run before this one claimed it
                        if doc is not None:
                            finished(cell, None, computed=False)
                        else:
                            mine.append(cell)
                    else:
                        waiting.append(cell)
                if mine:
                    token += 1
                    inflight[token] = mine
                    executor.submit(token, [(c.key(), c.digest()) for c in mine], cells_dir,
                                    _callback(finished, mine))
            for done_token, result in executor.finished(POLL_SECONDS if inflight else 0.0):
                group = inflight.pop(done_token)
                if isinstance(result, BaseException):
                    _failed(outcome, group, result, keep_going, queue, claims)
                    continue
                for cell, doc in zip(group, result):
                    finished(cell, doc)
            if time.monotonic() - last_look >= POLL_SECONDS or not inflight:
                last_look = time.monotonic()
                for group in inflight.values():  # cells a worker stored while its group runs
                    for cell in group:
                        if _stored_since(cells_dir, cell, started):
                            doc = load_cached(cells_dir, cell)
                            if doc is not None:
                                finished(cell, None)
                waiting, taken = _look_at_waiting(waiting, outcome, fresh, finished, claims)
                if taken:
                    queue.extend(groups_of(taken, 1, weights))
                if waiting and not inflight and not queue:
                    if progress:
                        progress(count[0], total, outcome.reused,
                                 f"waiting for {len(waiting)} cells another run computes",
                                 work[0] / work[1])
                    time.sleep(POLL_SECONDS)
        executor.close()
    except (Interrupted, CellFailed) as stop:
        if isinstance(stop, Interrupted):
            outcome.interrupted = stop
        else:
            outcome.failed = stop
        for s in previous:  # a second signal while cleaning up is ignored
            signal.signal(s, signal.SIG_IGN)
        if executor is not None:
            executor.close()
        # Cells finished by workers after the parent stopped listening are on disk: keep them.
        for cell in wanted:
            digest = cell.digest()
            if digest not in outcome.cells and digest not in outcome.oracles and (
                    reuse or _stored_since(cells_dir, cell, started)):
                if load_cached(cells_dir, cell) is not None:
                    _store(outcome, cell)
    finally:
        claims.close()
        if executor is not None:
            executor.close()
        clean_temporaries(cells_dir, older_than=TEMPORARY_AGE)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return outcome


def _callback(finished: Callable[[Cell, dict[str, Any]], None],
              group: list[Cell]) -> Callable[[int, dict[str, Any]], None]:
    """``done(i, doc)`` for a task: item ``i`` of ``group`` is stored."""
    def done(i: int, doc: dict[str, Any]) -> None:
        finished(group[i], doc)
    return done


def _failed(outcome: Outcome, group: list[Cell], err: BaseException, keep_going: bool,
            queue: deque[list[Cell]], claims: Any) -> None:
    """A task raised: stop the run, or record the cell(s) that raised and queue the rest."""
    if not isinstance(err, CellFailed):
        raise err
    if not keep_going:
        raise err
    unfinished = [c for c in group if c.digest() not in outcome.cells
                  and c.digest() not in outcome.oracles]
    failing = [c for c in unfinished if c.digest() == err.cell] or unfinished
    for cell in failing:
        outcome.failures[cell.digest()] = err
        claims.release(cell.digest())
    if outcome.failed is None:
        outcome.failed = err
    rest = [c for c in unfinished if c not in failing]
    if rest:
        queue.appendleft(rest)


def _look_at_waiting(waiting: list[Cell], outcome: Outcome, fresh: Callable, finished: Callable,
                     claims: Any) -> tuple[list[Cell], list[Cell]]:
    """Cells another run claimed: (still waiting, taken over because their claim expired);
    the ones it stored meanwhile are finished here."""
    still, taken = [], []
    for cell in waiting:
        digest = cell.digest()
        if digest in outcome.cells or digest in outcome.oracles:
            continue
        if fresh(cell) is not None:
            finished(cell, None, computed=False)
        elif claims.take(digest):
            if fresh(cell) is not None:
                finished(cell, None, computed=False)
            else:
                taken.append(cell)
        else:
            still.append(cell)
    return still, taken


def _stored_since(cells_dir: str, cell: Cell, since_ns: int) -> bool:
    """Whether the cell's file was written during this run (not left by an earlier one)."""
    try:
        return os.stat(os.path.join(cells_dir, cell.digest() + ".json")).st_mtime_ns >= since_ns
    except OSError:
        return False


def _store(outcome: Outcome, cell: Cell) -> None:
    if cell.policy is None:
        outcome.oracles.add(cell.digest())
    else:
        outcome.cells.add(cell.digest())


def _what(cell: Cell) -> str:
    who = "oracle" if cell.policy is None else cell.policy.label
    return f"{cell.workload.label} / {who} / seed {cell.seed}"
