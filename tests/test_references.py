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
