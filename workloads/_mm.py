"""User address spaces built at setup: processes, their anonymous and shared pages, their ptes.

Layout (a modelling choice, docs/workloads.md): ``pages`` highmem data pages (the zone kscand
ages). A fraction ``shared`` of them form SysV shared-memory segments, one per process, each
mapped at the same virtual address by ``mappings`` consecutive processes (k, k+1, ... mod P):
these pages have a pte_chain. The rest are private anonymous pages, split evenly, each process's
at consecutive addresses from PRIVATE_BASE. The processes fault their pages in chunk by chunk
(random chunk lengths of 1..64 pages, random process order), which fixes the physical
allocation order, the page-table allocation order (page tables come from highmem under
HIGHPTE) and the initial LRU order (lru_cache_add puts each new page at the head of age bucket
INITIAL_AGE, R3 mm/swap.c; notes section 2).

Page-cache pages (kscand's ``cache`` fraction; the other scan workloads pass 0): the first
round(cache * length) pages of every segment and of every process's private range are
file-backed rather than anonymous. In a segment they stand for shared library text and other
shared file mappings (several mappings: a pte_chain), in a private range for the program's own
text and privately mmap'd files (one mapping: PageDirect). The rest of a segment is SysV shm
(shared writable tmpfs, which page_anon counts as anon) and the rest of a private range is
anonymous memory. The choice takes no randomness, so the fault order, the physical layout and
the access streams do not depend on ``cache``; only the LRU list a page lives on does.

Per-page state lives in arrays so the guest scales to 16,777,216 pages: ``pte_gpa[p]`` (the
page's first mapping), ``chain[j * mappings + t]`` (the ptes of shared page j in
page_referenced's visit order), ``is_cache[p]`` (1 for a page-cache page), and per process
the virtual addresses and pte gpas of its mappings in address order.
"""

from __future__ import annotations

import random
from array import array

from bench.errors import BenchError
from bench.guest import USER_PTE, Guest, Process
from bench.machine.paging import A, D

PRIVATE_BASE = 0x08000000
USER_TOP = 0xBF000000
MAX_PROCESSES = 4096
"""The most user processes a scan workload may have (its ``processes`` parameter)."""
"""Mappings stay below 0xBF000000 (the stack and the kernel's 0xC0000000 start above)."""
NRPTE = 31
"""pte_chain slots per block: (L1_CACHE_BYTES - sizeof(long)) / sizeof(u32) with 128-byte lines
(P4, CONFIG_X86_L1_CACHE_SHIFT=7), R3 mm/rmap.c; notes section 3."""
PTE_FLAGS = USER_PTE | A | D
"""A freshly faulted anonymous page: do_anonymous_page writes pte_mkwrite(pte_mkdirty(mk_pte()))
and the access that faulted sets A."""


def chain_order(mappings: int) -> list[int]:
    """Insertion indices in page_referenced's visit order: blocks of NRPTE, the newest block first,
    oldest-first within a block (page_add_rmap fills the head block downwards; notes section 3)."""
    blocks = [list(range(b, min(b + NRPTE, mappings))) for b in range(0, mappings, NRPTE)]
    return [i for block in reversed(blocks) for i in block]


