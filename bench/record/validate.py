"""The synthetic workloads against the real kernel, per event (docs/real-guests.md, "Validation").

``python -m bench.record.validate [--out DIR]`` runs each shipped recording (through the replay,
bench.record.replay) and the synthetic workloads closest to it natively, classifies every write
that reaches a page table by the table it lands in, and prints (and with ``--out`` writes as
validation.md and validation.json) one table: page-table stores per kmap mapping, the fixmap's
share of the stores, accessed-bit clears per page scanned, user-pte writes by instruction class,
CR3 loads and INVLPGs per 1e9 instructions.

Definitions (the same code for both sides):

- a *page-table store* is a write operation (STORE, BTR, BTS) whose target frame is a leaf or
  directory table; a *fixmap* store one to the kernel pte table holding the kmap slots (the
  synthetic guest's ``fixmap_pt``; in a recording every level-1 table mapping 0xFF000000 and
  up, where 6.1's fixmap and its kmap_local slots are); a *user-pte* write one to a level-1
  table mapping user addresses;
- a *kmap mapping* is a fixmap store after which the entry is present and before which it was
  not present or mapped another frame (PAE: the low half's store, after the high half's; RHEL3's
  kunmap_atomic leaves the entry present, so its next kmap changes the frame; a remap of the
  frame already mapped is not counted);
- an *accessed-bit clear* is a write that leaves bit 5 of a present pte clear where it was set;
  *pages scanned*: the recording's /proc/vmstat ``pgscan`` proof (reclaim), the synthetic
  scan's pages times passes;
- *instructions*: a recording's instruction count (first to last event); for a synthetic
  workload its operations plus the instructions its gaps name (a gap of unknown length counts
  0, so the synthetic rates per 1e9 instructions are upper bounds).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter
from typing import Any

from bench.machine.native import NativeMachine
from bench.machine.paging import walk
from bench.ops import BTR, BTS, COMPUTE, CR3, INVLPG, PAGE_OFFSET, STORE
from bench.registry import make_workload

FIXMAP_FROM = 0xFF000000
SYNTHETIC: tuple[tuple[str, dict[str, Any]], ...] = (
    ("kscand", {}),
    ("linear-scan", {}),
    ("kmap", {"kernel": "2.6.20", "pae": True}),
    ("kmap", {"kernel": "2.6.20", "pae": False}),
    ("fork-exit", {"kernel": "2.6.20", "pae": True}),
    ("fork-exit", {"kernel": "2.6.20", "pae": False}),
)
"""The synthetic workloads held against the recordings: the scans (kscand, RHEL3's linear
accessed-bit scan), the kmap microbenchmark and fork/exit with 2.6.20's kmap_atomic, the closest
of the modelled kernels to 6.1's kmap_local (each map and unmap one set_pte / pte_clear)."""


class Classifier:
    """The native executor, counting each write that reaches a table by its table's class."""

    def __init__(self, run, kind_of: dict[int, str]) -> None:
        self.machine = NativeMachine(run.guest.mem, run.guest.mode, run.cr3s)
        self.mem, self.mode = run.guest.mem, run.guest.mode
        self.kind_of = kind_of  # frame -> "fixmap", "user", "kernel"
        self.pae = run.guest.mode.pae
        self.counts: Counter[str] = Counter()
        self.by_insn: Counter[str] = Counter()
        self.op: tuple = ()
        self.old = 0
        self.insns = 0

    def step(self, op) -> None:
        """Run ``op`` natively; a write that reaches a table frame is classified after it."""
        self.op = op
        kind = op[0]
        self.insns += op[4] if kind == COMPUTE else 1
        gpa = -1
        if kind == CR3:
            self.counts["cr3"] += 1
        elif kind == INVLPG:
            self.counts["invlpg"] += 1
        elif kind in (STORE, BTR, BTS):
            w = walk(self.mem, self.mode, self.machine.cr3[op[1]], op[2], True,
                     op[2] < PAGE_OFFSET, set_bits=False)
            if w is not None:  # the write's own walk (in the machine) translates it the same
                gpa = (w.gfn << 12) | (op[2] & 0xFFF)
                self.old = self.mem.read_entry(gpa & ~(self.mode.entry_size - 1), self.pae)
        self.machine.step(op)
        if gpa >= 0:
            self._written(gpa)

    def _written(self, gpa: int) -> None:
        cls = self.kind_of.get(gpa >> 12)
        if cls is None:
            return
        old = self.old
        self.counts["pt_stores"] += 1
        self.counts[f"{cls}_stores"] += 1
        now = self.mem.read_entry(gpa & ~(self.mode.entry_size - 1), self.pae)
        mask = self.mode.addr_mask
        if cls == "fixmap" and now & 1 and (not old & 1 or (old & mask) != (now & mask)):
            self.counts["kmap_mappings"] += 1
        if cls == "user":
            self.by_insn[self.op[5]] += 1
            if old & 1 and old & 0x20 and not now & 0x20:
                self.counts["accessed_clears"] += 1


def _measure(run, kind_of: dict[int, str]) -> Classifier:
    m = Classifier(run, kind_of)
    for op in run.ops:
        m.step(op)
    return m


def _synthetic_kinds(guest) -> dict[int, str]:
    kinds = {gfn: "kernel" for gfn in guest.mem.tables}
    for proc in guest.processes:
        for gfn in proc.page_tables.values():
            kinds[gfn] = "user"
    kinds[guest.fixmap_pt] = "fixmap"
    return kinds


