"""`python -m bench inspect`: summarise a recording (events by kind and phase, rates, writers)."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.record import format


@dataclass
class Summary:
    header: dict[str, Any]
    kinds: Counter[str] = field(default_factory=Counter)
    by_phase: dict[int, Counter[str]] = field(default_factory=dict)
    phase_insns: dict[int, int] = field(default_factory=dict)
    writers: Counter[str] = field(default_factory=Counter)
    user_table_writers: Counter[str] = field(default_factory=Counter)
    stores_by_level: Counter[int] = field(default_factory=Counter)
    stores_by_insn: Counter[str] = field(default_factory=Counter)
    instructions: int = 0


def summarise(rec: format.Recording) -> Summary:
    """One pass over the events (RecordingError on a corrupt body)."""
    header = rec.header
    syms = header.get("symbols") or []
    addrs = [int(a) for a, _ in syms]
    names = [str(n) for _, n in syms]
    s = Summary(header)
    phase = 0
    start = last = None
    phase_start = 0
    for e in rec.events():
        name = format.KIND_NAMES[e.kind]
        s.kinds[name] += 1
        if e.icount and e.kind != format.TABLE and e.kind != format.UNTABLE:
            if start is None:
                start = e.icount
            last = e.icount
        if e.kind == format.MARK:
            if phase:
                s.phase_insns[phase] = s.phase_insns.get(phase, 0) + e.icount - phase_start
            phase, phase_start = e.aux, e.icount
        s.by_phase.setdefault(phase, Counter())[name] += 1
        if e.kind == format.STORE:
            i = bisect.bisect_right(addrs, e.pc) - 1
            sym = names[i] if i >= 0 else f"{e.pc:#x}"
            s.writers[sym] += 1
            s.stores_by_level[e.aux] += 1
            s.stores_by_insn[format.INSN_NAMES[e.insn] if e.insn < len(format.INSN_NAMES)
                             else str(e.insn)] += 1
            if e.aux == 1 and not (e.va >= 0xC0000000 and e.va - 0xC0000000 < 0x30000000):
                s.user_table_writers[sym] += 1
    if start is not None and last is not None:
        s.instructions = last - start
    return s


def _phase_name(header: dict[str, Any], phase: int) -> str:
    phases = header.get("phases") or []
    if phase == 0:
        return "start"
    return phases[phase - 1] if 0 < phase <= len(phases) else f"phase {phase}"


def render(s: Summary, top: int = 10) -> str:
    h = s.header
    prov = h.get("provenance", {})
    lines = [f"recording: {prov.get('scenario')} on {prov.get('kernel_package')} "
             f"{prov.get('kernel_version')} ({h.get('arch')}, {h.get('paging_levels')}-level "
             f"tables), {prov.get('qemu')}",
             f"guest: {prov.get('guest_memory_mb')} MB, {prov.get('vcpus')} vCPU, cmdline "
             f"{prov.get('guest_cmdline')!r}; -icount {'yes (deterministic)' if prov.get('icount') else 'no (not deterministic)'}",
             f"instructions recorded: {s.instructions:,}", ""]
    per = 1e9 / s.instructions if s.instructions else 0.0
    lines.append(f"{'kind':<10}{'events':>12}{'per 1e9 insns':>16}")
    for kind in format.KIND_NAMES:
        n = s.kinds.get(kind, 0)
        lines.append(f"{kind:<10}{n:>12,}{n * per:>16,.0f}")
    lines.append("")
    phases = sorted(s.by_phase)
    lines.append("by phase: " + ", ".join(
        f"{_phase_name(h, p)} ({s.phase_insns.get(p, 0):,} insns)" for p in phases))
    lines.append(f"  {'':<8}" + "".join(f"{_phase_name(h, p)[:13]:>14}" for p in phases))
    for kind in format.KIND_NAMES:
        if s.kinds.get(kind):
            lines.append(f"  {kind:<8}" + "".join(f"{s.by_phase[p].get(kind, 0):>14,}"
                                                   for p in phases))
    lines.append("")
    lines.append("stores by table level: " + ", ".join(
        f"level {lvl}: {n:,}" for lvl, n in sorted(s.stores_by_level.items())))
    lines.append("stores by instruction: " + ", ".join(
        f"{k} {n:,}" for k, n in s.stores_by_insn.most_common()))
    lines.append("")
    lines.append(f"top page-table writers (kernel functions):")
    for sym, n in s.writers.most_common(top):
        lines.append(f"  {n:>10,}  {sym}")
    lines.append("top writers of pte tables outside the direct map (HIGHPTE kmaps, fixmap):")
    for sym, n in s.user_table_writers.most_common(top):
        lines.append(f"  {n:>10,}  {sym}")
    proof = h.get("proof", {})
    lines.append("")
    lines.append("scenario proof (checked): " + ", ".join(
        f"{k} {v:,}" for k, v in (proof.get("checked") or {}).items()))
    out = proof.get("scenario_output") or {}
    if out:
        lines.append("scenario output: " + ", ".join(f"{k}={v}" for k, v in out.items()))
    return "\n".join(lines)
