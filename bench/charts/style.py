"""The house style of every chart: colours, policy order, figure sizes, fonts, output formats.

Colours are fixed per name, never per position, so a policy or a cycle cause has the same
colour in every chart whichever others are present:

- cycle causes take the Okabe-Ito palette (Okabe and Ito, "Color Universal Design", 2008) and
  greys;
- built-in policies take Paul Tol's colour-blind-safe "muted" and "vibrant" schemes (Tol,
  "Colour Schemes", SRON/EPS/TN/09-002), one colour each, plus a hatch per family (none for
  KVM, ``//`` for Xen, ``..`` for the later answers and bounds) as a second cue;
- a policy label with parameters (``flood-count[variant=2.6.27]``) takes its policy's colour,
  lightened or darkened by a step chosen from the label's SHA-256, and on lines a marker
  chosen likewise (the policy itself: a circle);
- any other policy name (a third-party plug-in) takes a colour of Tol's "light" scheme chosen
  from the name's SHA-256, with the ``xx`` hatch.

Sizes are print sizes: a figure is 3.3 in (one column) or 7 in (full width) wide and every font
is at least 7 pt at that size. PNG is written at 300 dpi, SVG keeps its text as text
(``svg.fonttype = none``) and PDF embeds TrueType fonts (``pdf.fonttype = 42``; their subsets
without the layout tables, bench.charts.fonts).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

FORMATS: tuple[str, ...] = ("pdf", "svg", "png")
"""Every output format, in the order files are written."""
DPI = 300
WIDTHS: dict[str, float] = {"column": 3.3, "full": 7.0}
"""Figure widths in inches: one column of a two-column paper, or the full text width."""
MIN_FONT_PT = 7.0

FONTS: dict[str, Any] = {
    "font.size": 7, "axes.titlesize": 8, "axes.labelsize": 7, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "legend.fontsize": 7, "legend.title_fontsize": 7,
    "figure.titlesize": 8, "axes.linewidth": 0.6, "xtick.major.width": 0.6,
    "ytick.major.width": 0.6, "xtick.major.size": 2.5, "ytick.major.size": 2.5,
    "hatch.linewidth": 0.5, "lines.linewidth": 1.0, "patch.linewidth": 0.4,
    "svg.fonttype": "none", "svg.hashsalt": "shadowbench", "pdf.fonttype": 42,
    "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
}

# -- colours -----------------------------------------------------------------------------------
NATIVE_COLOUR = "#DDDDDD"
NATIVE_HATCH = "////"
CAUSE_COLOURS: dict[str, str] = {
    "emulated_pte_writes": "#0072B2",  # Okabe-Ito blue
    "extra_emulation": "#56B4E9",      # sky blue
    "hidden_faults": "#E69F00",        # orange
    "guest_faults": "#F0E442",         # yellow
    "unshadow": "#D55E00",             # vermillion
    "rebuild": "#CC79A7",              # reddish purple
    "unsync_resync": "#009E73",        # bluish green
    "invlpg_exits": "#000000",         # black
    "cr3_exits": "#777777",            # grey
    "tdp_walks": "#BBBBBB",            # light grey
}
CAUSE_LABELS: dict[str, str] = {
    "emulated_pte_writes": "emulated pte writes", "extra_emulation": "extra emulation",
    "hidden_faults": "hidden faults (#PF exits)", "guest_faults": "guest faults (reflected)",
    "unshadow": "unshadow + zap", "rebuild": "shadow page rebuild",
    "unsync_resync": "unsync / resync", "invlpg_exits": "invlpg exits", "cr3_exits": "cr3 exits",
    "tdp_walks": "2-D page walks",
}
UNKNOWN_CAUSE_COLOUR = "#444444"

FAMILIES: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("KVM", "", (
        ("always-emulate", "#332288"),      # Tol muted indigo
        ("always-unshadow", "#88CCEE"),     # cyan
        ("flood-count", "#44AA99"),         # teal
        ("per-page-flood", "#117733"),      # green
        ("accessed-clear", "#999933"),      # olive
        ("unsync", "#DDCC77"),              # sand
    )),
    ("Xen", "//", (
        ("xen-batch", "#CC6677"),           # rose
        ("xen-early-unshadow", "#882255"),  # wine
        ("xen-oos", "#AA4499"),             # purple
    )),
    ("later answers and bounds", "..", (
        ("ski-rental", "#EE7733"),          # Tol vibrant orange
        ("ski-rental-random", "#0077BB"),   # vibrant blue
        ("oracle", "#000000"),              # the optimum's own choices: black
        ("tdp", "#BBBBBB"),                 # hypothetical hardware: grey
    )),
)
"""Built-in policies by family, in chart order, with their colours; the family's hatch."""
POLICY_COLOURS: dict[str, str] = {n: c for _, _, members in FAMILIES for n, c in members}
POLICY_HATCHES: dict[str, str] = {n: h for _, h, members in FAMILIES for n, _ in members}
POLICY_RANK: dict[str, int] = {n: i for i, n in enumerate(POLICY_COLOURS)}
THIRD_PARTY_COLOURS: tuple[str, ...] = ("#77AADD", "#EE8866", "#EEDD88", "#FFAABB", "#99DDFF",
                                        "#44BB99", "#BBCC33", "#AAAA00")
