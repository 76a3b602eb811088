"""Which charts need drawing: a chart is redrawn unless the folder's manifest records it under
the same key and its file still has the recorded SHA-256.

The key covers everything a chart is made from: the results document (without
``meta.volatile``, which no chart shows), the source of the chart code (every module of
bench.charts and bench/costs.py), the versions of the libraries that write the files
(matplotlib; fontTools, which cuts the PDFs' font subsets; Pillow, which encodes the PNGs), the
chart's name and its width. So a
chart is never served from other results or other code; a file edited or replaced since it was
drawn is drawn again.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from bench.files import atomic_write_text

MANIFEST = ".charts-cache.json"
_CODE: list[str] = []


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sources() -> list[str]:
    """The files the charts are drawn by: every module of bench.charts and bench/costs.py."""
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(os.path.join(here, n) for n in os.listdir(here) if n.endswith(".py"))
    return found + [os.path.join(os.path.dirname(here), "costs.py")]


def digest_of(paths: list[str], salt: str) -> str:
    h = hashlib.sha256(salt.encode())
    for path in paths:
        with open(path, "rb") as handle:
            h.update(os.path.basename(path).encode() + b"\0" + handle.read() + b"\0")
    return h.hexdigest()


LIBRARIES: tuple[str, ...] = ("matplotlib", "fonttools", "pillow")
"""The distributions whose versions a chart's bytes depend on."""


def library_versions() -> str:
    from importlib.metadata import version

    return " ".join(f"{name}={version(name)}" for name in LIBRARIES)


def code_digest() -> str:
    """SHA-256 over the chart code's sources and library_versions() (once per process)."""
    if not _CODE:
        _CODE.append(digest_of(sources(), library_versions()))
    return _CODE[0]


def document_digest(doc: dict[str, Any]) -> str:
    stable = dict(doc, meta={k: v for k, v in doc["meta"].items() if k != "volatile"})
    return _sha(json.dumps(stable, sort_keys=True, allow_nan=False).encode())


def chart_key(document: str, name: str, width: str) -> str:
    return _sha("\0".join((code_digest(), document, name, width)).encode())


def file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return _sha(handle.read())
    except OSError:
        return None


def load(folder: str) -> dict[str, Any]:
    """The manifest ``{chart name: {"key", "files": {format: sha256}}}`` (empty if unreadable)."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def fresh(manifest: dict[str, Any], folder: str, name: str, key: str, fmt: str) -> bool:
    entry = manifest.get(name)
    if not isinstance(entry, dict) or entry.get("key") != key:
        return False
    files = entry.get("files")
    recorded = files.get(fmt) if isinstance(files, dict) else None
    return recorded is not None and file_digest(os.path.join(folder, f"{name}.{fmt}")) == recorded


def save(folder: str, manifest: dict[str, Any]) -> None:
    atomic_write_text(os.path.join(folder, MANIFEST),
                      json.dumps(manifest, indent=1, sort_keys=True) + "\n")
