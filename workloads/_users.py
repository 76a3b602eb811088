"""User processes: their access patterns (uniform, zipf, sequential, lackey:PATH), the lackey trace
reader, and the per-CPU round-robin scheduler that turns them into guest operations.

A user access is a LOAD or STORE at a user virtual address: the executors' hardware walk sets
the pte's accessed bit (and dirty bit on a store), which is what the next accessed-bit scan
finds. Switching a CPU to a different process's mm loads cr3 (switch_mm, prev != next, R3
include/asm-i386/mmu_context.h; notes section 7); a kernel thread (kscand) borrows the running
mm and returning to the same mm loads nothing.
"""

from __future__ import annotations

import bisect
import math
import os
import random
from array import array
from itertools import accumulate

from bench.errors import BenchError
from bench.ops import CR3, LOAD, STORE

PATTERNS: tuple[str, ...] = ("uniform", "zipf", "sequential", "lackey:PATH")
_LACKEY_KINDS = {"L": 0, "S": 1, "M": 1}


def check_pattern(spec: str) -> str | None:
    """Param check for an access pattern name."""
    if spec in ("uniform", "zipf", "sequential"):
        return None
    if spec.startswith("lackey:"):
        path = spec[len("lackey:"):]
        if not path:
            return "lackey: needs a trace file path (lackey:PATH)"
        if os.path.isdir(path):
            return f"lackey trace {path!r} is a folder, not a file"
        if not os.path.isfile(path):
            return f"lackey trace file {path!r} does not exist"
        return None
    return "must be one of " + ", ".join(PATTERNS)


def lackey_path(spec: str) -> str | None:
    """The trace file an access pattern names (``lackey:PATH``), else None: its contents enter
    the cell cache's key (bench.params.Param.input_file)."""
    return spec[len("lackey:"):] if spec.startswith("lackey:") else None


def read_lackey(path: str) -> tuple[array, bytearray]:
    """The data accesses of a ``valgrind --tool=lackey --trace-mem=yes`` trace.

    Returns (addresses, writes): ``L`` is a load, ``S`` a store and ``M`` a modify (counted as a
    write); instruction fetches (``I``) and valgrind's ``==pid==`` lines are skipped (format in
    docs/workloads.md, User processes). A malformed line is a BenchError naming file and line.
    """
    addrs = array("Q")
    writes = bytearray()
    try:
        handle = open(path, encoding="ascii", errors="replace")
    except OSError as e:
        raise BenchError(f"cannot read lackey trace {path}: {e.strerror}") from None
    with handle:
        for lineno, line in enumerate(handle, 1):
            text = line.rstrip("\n")
            if not text.strip() or text.startswith("==") or text.startswith("--"):
                continue
            kind = text[:2].strip() if text[:1] == " " else text[:1]
            body = text[2:] if text[:1] == " " else text[1:]
            addr_s, comma, size_s = body.strip().partition(",")
            ok = comma and (kind == "I" or kind in _LACKEY_KINDS)
            if ok:
                try:
                    addr = int(addr_s, 16)
                    size = int(size_s)
                except ValueError:
                    ok = False
                else:
                    ok = 0 <= addr < 1 << 64 and size > 0  # valgrind prints 64-bit addresses
            if not ok:
                raise BenchError(f"{path}:{lineno}: malformed lackey line {text[:60]!r} (expected "
                                 "'I  ADDR,SIZE', ' L|S|M ADDR,SIZE' or '==PID== ...')")
            if kind != "I":
                addrs.append(addr)
                writes.append(_LACKEY_KINDS[kind])
    if not addrs:
        raise BenchError(f"{path}: lackey trace has no data accesses (L, S or M lines)")
    return addrs, writes