"""Tol's "light" scheme (without its grey), for policies this project does not know."""
THIRD_PARTY_HATCH = "xx"
VARIANT_SHADES: tuple[float, ...] = (-0.45, 0.45, -0.25, 0.25, -0.6, 0.6)
"""How far a parameterised label's colour moves towards black (<0) or white (>0)."""


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _shade(colour: str, amount: float) -> str:
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    target = 255 if amount > 0 else 0
    mixed = [round(c + (target - c) * abs(amount)) for c in rgb]
    return "#" + "".join(f"{c:02X}" for c in mixed)


def policy_colour(name: str, label: str | None = None) -> str:
    """The colour of a policy (by its registered name) or of one of its labels."""
    base = POLICY_COLOURS.get(name)
    if base is None:
        base = THIRD_PARTY_COLOURS[_digest(name) % len(THIRD_PARTY_COLOURS)]
    if label is None or label == name:
        return base
    return _shade(base, VARIANT_SHADES[_digest(label) % len(VARIANT_SHADES)])


VARIANT_MARKERS: tuple[str, ...] = ("s", "^", "D", "v", "P", "X")


def policy_marker(name: str, label: str | None = None) -> str:
    """The marker of a policy's line: a circle for the policy itself, for a parameterised label
    one chosen from the label's SHA-256 (a second cue besides its shade)."""
    if label is None or label == name:
        return "o"
    return VARIANT_MARKERS[_digest(label + "/marker") % len(VARIANT_MARKERS)]


def policy_hatch(name: str) -> str:
    return POLICY_HATCHES.get(name, THIRD_PARTY_HATCH)


def family_of(name: str) -> str:
    for family, _, members in FAMILIES:
        if any(name == n for n, _ in members):
            return family
    return "others"


def family_spans(names: list[str]) -> list[tuple[str, int, int]]:
    """(family, first index, last index) of consecutive runs of one family in ``names``."""
    spans: list[tuple[str, int, int]] = []
    for i, name in enumerate(names):
        family = family_of(name)
        if spans and spans[-1][0] == family:
            spans[-1] = (family, spans[-1][1], i)
        else:
            spans.append((family, i, i))
    return spans


