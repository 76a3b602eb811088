"""report.md: the run's provenance, a summary table per workload, a comparison and the charts."""

from __future__ import annotations

import os
from typing import Any

from bench import stats
from bench.files import atomic_write_text

REPORT_MD = "report.md"


def report_text(doc: dict[str, Any], charts: list[str], folder: str) -> str:
    meta = doc["meta"]
    profile = meta["cost_profile"]
    vol = meta.get("volatile", {})
    lines = ["# shadowbench results", ""]
    if not doc["complete"]:
        failed = any(n.startswith("stopped because a cell raised") for n in meta.get("notes", []))
        then = ("A cell raised (see the note below and failure.txt); fix it, then rerun the "
                "same command to resume." if failed else "Rerun the same command to resume.")
        lines += [f"**Partial run: {meta['cells_done']} of {meta['cells_expected']} cells "
                  f"finished. {then}**", ""]
    lines += [
        f"- project version {meta['project_version']}, git commit {meta.get('git_commit') or 'none'}",
        f"- cost profile `{profile['name']}`: {profile['cpu']}"
        + (f" (re-priced from `{meta['repriced_from']}`)" if meta.get("repriced_from") else ""),
        f"- seeds: {', '.join(str(s) for s in meta['seeds'])}",
        f"- command: `{' '.join(vol.get('command', []))}`" if vol.get("command") else "- command: -",
        f"- started {vol.get('started', '-')}, host {vol.get('host', {}).get('hostname', '-')}",
    ]
    lines += [f"- note: {n}" for n in meta.get("notes", [])]
    lines += ["", "Columns are means over seeds. Overhead is simulated cycles over native cycles; "
              "opt ratio is the cycles of the policy's decisions over the offline optimum's.", ""]
    for wl, rows in stats.summary_rows(doc["records"]).items():
        lines += [f"## {wl}", "", stats.markdown_table(list(stats.SUMMARY_COLUMNS),
                                                       [stats.format_row(r) for r in rows]), ""]
        for path in charts:
            name = os.path.basename(path)
            if path.endswith(".png") and name in (f"cycles-{_slug(wl)}.png", f"traps-{_slug(wl)}.png"):
                lines += [f"![{name}]({os.path.relpath(path, folder)})", ""]
    if doc["records"] and len({r["policy_label"] for r in doc["records"]}) > 1:
        lines += ["## Paired comparison", "", "```", stats.compare_text(doc, None).rstrip(), "```", ""]
    others = [p for p in charts if p.endswith(".png") and not os.path.basename(p).startswith(("cycles-", "traps-"))]
    if others:
        lines += ["## Charts", ""]
        lines += [f"![{os.path.basename(p)}]({os.path.relpath(p, folder)})" for p in others]
        lines.append("")
    lines += ["Charts are regenerated from results.json alone by "
              "`python -m bench plot results.json`.", ""]
    return "\n".join(lines)


def _slug(text: str) -> str:
    from bench.plots import slug

    return slug(text)


def write_report(doc: dict[str, Any], charts: list[str], folder: str) -> str:
    path = os.path.join(folder, REPORT_MD)
    atomic_write_text(path, report_text(doc, charts, folder))
    return path
