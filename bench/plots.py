"""The charts' public entry points (the drawing lives in bench.charts): ``write_charts`` draws
every chart of a results document into a folder, ``keep_drawn`` keeps those already drawn and
draws none, ``slug`` turns a label into a file name."""

from __future__ import annotations

from bench.charts import (FORMATS, WIDTHS, chart_names, keep_drawn, parse_formats, slug,
                          write_charts)

__all__ = ["FORMATS", "WIDTHS", "chart_names", "keep_drawn", "parse_formats", "slug",
           "write_charts"]
