"""Charts from stored results only (matplotlib, Agg), in the house style of bench.charts.style.

Per workload entry of a run: ``cycles-<workload>`` (bench.charts.cycles) and, when it has MARKs,
``traps-<workload>`` (bench.charts.traps); ``opt-ratio`` over all workloads
(bench.charts.ratio); for a sweep, ``sweep-<param>-<workload>`` and
``sweep-ratio-<param>-<workload>`` instead (bench.charts.sweep). Each chart is written as PDF,
SVG and PNG (or the formats asked for), each file atomically, drawn once per format (the PNG is
the raster of the draw that lays the figure out) and each PDF's fonts embedded from copies
without their layout tables (bench.charts.fonts); a chart whose results, code and options are
unchanged is not drawn again (bench.charts.cache). Nothing here runs a simulation.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from bench.charts import cache, cycles, fonts, ratio, style, sweep, traps
from bench.charts.data import slug
from bench.errors import BenchError
from bench.files import atomic_write

FORMATS = style.FORMATS
WIDTHS = tuple(style.WIDTHS)
KINDS = ("cycles", "traps", "opt-ratio", "sweep", "sweep-ratio")
CHART_SUFFIXES = tuple(f".{f}" for f in FORMATS)


def chart_names(doc: dict[str, Any]) -> list[str]:
    """Every chart the document supports, in drawing order."""
    records = doc["records"]
    if not records:
        return []
    names = sweep.chart_names(doc)
    swept = {r["workload_label"] for g in sweep.groups(doc) for r in g.swept + g.constant}
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_workload.setdefault(r["workload_label"], []).append(r)
    for label, rs in by_workload.items():
        if label in swept:
            continue
        names.append(f"cycles-{slug(label)}")
        if traps.has_chart(rs):
            names.append(f"traps-{slug(label)}")
    if not swept and ratio.has_chart(records):
        names.append("opt-ratio")
    return names


def kind_of(name: str) -> str:
    for kind in ("sweep-ratio", "sweep", "opt-ratio", "cycles", "traps"):
        if name == kind or name.startswith(kind + "-"):
            return kind
    raise ValueError(name)


def select(doc: dict[str, Any], only: Iterable[str] | None) -> list[str]:
    """The charts named by ``only`` (chart names or kinds; None: all), or a BenchError."""
    names = chart_names(doc)
    if only is None:
        return names
    chosen: set[str] = set()
    for want in only:
        if want in names:
            chosen.add(want)
        elif want in KINDS:
            matching = [n for n in names if kind_of(n) == want]
            if not matching:
                raise BenchError(f"--only {want}: these results have no {want} chart "
                                 f"(charts here: {', '.join(names) or 'none'})")
            chosen.update(matching)
        else:
            raise BenchError(f"--only {want}: no such chart; valid: {', '.join(KINDS)} or one "
                             f"of {', '.join(names) or 'none'}")
    return [n for n in names if n in chosen]


def parse_formats(text: str) -> tuple[str, ...]:
    """``pdf,svg,png`` (any subset, any order) as a tuple in FORMATS order, or a BenchError."""
    given = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in given if f not in FORMATS]
    if bad or not given:
        raise BenchError(f"--format {text!r}: give one or more of {','.join(FORMATS)} "
                         "separated by commas")
    return tuple(f for f in FORMATS if f in given)


def figure(doc: dict[str, Any], name: str, width: str):
    """The matplotlib Figure of one chart."""
    kind = kind_of(name)
    if kind in ("sweep", "sweep-ratio"):
        return sweep.draw(doc, name, width)
    if kind == "opt-ratio":
        return ratio.draw(doc, width)
    label = next(r["workload_label"] for r in doc["records"]
                 if f"{kind}-{slug(r['workload_label'])}" == name)
    return (cycles if kind == "cycles" else traps).draw(doc, label, width)


def save(fig, folder: str, name: str, fmt: str) -> str:
    """Write ``fig`` as ``folder/name.fmt``; a PNG is the Agg raster of the figure's last draw
    (``fig.canvas.draw()`` at style.DPI: the same pixels and bytes savefig would draw again)."""
    path = os.path.join(folder, f"{name}.{fmt}")
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None},
                "png": {"Software": "shadowbench"}}[fmt]
    if fmt == "png":
        from matplotlib.image import imsave

        atomic_write(path, lambda handle: imsave(handle, fig.canvas.buffer_rgba(), format="png",
                                                 origin="upper", dpi=fig.dpi,
                                                 metadata=metadata), binary=True)
    else:
        atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, dpi=style.DPI,
                                                      metadata=metadata), binary=True)
    return path


_DOC: list[dict[str, Any]] = []  # the document a forked worker draws from (not pickled per job)


def _draw(job: tuple[str, str, str, tuple[str, ...]]) -> dict[str, str]:
    """Draw one chart into its missing formats; returns {format: SHA-256 of the file}."""
    folder, name, width, formats = job
    fig = figure(_DOC[0], name, width)
    fig.set_dpi(style.DPI)
    fig.canvas.draw()  # lay out once at the output resolution (the PNG's pixels), then keep it
    style.keep_layout(fig)
    try:
        return {fmt: cache.file_digest(save(fig, folder, name, fmt)) or "" for fmt in formats}
    finally:
        style.pyplot().close(fig)


def _draw_all(todo: list[tuple[str, str, str, tuple[str, ...]]],
              jobs: int) -> list[dict[str, str]]:
    """Every job drawn (by ``jobs`` forked processes), each PDF's fonts embedded from their
    layout-free copies (bench.charts.fonts)."""
    if not todo:
        return []  # matplotlib not even imported
    with fonts.stripped_subsets():
        if jobs <= 1 or len(todo) <= 1 or sys.platform == "win32":
            return [_draw(job) for job in todo]
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(jobs, len(todo)),
                                 mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_draw, todo))


def keep_drawn(doc: dict[str, Any], folder: str, formats: tuple[str, ...] = FORMATS,
               width: str = "full") -> list[str]:
    """Draw nothing (matplotlib is not imported): keep the charts of ``doc`` that ``folder``
    already holds, unchanged since their drawing, and remove every other chart file, so the
    folder never shows charts of other results beside this document. Returns the kept paths
    (``run --json -``, whose output is the document on stdout, draws no charts)."""
    if not os.path.isdir(folder):
        return []
    names = chart_names(doc)
    manifest = cache.load(folder)
    document = cache.document_digest(doc)
    keys = {n: cache.chart_key(document, n, width) for n in names}
    kept = {n: [f for f in formats if cache.fresh(manifest, folder, n, keys[n], f)]
            for n in names}
    paths = [os.path.join(folder, f"{n}.{f}") for n in names for f in kept[n]]
    keep = {os.path.abspath(p) for p in paths}
    for entry_name in os.listdir(folder):
        path = os.path.abspath(os.path.join(folder, entry_name))
        if entry_name.endswith(CHART_SUFFIXES) and path not in keep:
            os.unlink(path)
    cache.save(folder, {n: {"key": keys[n], "files": {f: manifest[n]["files"][f] for f in fs}}
                        for n, fs in kept.items() if fs})
    return paths


def write_charts(doc: dict[str, Any], folder: str, jobs: int = 1,
                 formats: tuple[str, ...] = FORMATS, width: str = "full",
                 only: Iterable[str] | None = None) -> list[str]:
    """The charts into ``folder`` (drawn by ``jobs`` processes, the same files whatever it is);
    returns their paths. Charts unchanged since the folder's last drawing are kept, not drawn.
    Without ``only``, chart files of other names or formats left in the folder are removed."""
    if width not in style.WIDTHS:
        raise BenchError(f"--width {width!r}: give one of {', '.join(style.WIDTHS)}")
    names = select(doc, only)
    if not names:
        return []
    os.makedirs(folder, exist_ok=True)
    manifest = cache.load(folder)
    document = cache.document_digest(doc)
    keys = {n: cache.chart_key(document, n, width) for n in names}
    todo = []
    for n in names:
        missing = tuple(f for f in formats if not cache.fresh(manifest, folder, n, keys[n], f))
        if missing:
            todo.append((folder, n, width, missing))
    _DOC[:] = [doc]
    try:
        drawn = _draw_all(todo, jobs)
    finally:
        _DOC.clear()
    for (_, n, _, _), files in zip(todo, drawn):
        entry = manifest.get(n)
        kept = entry.get("files", {}) if isinstance(entry, dict) and entry.get("key") == keys[n] \
            else {}
        manifest[n] = {"key": keys[n], "files": dict(kept, **files)}
    paths = [os.path.join(folder, f"{n}.{f}") for n in names for f in formats]
    if only is None:
        keep = {os.path.abspath(p) for p in paths}
        for entry_name in os.listdir(folder):
            path = os.path.abspath(os.path.join(folder, entry_name))
            if entry_name.endswith(CHART_SUFFIXES) and path not in keep:
                os.unlink(path)
        manifest = {n: dict(e, files={f: d for f, d in e["files"].items() if f in formats})
                    for n, e in manifest.items() if n in keys}
    cache.save(folder, manifest)
    return paths