class _LiveKinds(dict):
    """A recording's frame classes, read from the replayer as its tables appear."""

    def __init__(self, player) -> None:
        super().__init__()
        self.player = player

    def get(self, gfn, default=None):  # type: ignore[override]
        level = self.player.level.get(gfn)
        if level is None:
            return default
        if level != 1:
            return "kernel"
        base = self.player.vbase[gfn]
        if base >= FIXMAP_FROM:
            return "fixmap"
        return "user" if base < PAGE_OFFSET else "kernel"


def _row(label: str, m: Classifier, insns: int, scanned: int | None) -> dict[str, Any]:
    c = m.counts
    per = 1e9 / insns if insns else 0.0
    maps = c["kmap_mappings"]
    user = sum(m.by_insn.values())
    return {
        "workload": label,
        "pt_stores": c["pt_stores"],
        "kmap_mappings": maps,
        "pt_stores_per_kmap": c["pt_stores"] / maps if maps else None,
        "fixmap_stores_per_kmap": c["fixmap_stores"] / maps if maps else None,
        "fixmap_share": c["fixmap_stores"] / c["pt_stores"] if c["pt_stores"] else None,
        "accessed_clears": c["accessed_clears"],
        "pages_scanned": scanned,
        "clears_per_page_scanned": c["accessed_clears"] / scanned if scanned else None,
        "user_pte_writes_by_insn": {k: v / user for k, v in sorted(m.by_insn.items())} if user
        else {},
        "instructions": insns,
        "cr3_per_1e9": c["cr3"] * per,
        "invlpg_per_1e9": c["invlpg"] * per,
        "cr3_per_1000_pt_stores": 1000 * c["cr3"] / c["pt_stores"] if c["pt_stores"] else None,
        "invlpg_per_1000_pt_stores": 1000 * c["invlpg"] / c["pt_stores"] if c["pt_stores"]
        else None,
        "instructions_known": label.startswith("real"),
    }


def measure_recording(name: str) -> dict[str, Any]:
    from bench.record import replay

    player = replay.Replayer(replay.resolve(name))
    from bench.workload import GuestRun

    run = GuestRun(player.guest, [player.cr3], player.ops())
    m = _measure(run, _LiveKinds(player))
    header = player.rec.header
    checked = (header.get("proof") or {}).get("checked") or {}
    scanned = checked.get("pgscan")
    icounts = [e.icount for e in player.rec.events() if e.kind == 6]
    insns = icounts[-1] - icounts[0] if len(icounts) > 1 else 0
    row = _row(f"real {name}", m, insns, int(scanned) if scanned else None)
    row["replay_stats"] = dict(sorted(player.stats.items()))
    return row


def measure_synthetic(name: str, params: dict[str, Any]) -> dict[str, Any]:
    run = make_workload(name, params).build(random.Random(0))
    m = _measure(run, _synthetic_kinds(run.guest))
    scanned = None
    if name in ("kscand", "linear-scan", "kmap"):
        passes = int(run.sizes.get("passes", 0)) or None
        pages = int(run.sizes.get("pages", 0)) or None
        scanned = pages * passes if pages and passes else None
    label = name + ("[" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + "]"
                    if params else "")
    return _row(f"synthetic {label}", m, m.insns, scanned)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ["workload", "pt stores", "stores per kmap map", "fixmap stores per map",
            "fixmap share", "A clears per page scanned", "user-pte writes by class",
            "CR3 per 1e9 insns", "INVLPG per 1e9 insns", "CR3 per 1k pt stores",
            "INVLPG per 1k pt stores"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * 5 + "---|" + "---:|" * 4]
    for r in rows:
        bound = "" if r["instructions_known"] else "≤ "
        classes = ", ".join(f"{k} {v:.0%}" for k, v in sorted(
            r["user_pte_writes_by_insn"].items(), key=lambda kv: -kv[1])) or "-"
        lines.append("| " + " | ".join([
            r["workload"], _fmt(r["pt_stores"]), _fmt(r["pt_stores_per_kmap"]),
            _fmt(r["fixmap_stores_per_kmap"]),
            "-" if r["fixmap_share"] is None else f"{r['fixmap_share']:.1%}",
            _fmt(r["clears_per_page_scanned"], 3), classes,
            bound + _fmt(r["cr3_per_1e9"], 0), bound + _fmt(r["invlpg_per_1e9"], 0),
            _fmt(r["cr3_per_1000_pt_stores"], 1), _fmt(r["invlpg_per_1000_pt_stores"], 1)]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.files import atomic_write_text
    from bench.record import replay

    parser = argparse.ArgumentParser(prog="python -m bench.record.validate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder to write validation.md and validation.json to")
    args = parser.parse_args(argv)
    if args.out and not os.path.isdir(args.out):
        print(f"bench: error: --out {args.out}: not a folder", file=sys.stderr)
        return 2
    rows = [measure_recording(name) for name in sorted(replay.shipped())]
    rows += [measure_synthetic(name, params) for name, params in SYNTHETIC]
    text = markdown(rows) + "\n\nWhat the replay approximated (bench.record.replay.Replayer.stats):\n\n" + \
        "\n".join(f"- {r['workload']}: " + ", ".join(f"{k} {v:,}" for k, v in
                                                  r["replay_stats"].items())
                  for r in rows if "replay_stats" in r)
    print(text)
    if args.out:
        atomic_write_text(os.path.join(args.out, "validation.md"), text + "\n")
        atomic_write_text(os.path.join(args.out, "validation.json"),
                          json.dumps(rows, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
