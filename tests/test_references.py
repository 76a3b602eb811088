"""Every document a user is pointed to (by `list`, a cost profile's sources) is in the project."""

from __future__ import annotations

import json
import os
import re

from bench import costs
from bench.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = re.compile(r"[\w./-]*[\w-]+\.md\b")


def _unresolved(text: str) -> list[str]:
    return sorted({ref for ref in REFERENCE.findall(text)
                   if not os.path.isfile(os.path.join(ROOT, ref))})


def test_list_cites_only_documents_in_the_project(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert ".md" in out
    assert _unresolved(out) == []


def test_cost_profile_sources_cite_only_documents_in_the_project():
    text = json.dumps([p.as_dict() for p in costs.PROFILES.values()])
    assert "docs/costs.md" in text
    assert _unresolved(text) == []
    with open(os.path.join(ROOT, "bench", "costs.py"), encoding="utf-8") as handle:
        assert _unresolved(handle.read()) == []


def test_the_docs_cite_only_documents_in_the_project():
    texts = {"README.md": open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()}
    for name in os.listdir(os.path.join(ROOT, "docs")):
        if name.endswith(".md"):
            with open(os.path.join(ROOT, "docs", name), encoding="utf-8") as handle:
                texts[f"docs/{name}"] = handle.read()
    for name, text in texts.items():
        assert "../shared" not in text and "../seed" not in text, name
        cited = [ref for ref in re.findall(r"docs/[\w.-]+\.md", text)]
        assert all(os.path.isfile(os.path.join(ROOT, ref)) for ref in cited), name


def test_every_package_folder_is_installed():
    """pip installs only the packages pyproject.toml lists: a subpackage missing there works from
    the checkout and breaks an installed copy (bench.charts was missing once)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {p.parent.relative_to(root).as_posix().replace("/", ".")
             for top in ("bench", "policies", "workloads") for p in (root / top).rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
