"""The fonts a chart's PDF embeds: each font's subset is cut from a copy of the font file without
its OpenType layout tables, so that embedding costs a quarter of what it did.

matplotlib (3.11 and later) lays text out with libraqm, that is with the font's GSUB and GPOS
tables: DejaVu Sans's ``fi`` and ``fl`` ligatures and its GPOS kerning are in the charts
(``flood-count`` is drawn with the ``fl`` ligature), so the font the charts are drawn with
keeps every table. Once text is laid out, a PDF places each glyph by its index and no viewer
reads those tables again, yet fontTools decompiles and subsets them for every font of every PDF
(0.2 to 0.3 s each, most of a chart's PDF). While `stripped_subsets` is active, the PDF
backend subsets instead a copy of the font file without GSUB, GPOS, GDEF and kern, made once
per font file into a folder that lives as long as the drawing: the same glyph order, and every
other table (glyf, loca, hmtx, cmap, post, name, OS/2, the hinting programs, MATH) the same
bytes, so every glyph outline and advance embedded is the same. The embedded subsets already
had no kern table (fontTools drops it beside GPOS); now they have no GSUB, GPOS or GDEF either.
A subset of glyphs already cut in the same process is not cut again: its bytes are reused.

The hook is matplotlib's private ``_backend_pdf_ps.get_glyphs_subset``; a matplotlib without it
embeds the full font's subsets, as before (tests/test_charts.py checks that the hook takes).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from bench.files import atomic_write

LAYOUT_TABLES: tuple[str, ...] = ("GSUB", "GPOS", "GDEF", "kern")
"""The tables only text layout reads, left out of the copy the PDF subsets are cut from."""


def layout_free_copy(path: str, face_index: int, folder: str) -> str:
    """The path of a copy of the font (face ``face_index`` of the file at ``path``) without
    LAYOUT_TABLES, made in ``folder`` unless it is there; ``path`` itself if the font has none
    of them."""
    from fontTools.ttLib import TTFont

    name = hashlib.sha256(f"{os.path.abspath(path)}\0{face_index}".encode()).hexdigest()[:32]
    copy = os.path.join(folder, f"{name}.ttf")
    if os.path.exists(copy):  # made by this process or a forked sibling (complete: renamed)
        return copy
    with TTFont(path, fontNumber=face_index, lazy=True, recalcBBoxes=False,
                recalcTimestamp=False) as font:
        present = [tag for tag in LAYOUT_TABLES if tag in font]
        if not present:
            return path
        for tag in present:
            del font[tag]
        atomic_write(copy, lambda handle: font.save(handle, reorderTables=False), binary=True)
    return copy


@contextlib.contextmanager
def stripped_subsets() -> Iterator[str]:
    """While active (in this process and in the processes it forks), PDF font subsets are cut
    from layout-free copies (layout_free_copy) kept in a temporary folder, whose path it
    yields, and a subset of the same glyphs of the same font is cut once per process (charts
    share many: every chart naming flood-count has a subset of just its ``fl`` ligature)."""
    from matplotlib.backends import _backend_pdf_ps

    subset = getattr(_backend_pdf_ps, "get_glyphs_subset", None)
    with tempfile.TemporaryDirectory(prefix="shadowbench-fonts-") as folder:
        if subset is None:
            yield folder
            return
        by_glyphs = hasattr(_backend_pdf_ps, "SubsetResults")  # matplotlib >= 3.11
        cut: dict[tuple[str, frozenset[int]], tuple[Any, bytes, dict[int, int]]] = {}

        def from_copy(fontfile, glyphs):
            path = os.fspath(fontfile)
            try:
                copy = layout_free_copy(path, getattr(fontfile, "face_index", 0), folder)
            except OSError:  # no room for the copy: the whole font's subset, as before
                copy = path
            if copy != path:
                fontfile = type(fontfile)(copy, 0) if hasattr(fontfile, "face_index") else copy
            if not by_glyphs:  # an older matplotlib, which subsets by characters
                return subset(fontfile, glyphs)
            key = (copy, frozenset(glyphs))
            if key not in cut:
                with subset(fontfile, glyphs) as result:
                    cut[key] = (type(result), _backend_pdf_ps.font_as_file(result.font).getvalue(),
                                dict(result.glyph_index_map))
            return _reopened(*cut[key])

        _backend_pdf_ps.get_glyphs_subset = from_copy
        try:
            yield folder
        finally:
            _backend_pdf_ps.get_glyphs_subset = subset


@contextlib.contextmanager
def _reopened(kind: Any, data: bytes, glyph_index_map: dict[int, int]) -> Iterator[Any]:
    """A subset cut before, as matplotlib's ``SubsetResults``: the font opened from its bytes
    (saved again, the same bytes: its timestamp is kept)."""
    from fontTools.ttLib import TTFont

    with TTFont(io.BytesIO(data), recalcTimestamp=False) as font:
        yield kind(font, dict(glyph_index_map))