def mark_families(ax, names: list[str]) -> None:
    """Dotted lines between policy families along a categorical x axis (one slot per policy)
    and each family's name (shortened, or left out, where its span is too narrow) at the top of
    its span, inside the axes."""
    spans = family_spans(names)
    if len(spans) < 2:
        return
    fig = ax.get_figure()
    slot_pt = fig.get_figwidth() * 72 * ax.get_position().width / max(len(names), 1)
    for family, first, last in spans:
        if first:
            ax.axvline(first - 0.5, color="#999999", linewidth=0.5, linestyle=":")
        room = (last - first + 1) * slot_pt
        fits = [t for t in (family, SHORT_FAMILY.get(family, family))
                if len(t) * MIN_FONT_PT * 0.62 < room * 0.85]
        if fits:
            ax.text((first + last) / 2, 0.995, fits[0], ha="center", va="top",
                    transform=ax.get_xaxis_transform(), fontsize=MIN_FONT_PT, color="#555555")


SHORT_FAMILY = {"later answers and bounds": "later, bounds"}


def policy_patch(name: str, label: str):
    """A legend handle for a policy's bars (its colour and family hatch)."""
    from matplotlib.patches import Patch

    return Patch(facecolor=policy_colour(name, label), hatch=policy_hatch(name),
                 edgecolor="white", linewidth=0.2)


def cause_colour(cause: str) -> str:
    return CAUSE_COLOURS.get(cause, UNKNOWN_CAUSE_COLOUR)


def cause_label(cause: str) -> str:
    return CAUSE_LABELS.get(cause, cause.replace("_", " "))


def policy_sort_key(name: str, label: str) -> tuple[int, str, int, str]:
    """Family order for the built-in policies (KVM, Xen, later answers and bounds), then any
    other policy alphabetically; a policy's own label first, its parameterised labels after."""
    rank = POLICY_RANK.get(name, len(POLICY_RANK))
    return (rank, name if rank == len(POLICY_RANK) else "", 0 if label == name else 1, label)


def order_policies(pairs: list[tuple[str, str]]) -> list[str]:
    """Policy labels in chart order, from (policy name, label) pairs (duplicates dropped)."""
    return [label for name, label in sorted(set(pairs), key=lambda p: policy_sort_key(*p))]


# -- figures -----------------------------------------------------------------------------------
def pyplot():
    """matplotlib.pyplot on the Agg backend with the house fonts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(FONTS)
    return plt


def figure(width: str, height: float):
    """A figure of the named width and ``height`` inches, laid out by constrained layout."""
    plt = pyplot()
    fig = plt.figure(figsize=(WIDTHS[width], height), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.02)
    return fig


def keep_layout(fig) -> None:
    """After a draw has laid ``fig`` out, remove its layout engine, so that every format saved
    later keeps that layout and savefig does not draw the figure once more before each file
    just to run an engine (the placeholder engine ``"none"`` would still make it do that)."""
    import matplotlib

    with matplotlib.rc_context({"figure.autolayout": False,
                                "figure.constrained_layout.use": False}):
        fig.set_layout_engine(None)  # None under these settings: no engine at all


LEGEND_ROW_IN = 0.135
"""The height a legend row below a column-wide chart adds to the figure."""
LEGEND_HANDLE_PT = 22.0
"""A legend entry's width besides its text: handle, padding and column spacing."""


def text_width(fig, text: str, size: float = MIN_FONT_PT, bold: bool = False) -> float:
    """The width of ``text`` in points as the figure would draw it."""
    probe = fig.text(0, 0, text, fontsize=size, fontweight="bold" if bold else "normal")
    try:
        return probe.get_window_extent(fig.canvas.get_renderer()).width * 72 / fig.dpi
    finally:
        probe.remove()


def wrap(fig, text: str, width_pt: float, size: float = MIN_FONT_PT, bold: bool = False) -> str:
    """``text`` broken into lines at spaces so that each is at most ``width_pt`` wide."""
    lines: list[str] = []
    for word in text.split(" "):
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and text_width(fig, candidate, size, bold) <= width_pt:
            lines[-1] = candidate
        else:
            lines.append(word)
    return "\n".join(lines)