class AccessStream:
    """One process's page choices: ``take(n)`` -> n tuples (page index, offset, is_write).

    - uniform: every mapped page equally likely;
    - zipf: page popularity ~ 1/rank**s, the ranks scattered over the address space by a fixed
      permutation (rank * stride + shift mod pages, stride coprime to pages);
    - sequential: the pages in address order, cyclically;
    - lackey: the trace's data addresses in order, folded into the mapped pages
      (page = (addr >> 12) mod pages, offset = addr & 0xFFC), cyclically, each process starting
      at its own point of the trace.
    Writes: the trace's S/M lines for lackey, else a ``write_fraction`` of the accesses.
    """

    def __init__(self, spec: str, rng: random.Random, pages: int, write_fraction: float,
                 zipf_s: float, start: float, trace: tuple[array, bytearray] | None,
                 cdf_cache: dict) -> None:
        self.kind = spec.split(":", 1)[0]
        self.rng = rng
        self.pages = pages
        self.write_fraction = write_fraction
        self.pos = int(start * pages)
        if self.kind == "zipf":
            key = (pages, zipf_s)
            if key not in cdf_cache:
                cdf_cache[key] = array("d", accumulate(1.0 / (r + 1) ** zipf_s
                                                       for r in range(pages)))
            self.cdf = cdf_cache[key]
            stride = rng.randrange(1, pages) if pages > 1 else 1
            while math.gcd(stride, pages) != 1:
                stride += 1
            self.stride, self.shift = stride, rng.randrange(pages)
        elif self.kind == "lackey":
            assert trace is not None
            self.addrs, self.writes = trace
            self.pos = int(start * len(self.addrs))

    def take(self, n: int) -> list[tuple[int, int, bool]]:
        rng, pages, wf = self.rng, self.pages, self.write_fraction
        rand = rng.random
        kind = self.kind
        if kind == "uniform":
            return [(int(rand() * pages), 0, rand() < wf) for _ in range(n)]
        if kind == "zipf":
            cdf, total, stride, shift = self.cdf, self.cdf[-1], self.stride, self.shift
            out = []
            for _ in range(n):
                rank = bisect.bisect_left(cdf, rand() * total)
                if rank >= pages:
                    rank = pages - 1
                out.append(((rank * stride + shift) % pages, 0, rand() < wf))
            return out
        if kind == "sequential":
            pos = self.pos
            self.pos = pos + n
            return [((pos + i) % pages, 0, rand() < wf) for i in range(n)]
        addrs, writes = self.addrs, self.writes
        length = len(addrs)
        pos = self.pos
        self.pos = (pos + n) % length
        out = []
        for i in range(n):
            j = (pos + i) % length
            a = addrs[j]
            out.append((((a >> 12) % pages), a & 0xFFC, bool(writes[j])))
        return out


class UserRunner:
    """The user processes on each CPU: round-robin with a fixed timeslice, ``rate`` accesses per
    CPU-second. Process q runs on CPU q mod cpus (a deterministic placement)."""

    def __init__(self, cr3s: list[int], vaddrs: list[array], streams: list[AccessStream],
                 cpus: int, rate: float, hz: int, timeslice: int, initial_cr3: list[int]) -> None:
        self.cr3s = cr3s
        self.vaddrs = vaddrs
        self.streams = streams
        self.cpu_procs = [[q for q in range(len(cr3s)) if q % cpus == c] for c in range(cpus)]
        self.per_jiffy = rate / hz
        self.timeslice = timeslice
        self.turn = [0] * cpus
        self.ran = [0] * cpus
        self.carry = [0.0] * cpus
        self.loaded = list(initial_cr3)

    def jiffy(self, cpu: int) -> list[tuple]:
        """The operations of one jiffy of user time on ``cpu`` (advancing its schedule)."""
        procs = self.cpu_procs[cpu]
        if not procs:
            return []
        ops: list[tuple] = []
        if self.ran[cpu] >= self.timeslice:
            self.ran[cpu] = 0
            self.turn[cpu] = (self.turn[cpu] + 1) % len(procs)
        self.ran[cpu] += 1
        q = procs[self.turn[cpu]]
        cr3 = self.cr3s[q]
        if self.loaded[cpu] != cr3:
            self.loaded[cpu] = cr3
            ops.append((CR3, cpu, cr3, 0, 0, "mov-cr3"))
        want = self.per_jiffy + self.carry[cpu]
        n = int(want)
        self.carry[cpu] = want - n
        if n:
            va = self.vaddrs[q]
            pid = q + 1
            for idx, off, write in self.streams[q].take(n):
                if write:
                    ops.append((STORE, cpu, va[idx] | off, 4, pid, "mov"))
                else:
                    ops.append((LOAD, cpu, va[idx] | off, 4, 0, "mov"))
        return ops

