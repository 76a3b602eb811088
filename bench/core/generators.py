"""The workloads' generators on the native core (issue 17): kscand, linear-scan and kmap in C.

``scan_stream`` gives, for a scan workload's timeline (workloads._scan.ScanWorkload._timeline),
a ``bench.core._core.ScanStream``: the same operation tuples in the same order, with the same
guest-memory reads at the same points (through the GuestMemory's own read methods, so a
recording's read log is unchanged), and, once it is exhausted, the Python objects' state written
back as the Python generator would have left it. The aging zone's lists and counts are the
Python arrays themselves, shared with the C stream, so they are current at every operation; the
zone's interval and the user processes' schedule and random generators are written back when
the stream ends. bench/core/_scan.c implements it;
the Python modules it mirrors are the readable reference, and tests/test_native_core.py requires
both to give identical streams, reads, sizes and final state.

The C stream runs only the exact built-in classes (AgingZone or AddressOrderScanner, UserRunner,
AccessStream, Kernel) with no inspection hook set (``record``, ``on_pass``); anything else, a
subclass included, runs the Python generator, as does every run without the native core.

``kmap_stream`` gives the kmap microbenchmark's stream (workloads/kmap.py KmapBench._ops) the same
way: its only reads are the fixmap pte compares of the kernel variants that make them (rhel3's
same-value shortcut, 2.6-proposed's flush-if-changed), and it leaves no Python state to write back.

``guest_stream`` gives a recorded guest's replay (bench/record/replay.py Replayer.ops) the same
way (bench/core/_guest.c): the recording's decompressed body read in C, the same guest-memory
reads (the table contents compared word by word, the walks of _translate, the kmap slot's pte),
and the Replayer's cr3, kmap slot and stats written back at the end (its vbase and level dicts
are updated as it goes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from bench import core

W_KSCAND, W_LINEAR, W_KMAP, W_GUEST = 0, 1, 2, 3


class Deferred:
    """An operation stream chosen when it is first iterated: ``native()`` if it gives one (not
    None), else ``python()``. ``iter()`` returns the chosen iterator itself, so its consumer
    (bench.recording's tee, an executor's loop) talks to the C stream directly; ``next()`` on
    this object works too, through it."""

    def __init__(self, native: Callable[[], Iterator[tuple] | None],
                 python: Callable[[], Iterator[tuple]]) -> None:
        self._native = native
        self._python = python
        self._it: Iterator[tuple] | None = None

    def __iter__(self) -> Iterator[tuple]:
        if self._it is None:
            self._it = self._native()
            if self._it is None:
                self._it = self._python()
        return self._it

    def __next__(self) -> tuple:
        return next(iter(self))
PATTERN_CODES = {"uniform": 0, "zipf": 1, "sequential": 2, "lackey": 3}
enabled = True
"""False: the Python generators run even with the native core (the differential tests)."""


def scan_stream(cpus: int, scanner: Any, runner: Any, sizes: dict[str, int]
                ) -> Iterator[tuple] | None:
    """The native stream of a scan timeline, or None when the Python generator must run."""
    module = core.load() if enabled else None
    if module is None:
        return None
    from bench.guest import KM_PTE2, KMAP_PROT
    from workloads._kmap import KMAP_GAP, Kernel
    from workloads._scan import VISIT_GAP
    from workloads._users import AccessStream, UserRunner
    from workloads.kscand import (MAX_AGE, MAX_AGING_INTERVAL, MIN_AGING_INTERVAL,
                                  AgingZone)
    from workloads.linear_scan import AddressOrderScanner

    kind = type(scanner)
    if (kind is not AgingZone and kind is not AddressOrderScanner) or scanner.record \
            or scanner.on_pass is not None or type(runner) is not UserRunner \
            or type(scanner.kernel) is not Kernel \
            or any(type(s) is not AccessStream for s in runner.streams):
        return None
    kernel = scanner.kernel
    vaddr, pte_kva, pte_gpa, _flush, clear = kernel._slot(0, KM_PTE2)
    spec: dict[str, Any] = {
        "workload": W_KSCAND if kind is AgingZone else W_LINEAR,
        "jiffies": sizes["jiffies"], "cpus": cpus, "pae": int(kernel.pae),
        "lowmem_pages": kernel.lowmem_pages, "slot_vaddr": vaddr, "slot_pte_kva": pte_kva,
        "slot_pte_gpa": pte_gpa, "kmap_prot": KMAP_PROT, "skip_same": int(kernel.skip_same),
        "check_same": int(kernel.skip_same or kernel.flush_if_changed),
        "map_flush": int(kernel.map_flush), "kmap_gap": KMAP_GAP, "visit_gap": VISIT_GAP,
        "clear": list(clear),
        "cr3s": list(runner.cr3s), "vaddrs": list(runner.vaddrs),
        "cpu_procs": [list(p) for p in runner.cpu_procs], "per_jiffy": runner.per_jiffy,
        "timeslice": runner.timeslice, "turn": list(runner.turn), "ran": list(runner.ran),
        "carry": [float(c) for c in runner.carry], "loaded": list(runner.loaded),
        "streams": [_access_spec(s) for s in runner.streams],
    }
    um = scanner.um
    if kind is AgingZone:
        spec.update(nxt=scanner.nxt, prv=scanner.prv, count=scanner.count,
                    base=scanner.base, quirk=int(scanner.quirk),
                    age_interval=scanner.age_interval, age_next=scanner.age_next,
                    need_scan=scanner.need_scan, kachunk_every=scanner.kachunk_every,
                    pte_gpa=um.pte_gpa, chain=um.chain, shared_pages=um.shared_pages,
                    mappings=um.mappings, pages=um.pages, cache_pages=um.cache_pages,
                    shared_cache_pages=um.shared_cache_pages, max_age=MAX_AGE,
                    min_interval=MIN_AGING_INTERVAL, max_interval=MAX_AGING_INTERVAL)
    else:
        spec.update(ptes=list(um.ptes), shared_from=list(um.shared_from),
                    first=scanner.first, interval=scanner.interval)

    gauss_next = [s.rng.getstate()[2] for s in runner.streams]  # never drawn: kept as it is

    def done(state: dict[str, Any]) -> None:
        """The Python objects as the Python generator leaves them at its end."""
        runner.turn[:] = state["turn"]
        runner.ran[:] = state["ran"]
        runner.loaded[:] = state["loaded"]
        runner.carry[:] = state["carry"]
        for stream, rng_state, pos, gauss in zip(runner.streams, state["rng"], state["pos"],
                                                 gauss_next):
            stream.rng.setstate((rng_state[0], rng_state[1], gauss))
            if stream.kind in ("sequential", "lackey"):
                stream.pos = pos
        if kind is AgingZone:
            scanner.age_interval = state["age_interval"]
            scanner.age_next = state["age_next"]
            scanner.need_scan = state["need_scan"]

    return module.ScanStream(spec, kernel.mem, sizes, done)


def _access_spec(stream: Any) -> dict[str, Any]:
    """One process's AccessStream for the C stream (its generator's state taken as it is now)."""
    spec: dict[str, Any] = {"kind": PATTERN_CODES[stream.kind], "state": stream.rng.getstate(),
                            "pages": stream.pages, "pos": stream.pos,
                            "write_fraction": float(stream.write_fraction)}
    if stream.kind == "zipf":
        spec.update(cdf=stream.cdf, stride=stream.stride, shift=stream.shift)
    elif stream.kind == "lackey":
        spec.update(addrs=stream.addrs, writes=stream.writes)
    return spec


def kmap_stream(kernel: Any, cpus: int, vaddrs: list[int], ptes: list[int], ntables: int,
                per_table: int, iterations: int, sizes: dict[str, int]
                ) -> Iterator[tuple] | None:
    """The native stream of KmapBench._ops on ``kernel`` (a workloads._kmap.Kernel), or None
    when the Python generator must run."""
    module = core.load() if enabled else None
    if module is None:
        return None
    from bench.guest import KM_PTE2, KMAP_PROT
    from workloads._kmap import KMAP_GAP, Kernel

    if type(kernel) is not Kernel:
        return None
    slots: list[int] = []
    clear: list[tuple] = []
    clear_at = [0]
    for cpu in range(cpus):
        vaddr, pte_kva, pte_gpa, _flush, unmap = kernel._slot(cpu, KM_PTE2)
        slots += [vaddr, pte_kva, pte_gpa]
        clear += unmap
        clear_at.append(len(clear))
    spec: dict[str, Any] = {
        "workload": W_KMAP, "cpus": cpus, "pae": int(kernel.pae),
        "lowmem_pages": kernel.lowmem_pages, "kmap_prot": KMAP_PROT,
        "skip_same": int(kernel.skip_same),
        "check_same": int(kernel.skip_same or kernel.flush_if_changed),
        "map_flush": int(kernel.map_flush), "kmap_gap": KMAP_GAP, "tables": ntables,
        "ptes_per_table": per_table, "iterations": iterations, "vaddrs": list(vaddrs),
        "ptes": list(ptes), "slots": slots, "clear": clear, "clear_at": clear_at,
    }
    return module.ScanStream(spec, kernel.mem, sizes, None)


def guest_stream(player: Any) -> Iterator[tuple] | None:
    """The native stream of ``player.ops()`` (a bench.record.replay.Replayer whose snapshot is
    loaded), or None when the Python generator must run."""
    module = core.load() if enabled else None
    if module is None:
        return None
    from bench.errors import BenchError
    from bench.ops import PAGE_OFFSET
    from bench.record import format as fmt
    from bench.record import replay

    if type(player) is not replay.Replayer or PAGE_OFFSET != 0xC0000000:
        return None
    events = fmt.EventStream()
    pte_va, pte_pa, slot = player.kmap if player.kmap is not None else (0, 0, 0)
    spec: dict[str, Any] = {
        "workload": W_GUEST, "chunks": player.rec.body(events), "events": events,
        "path": str(player.rec.path), "error": fmt.RecordingError, "bench_error": BenchError,
        "vbase": player.vbase, "level": player.level, "pae": int(player.pae),
        "skip": player.snapshot_events, "limit": player.limit, "cr3": player.cr3,
        "kmap_seen": int(player.kmap is not None), "kmap_pte_va": pte_va,
        "kmap_pte_pa": pte_pa, "kmap_slot": slot, "kmap_prot": replay.KMAP_PROT,
        "direct_end": replay.DIRECT_END, "insn_names": tuple(fmt.INSN_NAMES),
        "store_classes": tuple(sorted(replay.STORE_CLASSES)),
    }

    def done(state: dict[str, Any]) -> None:
        """The Replayer as its ops() generator leaves it."""
        player.cr3 = state["cr3"]
        player.kmap = state["kmap"]
        for key, n in state["stats"].items():
            player.stats[key] = player.stats.get(key, 0) + n

    return module.ScanStream(spec, player.guest.mem, {}, done)