def legend(fig, handles: list, labels: list[str], width: str) -> float:
    """The legend outside the axes: at the right of a full-width figure; below a column one, in
    as many columns as its longest label leaves room for (the figure grows by its rows).
    Returns the width in points it takes from the right of the figure."""
    entry = max((text_width(fig, label) for label in labels), default=0.0) + LEGEND_HANDLE_PT
    if width == "full":
        fig.legend(handles, labels, loc="outside right upper", ncols=1,
                   handlelength=1.4, alignment="left")
        return entry + 4
    columns = max(1, min(len(labels), int((fig.get_figwidth() * 72 - 6) // entry)))
    rows = -(-len(labels) // columns)
    fig.set_figheight(fig.get_figheight() + rows * LEGEND_ROW_IN)
    fig.legend(handles, labels, loc="outside lower center", ncols=columns,
               handlelength=1.4, columnspacing=0.8)
    return 0.0


def titles(fig, ax, title: str, caption: str, right_pt: float = 0.0) -> None:
    """A short bold title on top of the figure and a caption line (configuration and what the
    marks mean) above the axes, both left-aligned and wrapped to the room they have
    (``right_pt``: what a legend takes at the right)."""
    inches = fig.get_figwidth()
    fig.suptitle(wrap(fig, title, inches * 72 - 6 - right_pt, 8, bold=True), x=0.01, ha="left",
                 fontweight="bold")
    ax.set_title(wrap(fig, caption, inches * 72 - AXES_LEFT_PT - right_pt), loc="left",
                 fontsize=MIN_FONT_PT, color="#333333")


AXES_LEFT_PT = 40.0
"""Room the y axis's label and tick labels take left of the axes (the caption starts there)."""


def headroom(ax, top: float, factor: float = 1.08) -> None:
    """y limits from 0 to ``factor`` times the tallest mark (which so never touches the frame)."""
    ax.set_ylim(0, top * factor if top > 0 else 1.0)


def ratio_ticks(low: float, high: float) -> list[float]:
    """Ticks for a log ratio axis spanning [low, high] that read naturally: 1, 2, 5, 10, ...
    (with 1.1, 1.2, 1.5, 3 too when that gives fewer than four), always including 1 when in
    range and leaving out a tick too close (under 12% of the axis) to the one below it."""
    ticks = _ticks(low, high, (1.0, 2.0, 5.0))
    return ticks if len(ticks) >= 4 else _ticks(low, high, (1.0, 1.1, 1.2, 1.5, 2.0, 3.0, 5.0))


def _ticks(low: float, high: float, steps: tuple[float, ...]) -> list[float]:
    candidates = set()
    for exponent in range(math.floor(math.log10(max(low, 1e-12))) - 1,
                          math.ceil(math.log10(high)) + 1):
        for s in steps:
            t = round(s * 10.0 ** exponent, 6)
            if low <= t <= high:
                candidates.add(t)
    gap = 0.12 * math.log(high / max(low, 1e-12))
    ticks = [1.0] if low <= 1.0 <= high else []
    for t in sorted(candidates):
        if all(abs(math.log(t / k)) >= gap for k in ticks):
            ticks.append(t)
    return sorted(ticks)


def ratio_text(value: float) -> str:
    """1x, 1.5x, 20x, 0.5x."""
    return f"{value:g}x"


def count_text(value: float, _pos: Any = None) -> str:
    """Counts on an axis: 0, 500, 20k, 1.5M."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:g}{suffix}"
    return f"{value:g}"


def short_workload(label: str, params: dict[str, Any] | None = None, lines: bool = True) -> str:
    """A workload label in lines for a crowded axis: ``kmap[kernel=rhel3,pae=false]`` becomes
    ``kmap`` / ``rhel3`` / ``pae=false`` (a text value alone, numbers and booleans as k=v), in
    lines or, with ``lines`` false, on one line."""
    name, _, rest = label.partition("[")
    if not rest:
        return label
    parts = [name]
    for piece in rest.rstrip("]").split(","):
        key, _, value = piece.partition("=")
        if params is not None and isinstance(params.get(key), str):
            parts.append(value)
        else:
            parts.append(piece)
    return "\n".join(parts) if lines else " ".join(parts)