class UserMemory:
    """Processes and their mappings, written into guest memory directly (setup, no operations)."""

    def __init__(self, guest: Guest, rng: random.Random, pages: int, processes: int,
                 shared: float, mappings: int, cache: float = 0.0) -> None:
        self.guest = guest
        nproc = processes
        nshared = int(round(shared * pages)) if mappings >= 2 else 0
        self.pages = pages
        self.shared_pages = nshared
        self.mappings = mappings if nshared else 1
        nprivate = pages - nshared
        priv_bounds = [nshared + q * nprivate // nproc for q in range(nproc + 1)]
        seg_bounds = [q * nshared // nproc for q in range(nproc + 1)]
        # Page-cache pages: the first round(cache * length) pages of every segment and of every
        # private range (file-backed mappings: library and program text, mmap'd files).
        self.is_cache = is_cache = bytearray(pages)
        for bounds in (seg_bounds, priv_bounds):
            for q in range(nproc):
                a, b = bounds[q], bounds[q + 1]
                c = int(round(cache * (b - a)))
                is_cache[a:a + c] = b"\x01" * c
        self.cache_pages = is_cache.count(1)
        self.shared_cache_pages = is_cache.count(1, 0, nshared)
        max_private = max(priv_bounds[q + 1] - priv_bounds[q] for q in range(nproc))
        large = 1 << guest.mode.large_shift
        self.shm_base = (PRIVATE_BASE + max_private * 4096 + large - 1) & ~(large - 1)
        if self.shm_base + nshared * 4096 > USER_TOP:
            more = (f", or raise processes (now {nproc}, at most {MAX_PROCESSES})"
                    if nproc < MAX_PROCESSES else f" (processes is at its maximum {MAX_PROCESSES})")
            raise BenchError(f"{pages} pages over {nproc} processes do not fit below "
                             f"{USER_TOP:#x} of user address space; lower highmem_mib or shared"
                             f"{more}")
        self.procs: list[Process] = [guest.new_process() for _ in range(nproc)]
        self.cr3s = [p.cr3 for p in self.procs]
        m = self.mappings
        # Which processes map segment k: k, k+1, ..., k+m-1 (mod P).
        maps_segment = [[(k + t) % nproc for t in range(m)] for k in range(nproc)]

        # The fault-in order: each process's stream is its segment then its private pages.
        streams = [list(range(seg_bounds[q], seg_bounds[q + 1]))
                   + list(range(priv_bounds[q], priv_bounds[q + 1])) for q in range(nproc)]
        pos = [0] * nproc
        live = [q for q in range(nproc) if streams[q]]
        order = array("i")
        while live:
            i = rng.randrange(len(live))
            q = live[i]
            n = rng.randint(1, 64)
            stream = streams[q]
            order.extend(stream[pos[q]:pos[q] + n])
            pos[q] += n
            if pos[q] >= len(stream):
                live.pop(i)
        del streams
        self.fault_order = order

        # Allocate data pages in fault order; write every mapping's pte (tables allocated on
        # first use, interleaved with the data pages, as pte_alloc_one does under HIGHPTE).
        mem, pae = guest.mem, guest.pae
        shift = guest.mode.large_shift
        emask = guest.mode.entries - 1
        self.pte_gpa = array("q", bytes(8 * pages))
        self.chain = array("q", bytes(8 * nshared * m))
        visit = chain_order(m)
        slot_of = {ins: pos_ for pos_, ins in enumerate(visit)}
        seg_of = array("i", bytes(4 * max(nshared, 1)))
        for k in range(nproc):
            for j in range(seg_bounds[k], seg_bounds[k + 1]):
                seg_of[j] = k
        owner_priv = array("i", bytes(4 * pages))
        for q in range(nproc):
            for p in range(priv_bounds[q], priv_bounds[q + 1]):
                owner_priv[p] = q
        tables: dict[tuple[int, int], array] = {}
        table_gfn: dict[tuple[int, int], int] = {}
        procs = self.procs
        shm_base = self.shm_base
        for p in order:
            gfn = guest.alloc_high()
            value = (gfn << 12) | PTE_FLAGS
            if p < nshared:
                vaddr = shm_base + p * 4096
                targets = [(q, vaddr) for q in maps_segment[seg_of[p]]]
            else:
                q = owner_priv[p]
                targets = [(q, PRIVATE_BASE + (p - priv_bounds[q]) * 4096)]
            for t, (q, vaddr) in enumerate(targets):
                key = (q, vaddr >> shift)
                table = tables.get(key)
                if table is None:
                    tgfn = guest.page_table_for(procs[q], vaddr)
                    assert tgfn is not None  # allocated on demand
                    table_gfn[key] = tgfn
                    table = tables[key] = mem.tables[tgfn]
                i = (vaddr >> 12) & emask
                if pae:
                    table[2 * i] = value & 0xFFFFFFFF
                    table[2 * i + 1] = value >> 32
                    gpa = (table_gfn[key] << 12) + 8 * i
                else:
                    table[i] = value
                    gpa = (table_gfn[key] << 12) + 4 * i
                if t == 0:
                    self.pte_gpa[p] = gpa
                if p < nshared:
                    self.chain[p * m + slot_of[t]] = gpa
        self.page_tables = len(tables)

        # Per process: its mappings in address order (private pages, then its segments).
        self.vaddrs: list[array] = []
        self.ptes: list[array] = []
        self.shared_from: list[int] = []  # index in vaddrs[q] where shared mappings begin
        for q in range(nproc):
            va = array("I", range(PRIVATE_BASE, PRIVATE_BASE
                                  + (priv_bounds[q + 1] - priv_bounds[q]) * 4096, 4096))
            ptes = array("q", (self.pte_gpa[p] for p in range(priv_bounds[q], priv_bounds[q + 1])))
            self.shared_from.append(len(va))
            for k in range(nproc):
                if q in maps_segment[k]:
                    t = maps_segment[k].index(q)
                    for j in range(seg_bounds[k], seg_bounds[k + 1]):
                        va.append(shm_base + j * 4096)
                        ptes.append(self.chain[j * m + slot_of[t]])
            self.vaddrs.append(va)
            self.ptes.append(ptes)

    def sizes(self) -> dict[str, int]:
        return {"pages": self.pages, "page_tables": self.page_tables,
                "processes": len(self.procs), "shared_pages": self.shared_pages,
                "cache_pages": self.cache_pages,
                "mappings": self.mappings, "ptes": sum(len(v) for v in self.vaddrs)}
