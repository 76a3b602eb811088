"""Charts and report.md: the house style (colours fixed per name, print sizes, formats, fonts,
nothing outside the figure), every policy in every chart of its workload, the chart cache, the
plot verb's options, and the report's spread and order."""

from __future__ import annotations

import copy
import json
import os
import struct
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness_util import bench, has_policies  # noqa: E402

from bench import charts, results  # noqa: E402
from bench.charts import cache, data, fonts, style  # noqa: E402
from bench.report import report_text  # noqa: E402

POLICIES = [p for p in ("always-emulate", "always-unshadow", "flood-count", "unsync", "xen-oos",
                        "tdp", "oracle") if has_policies(p)]


def _run(tmp_path_factory, name: str, *argv: str) -> dict:
    out = tmp_path_factory.mktemp(name) / "out"
    proc = bench(*argv, "-w", "tiny", "--seeds", "2", "--no-progress", "--jobs", "1",
                 "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return results.load(str(out))


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    """A tiny run of several policies, some outside the optimum's model, with a variant."""
    extra = ["-p", "flood-count:variant=2.6.27"] if has_policies("flood-count") else []
    argv = [a for p in POLICIES for a in ("-p", p)] + extra
    return _run(tmp_path_factory, "run", "run", *argv)


@pytest.fixture(scope="module")
def sweep_doc(tmp_path_factory):
    return _run(tmp_path_factory, "sweep", "sweep", "-p", "always-emulate", "-p",
                "always-unshadow", "--grid", "pages=2,4,6")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    style.pyplot().close("all")


def legend_entries(fig) -> dict[str, object]:
    """Legend label -> its handle (patch or line)."""
    out = {}
    for legend in fig.legends:
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            out[text.get_text()] = handle
    return out


def chart_texts(fig) -> set[str]:
    from matplotlib.text import Text

    return {t.get_text() for t in fig.findobj(Text) if t.get_text()}


# -- palette -------------------------------------------------------------------------------------
def test_policy_and_cause_colours_are_fixed_per_name():
    assert style.policy_colour("flood-count") == "#44AA99"
    assert style.policy_colour("always-emulate") == "#332288"
    assert style.cause_colour("hidden_faults") == "#E69F00"
    assert len(set(style.POLICY_COLOURS.values())) == len(style.POLICY_COLOURS)
    assert len(set(style.CAUSE_COLOURS.values())) == len(style.CAUSE_COLOURS)
    # a third-party name: deterministic, from the fallback scheme, hatched as such
    acme = style.policy_colour("acme-unshadow")
    assert acme == style.policy_colour("acme-unshadow") and acme in style.THIRD_PARTY_COLOURS
    assert style.policy_hatch("acme-unshadow") == style.THIRD_PARTY_HATCH
    # a parameterised label: the policy's hue shaded, the same every time, not the base colour
    variant = style.policy_colour("flood-count", "flood-count[variant=2.6.27]")
    assert variant == style.policy_colour("flood-count", "flood-count[variant=2.6.27]")
    assert variant != style.policy_colour("flood-count")


def test_colour_of_a_policy_does_not_depend_on_the_others_present(doc):
    from matplotlib.colors import to_hex

    fewer = copy.deepcopy(doc)
    keep = {"always-emulate", "unsync"}
    fewer["records"] = [r for r in doc["records"] if r["policy"] in keep]
    for name in ("traps-tiny", "opt-ratio"):
        full = legend_entries(charts.figure(doc, name, "full"))
        part = legend_entries(charts.figure(fewer, name, "full"))
        for label in keep & set(part):
            assert to_hex(part[label].get_facecolor()) == to_hex(full[label].get_facecolor())
            assert to_hex(part[label].get_facecolor()).upper() == style.policy_colour(label)
    causes = legend_entries(charts.figure(fewer, "cycles-tiny", "full"))
    for cause, colour in style.CAUSE_COLOURS.items():
        if style.cause_label(cause) in causes:
            assert to_hex(causes[style.cause_label(cause)].get_facecolor()).upper() == colour


def test_policies_in_family_order_unknown_ones_after_alphabetically():
    pairs = [(n, n) for n in ("zeta", "tdp", "xen-oos", "acme", "flood-count", "always-emulate",
                              "ski-rental")] + [("flood-count", "flood-count[variant=2.6.27]")]
    assert style.order_policies(pairs) == [
        "always-emulate", "flood-count", "flood-count[variant=2.6.27]", "xen-oos", "ski-rental",
        "tdp", "acme", "zeta"]


def test_ratio_ticks_read_naturally():
    assert style.ratio_ticks(0.95, 12) == [1.0, 2.0, 5.0, 10.0]
    assert style.ratio_ticks(0.95, 1.6) == [1.0, 1.1, 1.2, 1.5]
    assert [style.ratio_text(t) for t in (1.0, 1.5, 20.0)] == ["1x", "1.5x", "20x"]
    assert style.count_text(150000) == "150k" and style.count_text(0) == "0"


# -- what the charts show -----------------------------------------------------------------------
def test_chart_names(doc, sweep_doc):
    assert charts.chart_names(doc) == ["cycles-tiny", "traps-tiny"] + (
        ["opt-ratio"] if any(r["opt_ratio"] is not None for r in doc["records"]) else [])
    names = charts.chart_names(sweep_doc)
    assert names[0] == "sweep-pages-tiny" and all(len(n) < 40 for n in names)


def test_every_policy_is_in_every_chart_of_its_workload(doc, sweep_doc):
    for d in (doc, sweep_doc):
        labels = {r["policy_label"] for r in d["records"]}
        for name in charts.chart_names(d):
            for width in style.WIDTHS:
                texts = chart_texts(charts.figure(d, name, width))
                for label in labels:
                    assert any(t == label or t.startswith(label + " ") or t == label + ": n/a"
                               for t in texts), (name, width, label)


def test_policies_outside_the_optimum_model_are_marked_not_dropped(doc):
    outside = {r["policy_label"] for r in doc["records"] if r["opt_ratio"] is None}
    if not outside or "opt-ratio" not in charts.chart_names(doc):
        pytest.skip("no policy outside the optimum's model in this checkout")
    from bench.charts import ratio

    entries = legend_entries(charts.figure(doc, "opt-ratio", "full"))
    assert ratio.NA_LABEL in entries and outside <= set(entries)


def test_traps_chart_per_interval_with_the_workloads_own_words(doc):
    fig = charts.figure(doc, "traps-tiny", "full")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["phase 0", "phase 1", "phase 2",
                                                            "phase 3"]
    assert ax.get_yscale() == "linear" and ax.get_yticklabels()[1].get_text()
    assert data.phase_title("kscand") == "VM exits per scan pass"
    assert "warm-up" in data.phase_title("kmap") and "pass" not in data.phase_title("kmap")
    record = {"marks": [{"phase": 0, "counters": {"exits": 5}},
                        {"phase": 1, "counters": {"exits": 12}}], "counters": {"exits": 20}}
    assert data.exits_per_interval(record) == [5, 7, 8]


def test_many_intervals_are_steps_with_a_band_per_policy(tmp_path_factory):
    long = _run(tmp_path_factory, "long", "run", "-p", "always-emulate", "-p", "always-unshadow",
                "--set", "passes=9")
    fig = charts.figure(long, "traps-tiny_passes_9", "full")
    ax = fig.axes[0]
    from matplotlib.patches import StepPatch

    steps = [p for p in ax.patches if isinstance(p, StepPatch)]
    assert len(steps) == 4  # a mean and a band per policy
    assert not [p for p in ax.patches if type(p).__name__ == "Rectangle"]
    assert ax.get_xlim() == (-0.5, 8.5)


def test_headroom_above_the_tallest_bar(doc):
    fig = charts.figure(doc, "cycles-tiny", "full")
    ax = fig.axes[0]
    tallest = max(r["cycles"] for r in doc["records"]) / 1e6
    assert ax.get_ylim()[1] >= 1.05 * tallest


def test_sweep_lines_and_legends_without_defaults(sweep_doc):
    fig = charts.figure(sweep_doc, "sweep-pages-tiny", "full")
    entries = set(legend_entries(fig))
    assert entries == {"always-emulate", "always-unshadow"}
    texts = " ".join(chart_texts(fig))
    assert "True" not in texts and "quick" not in texts
    xs = sorted({x for line in fig.axes[0].get_lines() for x in line.get_xdata()})
    assert xs == [2, 4, 6]


# -- print size, formats, fonts, nothing outside the figure -------------------------------------
def test_fonts_and_no_text_outside_the_figure(doc, sweep_doc):
    from matplotlib.text import Text

    for d in (doc, sweep_doc):
        for name in charts.chart_names(d):
            for width, inches in style.WIDTHS.items():
                fig = charts.figure(d, name, width)
                fig.canvas.draw()
                assert fig.get_figwidth() == inches
                box = fig.get_tightbbox(fig.canvas.get_renderer())
                assert box.x0 >= -0.01 and box.y0 >= -0.01, (name, width, box)
                assert box.x1 <= inches + 0.01 and box.y1 <= fig.get_figheight() + 0.01, \
                    (name, width, box)
                for text in fig.findobj(Text):
                    if text.get_text() and text.get_visible():
                        assert text.get_fontsize() >= style.MIN_FONT_PT, (name, text.get_text())


def _png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_formats_and_print_sizes(doc, tmp_path):
    paths = charts.write_charts(doc, str(tmp_path / "full"), only=["cycles-tiny"])
    assert [os.path.basename(p) for p in paths] == ["cycles-tiny.pdf", "cycles-tiny.svg",
                                                    "cycles-tiny.png"]
    assert _png_size(paths[2])[0] == 7 * 300
    svg = open(paths[1], encoding="utf-8").read()
    assert "<text" in svg and "cycles by cause" in svg  # text kept as text
    pdf = open(paths[0], "rb").read()
    assert pdf.startswith(b"%PDF") and b"/Type3" not in pdf
    column = charts.write_charts(doc, str(tmp_path / "column"), formats=("png",), width="column")
    assert all(p.endswith(".png") for p in column)
    assert _png_size(column[0])[0] == 990


# -- drawn once per format; PDF fonts cut from layout-free copies ------------------------------
def _embedded_fonts(pdf: bytes) -> list:
    """Every TrueType font file (/FontFile2 stream) of a PDF matplotlib wrote, as TTFonts."""
    import io
    import re
    import zlib

    from fontTools.ttLib import TTFont

    fonts = []
    for number in sorted(set(re.findall(rb"/FontFile2 (\d+) 0 R", pdf))):
        head = re.search(rb"\n" + number + rb" 0 obj\s*<<(.*?)>>\s*stream\r?\n", pdf, re.S)
        assert head, number
        length = int(re.search(rb"/Length (\d+)", head.group(1)).group(1))
        data = pdf[head.end():head.end() + length]
        fonts.append(TTFont(io.BytesIO(zlib.decompress(data) if b"/FlateDecode" in head.group(1)
                                       else data)))
    return fonts


def _matplotlib_font(postscript_name: str):
    """The TTFont of the matplotlib font file of that PostScript name."""
    from fontTools.ttLib import TTFont
    from matplotlib import font_manager

    for entry in font_manager.fontManager.ttflist:
        if entry.fname.endswith(".ttf"):
            font = TTFont(entry.fname, lazy=True)
            if font["name"].getDebugName(6) == postscript_name:
                return font
    raise AssertionError(postscript_name)


def test_pdf_fonts_are_embedded_without_layout_tables_and_with_the_same_glyphs(doc, tmp_path):
    from fontTools.pens.recordingPen import RecordingPen

    [pdf] = charts.write_charts(doc, str(tmp_path), formats=("pdf",), only=["cycles-tiny"])
    embedded = _embedded_fonts(open(pdf, "rb").read())
    assert len(embedded) >= 2  # the regular and the bold face at least
    seen = set()
    for subset in embedded:
        assert not set(fonts.LAYOUT_TABLES) & set(subset.keys()), sorted(subset.keys())
        assert {"glyf", "hmtx", "cmap", "post", "name"} <= set(subset.keys())
        source = _matplotlib_font(subset["name"].getDebugName(6))
        full, cut = source.getGlyphSet(), subset.getGlyphSet()
        for glyph in subset.getGlyphOrder()[1:]:  # .notdef: emptied by every subset
            assert subset["hmtx"][glyph] == source["hmtx"][glyph], glyph
            drawn, expected = RecordingPen(), RecordingPen()
            cut[glyph].draw(drawn)
            full[glyph].draw(expected)
            assert drawn.value == expected.value, glyph
            seen.add(glyph)
    # the text is still laid out with the full font (libraqm: GSUB ligatures, GPOS kerning)
    if has_policies("flood-count"):
        assert "fl" in seen  # flood-count's "fl" ligature


def test_layout_free_copy_keeps_every_other_table(tmp_path):
    from fontTools.ttLib import TTFont
    from matplotlib import font_manager

    source = font_manager.findfont("DejaVu Sans")
    copy = fonts.layout_free_copy(source, 0, str(tmp_path))
    assert copy != source and os.path.dirname(copy) == str(tmp_path)
    full, cut = TTFont(source, lazy=True), TTFont(copy, lazy=True)
    assert {"GSUB", "GPOS"} <= set(full.keys())
    assert set(cut.keys()) == set(full.keys()) - set(fonts.LAYOUT_TABLES)
    assert cut.getGlyphOrder() == full.getGlyphOrder()
    for tag in cut.keys():
        if tag not in ("GlyphOrder", "head"):
            assert cut.reader[tag] == full.reader[tag], tag
    stamp = os.stat(copy).st_mtime_ns
    assert fonts.layout_free_copy(source, 0, str(tmp_path)) == copy  # made once per folder
    assert os.stat(copy).st_mtime_ns == stamp
    bare = tmp_path / "bare"
    bare.mkdir()
    assert fonts.layout_free_copy(copy, 0, str(bare)) == copy  # nothing to leave out
    assert not os.listdir(bare)


def test_stripped_subsets_hook_is_undone_and_its_folder_removed():
    from matplotlib.backends import _backend_pdf_ps

    before = _backend_pdf_ps.get_glyphs_subset
    with fonts.stripped_subsets() as folder:
        assert _backend_pdf_ps.get_glyphs_subset is not before and os.path.isdir(folder)
    assert _backend_pdf_ps.get_glyphs_subset is before and not os.path.exists(folder)


def test_a_subset_is_cut_once_and_the_pdfs_are_the_same_bytes(doc, tmp_path, monkeypatch):
    from matplotlib.backends import _backend_pdf_ps

    names = charts.chart_names(doc)
    alone = {}
    for name in names:  # each chart by a drawing of its own: every subset cut afresh
        [path] = charts.write_charts(doc, str(tmp_path / name), formats=("pdf",), only=[name])
        alone[name] = open(path, "rb").read()
    cuts: list[tuple[str, frozenset]] = []
    real = _backend_pdf_ps.get_glyphs_subset

    def counting(fontfile, glyphs):
        cuts.append((os.fspath(fontfile), frozenset(glyphs)))
        return real(fontfile, glyphs)

    monkeypatch.setattr(_backend_pdf_ps, "get_glyphs_subset", counting)
    together = charts.write_charts(doc, str(tmp_path / "all"), formats=("pdf",), jobs=1)
    embedded = sum(len(_embedded_fonts(open(p, "rb").read())) for p in together)
    assert len(cuts) == len(set(cuts)) < embedded  # the repeated glyph sets were cut once
    for name, path in zip(names, together):
        assert open(path, "rb").read() == alone[name], name


def test_each_format_is_drawn_once_and_the_png_is_what_savefig_draws(doc, tmp_path, monkeypatch):
    import io

    from matplotlib.figure import Figure

    draws: list[str] = []
    real = Figure.draw

    def counting(self, renderer):
        draws.append(type(renderer).__name__)
        return real(self, renderer)

    monkeypatch.setattr(Figure, "draw", counting)
    paths = charts.write_charts(doc, str(tmp_path), only=["cycles-tiny"])
    assert len(draws) == 3, draws  # the layout (the PNG's raster), the PDF, the SVG
    monkeypatch.setattr(Figure, "draw", real)
    # the PNG is byte for byte what savefig would draw again, the SVG what it draws after a
    # layout kept by the "none" engine
    fig = charts.figure(doc, "cycles-tiny", "full")
    fig.set_dpi(style.DPI)
    fig.canvas.draw()
    fig.set_layout_engine("none")
    for fmt, metadata in (("png", {"Software": "shadowbench"}), ("svg", {"Date": None})):
        again = io.BytesIO()
        fig.savefig(again, format=fmt, dpi=style.DPI, metadata=metadata)
        assert again.getvalue() == open(paths[2 if fmt == "png" else 1], "rb").read(), fmt


# -- cache ---------------------------------------------------------------------------------------
def test_unchanged_charts_are_not_redrawn_and_stale_ones_never_served(doc, tmp_path, monkeypatch):
    folder = str(tmp_path / "c")
    first = charts.write_charts(doc, folder, formats=("svg",))
    stamps = {p: os.stat(p).st_mtime_ns for p in first}

    def no_drawing(*args, **kwargs):
        raise AssertionError("redrawn")

    with monkeypatch.context() as m:
        m.setattr(charts, "figure", no_drawing)
        assert charts.write_charts(doc, folder, formats=("svg",)) == first
        # the volatile part of the document is in no chart
        moved = copy.deepcopy(doc)
        moved["meta"]["volatile"]["started"] = "another day"
        assert charts.write_charts(moved, folder, formats=("svg",)) == first
    assert {p: os.stat(p).st_mtime_ns for p in first} == stamps

    drawn: list[str] = []
    real = charts.figure

    def counting(d, name, width):
        drawn.append(name)
        return real(d, name, width)

    monkeypatch.setattr(charts, "figure", counting)
    other = copy.deepcopy(doc)
    other["records"][0]["cycles"] += 1
    charts.write_charts(other, folder, formats=("svg",))  # other results: all redrawn
    assert sorted(drawn) == sorted(charts.chart_names(doc))
    drawn.clear()
    monkeypatch.setattr(cache, "code_digest", lambda: "other code")
    charts.write_charts(other, folder, formats=("svg",))  # other chart code: all redrawn
    assert sorted(drawn) == sorted(charts.chart_names(doc))
    drawn.clear()
    with open(first[0], "a", encoding="utf-8") as handle:  # a file changed since it was drawn
        handle.write("<!-- edited -->")
    charts.write_charts(other, folder, formats=("svg",))
    assert drawn == [os.path.basename(first[0])[:-4]]
    drawn.clear()
    charts.write_charts(other, folder, formats=("svg",), width="column")  # another width
    assert sorted(drawn) == sorted(charts.chart_names(doc))


def test_the_cache_key_covers_the_chart_code(tmp_path):
    here = os.path.dirname(os.path.abspath(charts.__file__))
    modules = {n for n in os.listdir(here) if n.endswith(".py")}
    assert {os.path.basename(p) for p in cache.sources()} == modules | {"costs.py"}
    source = tmp_path / "style.py"
    source.write_text("A = 1\n")
    before = cache.digest_of([str(source)], "3.11")
    assert cache.digest_of([str(source)], "3.12") != before  # another matplotlib
    source.write_text("A = 2\n")
    assert cache.digest_of([str(source)], "3.11") != before
    assert cache.chart_key("d", "cycles-x", "full") != cache.chart_key("d", "cycles-x", "column")
    # the libraries that write the files: the PDFs' font subsets, the PNGs' encoding
    assert [v.split("=")[0] for v in cache.library_versions().split()] == [
        "matplotlib", "fonttools", "pillow"]


def test_only_some_charts_leaves_the_others(doc, tmp_path):
    folder = str(tmp_path / "o")
    charts.write_charts(doc, folder, formats=("png",))
    before = sorted(os.listdir(folder))
    assert charts.write_charts(doc, folder, formats=("svg",), only=["traps"]) == [
        os.path.join(folder, "traps-tiny.svg")]
    assert sorted(os.listdir(folder)) == sorted(before + ["traps-tiny.svg"])
    charts.write_charts(doc, folder, formats=("svg",))  # a whole drawing prunes the rest
    assert not any(n.endswith(".png") for n in os.listdir(folder))


# -- the plot verb -------------------------------------------------------------------------------
def _results_folder(doc, tmp_path) -> str:
    folder = tmp_path / "r"
    folder.mkdir()
    results.write_json(doc, str(folder / "results.json"))
    return str(folder)


@pytest.mark.parametrize("options, what", [
    (["--format", "png,gif"], "--format"), (["--format", ""], "--format"),
    (["--width", "half"], "--width"), (["--only", "cycles-nope"], "cycles-nope"),
    (["--only", "sweep"], "no sweep chart")])
def test_plot_options_are_validated_before_anything_is_written(doc, tmp_path, options, what):
    folder = _results_folder(doc, tmp_path)
    out = tmp_path / "new"
    r = bench("plot", folder, "--out", str(out), *options, charts=True)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and what in r.stderr, r.stderr
    assert not out.exists()


def test_plot_into_an_impossible_folder_is_one_line(doc, tmp_path):
    folder = _results_folder(doc, tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = bench("plot", folder, "--out", str(blocker / "sub"), charts=True)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "is not a folder" in r.stderr  # (the output check, before anything is drawn)


def test_plot_formats_width_and_only(doc, tmp_path):
    folder = _results_folder(doc, tmp_path)
    r = bench("plot", folder, "--format", "svg,png", "--width", "column", charts=True)
    assert r.returncode == 0, r.stderr
    names = sorted(os.listdir(os.path.join(folder, "charts")))
    assert "cycles-tiny.svg" in names and not any(n.endswith(".pdf") for n in names)
    assert _png_size(os.path.join(folder, "charts", "cycles-tiny.png"))[0] == 990
    report = open(os.path.join(folder, "report.md"), encoding="utf-8").read()
    r = bench("plot", folder, "--only", "cycles-tiny", "--format", "pdf", charts=True)
    assert r.returncode == 0 and r.stdout.splitlines() == [
        os.path.join(folder, "charts", "cycles-tiny.pdf")]
    assert open(os.path.join(folder, "report.md"), encoding="utf-8").read() == report


# -- report.md -----------------------------------------------------------------------------------
def test_report_tables_have_the_spread_and_rows_by_cost(doc, tmp_path):
    text = report_text(doc, [], str(tmp_path))
    assert "min-max over 2 seeds" in text
    table = text.split("## tiny", 1)[1].split("\n\n")[1].splitlines()[2:]
    rows = [line.split(" | ")[0].lstrip("| ") for line in table]
    mean = {label: sum(r["cycles"] for r in doc["records"] if r["policy_label"] == label)
            for label in rows}
    assert rows == sorted(rows, key=lambda label: (mean[label], label))
    assert set(rows) == {r["policy_label"] for r in doc["records"]}
    assert "Baseline: " not in text and "baseline `always-emulate`" in text


def test_report_names_a_sweeps_baseline(sweep_doc, tmp_path):
    without = copy.deepcopy(sweep_doc)
    without["records"] = [r for r in sweep_doc["records"] if r["policy"] != "always-emulate"]
    for r in without["records"]:
        r["policy_label"] = r["policy"]
    two = copy.deepcopy(without)
    for r in copy.deepcopy(without["records"]):
        r["policy"] = r["policy_label"] = "acme"
        two["records"].append(r)
    text = report_text(two, [], str(tmp_path))
    assert "baseline `always-unshadow` (the first policy in chart order" in text


def test_report_embeds_each_chart_with_its_caption(doc, tmp_path):
    paths = charts.write_charts(doc, str(tmp_path / "charts"), formats=("svg",))
    text = report_text(doc, paths, str(tmp_path))
    assert "![cycles-tiny](charts/cycles-tiny.svg)" in text
    assert "guest tiny: pae=false, pages=6, passes=4, quick=false" in text
    json.dumps(text)
