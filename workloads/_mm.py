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
page_referenced's visit order), ``is_cache[p]`` (1 for a page-cache page; ``order_is_cache``
the same flags in fault order), and per process the virtual addresses and pte gpas of its
mappings in address order. The build writes the ptes of consecutive pages as array slices, so
it costs about a microsecond per page (docs/performance.md, "Issue 17: cheap wins").
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

        # The fault-in order: each process's stream is its segment then its private pages; a
        # chunk of it is one or two runs of consecutive page indices (``runs``: owner, first
        # page, count, flat).
        lengths = [(seg_bounds[q + 1] - seg_bounds[q], priv_bounds[q + 1] - priv_bounds[q])
                   for q in range(nproc)]
        pos = [0] * nproc
        live = [q for q in range(nproc) if lengths[q][0] + lengths[q][1]]
        order = array("i")
        self.order_is_cache = order_is_cache = bytearray()  # is_cache in fault order
        runs = array("i")
        while live:
            i = rng.randrange(len(live))
            q = live[i]
            n = rng.randint(1, 64)
            seg_len, priv_len = lengths[q]
            at, end = pos[q], min(pos[q] + n, seg_len + priv_len)
            if at < seg_len:  # the segment's part of the chunk
                first, stop = seg_bounds[q] + at, seg_bounds[q] + min(end, seg_len)
                runs.extend((q, first, stop - first))
                order.extend(range(first, stop))
                order_is_cache += is_cache[first:stop]
            if end > seg_len:  # the private part
                first = priv_bounds[q] + max(at, seg_len) - seg_len
                stop = priv_bounds[q] + end - seg_len
                runs.extend((q, first, stop - first))
                order.extend(range(first, stop))
                order_is_cache += is_cache[first:stop]
            pos[q] = end
            if end >= seg_len + priv_len:
                live.pop(i)
        self.fault_order = order

        # Allocate data pages in fault order; write every mapping's pte (tables allocated on
        # first use, interleaved with the data pages, as pte_alloc_one does under HIGHPTE).
        # A run is written in pieces that stay within one page table of every mapping: the
        # piece's first page may allocate tables, the others then take consecutive frames and
        # are written in bulk (the same frames, ptes and order as page by page).
        self.pte_gpa = array("q", bytes(8 * pages))
        self.chain = array("q", bytes(8 * nshared * m))
        slot_of = [0] * m
        for pos_, ins in enumerate(chain_order(m)):
            slot_of[ins] = pos_
        self._tables: dict[tuple[int, int], int] = {}  # (process, large-page index) -> pt gfn
        entries, shm_base = guest.mode.entries, self.shm_base
        for k in range(0, len(runs), 3):
            q, p, n = runs[k], runs[k + 1], runs[k + 2]
            shared_run = p < nshared
            owners = maps_segment[q] if shared_run else [q]
            while n:
                vaddr = (shm_base + p * 4096 if shared_run
                         else PRIVATE_BASE + (p - priv_bounds[q]) * 4096)
                c = min(n, entries - ((vaddr >> 12) & (entries - 1)))
                self._map_page(p, guest.alloc_high(), owners, vaddr, shared_run, slot_of)
                if c > 1:
                    self._map_run(p + 1, guest.alloc_high_run(c - 1), c - 1, owners,
                                  vaddr + 4096, shared_run, slot_of)
                p += c
                n -= c
        self.page_tables = len(self._tables)

        # Per process: its mappings in address order (private pages, then its segments).
        self.vaddrs: list[array] = []
        self.ptes: list[array] = []
        self.shared_from: list[int] = []  # index in vaddrs[q] where shared mappings begin
        for q in range(nproc):
            va = array("I", range(PRIVATE_BASE, PRIVATE_BASE
                                  + (priv_bounds[q + 1] - priv_bounds[q]) * 4096, 4096))
            ptes = self.pte_gpa[priv_bounds[q]:priv_bounds[q + 1]]
            self.shared_from.append(len(va))
            for k in range(nproc):
                if q in maps_segment[k]:
                    s = slot_of[maps_segment[k].index(q)]
                    a, b = seg_bounds[k], seg_bounds[k + 1]
                    va.extend(range(shm_base + a * 4096, shm_base + b * 4096, 4096))
                    ptes.extend(self.chain[a * m + s:b * m + s:m])
            self.vaddrs.append(va)
            self.ptes.append(ptes)

    def _table(self, q: int, vaddr: int) -> int:
        """The gfn of process q's page table for ``vaddr``, allocated on first use."""
        key = (q, vaddr >> self.guest.mode.large_shift)
        tgfn = self._tables.get(key)
        if tgfn is None:
            found = self.guest.page_table_for(self.procs[q], vaddr)
            assert found is not None  # allocated on demand
            tgfn = self._tables[key] = found
        return tgfn

    def _map_page(self, p: int, gfn: int, owners: list[int], vaddr: int, shared_run: bool,
                  slot_of: list[int]) -> None:
        """Page p in frame gfn: its pte in every owner's table (allocating tables as needed)."""
        guest = self.guest
        value = (gfn << 12) | PTE_FLAGS
        i = (vaddr >> 12) & (guest.mode.entries - 1)
        for t, q in enumerate(owners):
            tgfn = self._table(q, vaddr)
            table = guest.mem.tables[tgfn]
            if guest.pae:
                table[2 * i] = value & 0xFFFFFFFF
                table[2 * i + 1] = value >> 32
                gpa = (tgfn << 12) + 8 * i
            else:
                table[i] = value
                gpa = (tgfn << 12) + 4 * i
            if t == 0:
                self.pte_gpa[p] = gpa
            if shared_run:
                self.chain[p * self.mappings + slot_of[t]] = gpa

    def _map_run(self, p: int, gfn: int, n: int, owners: list[int], vaddr: int,
                 shared_run: bool, slot_of: list[int]) -> None:
        """Pages p..p+n-1 in frames gfn..gfn+n-1 at consecutive vaddrs within one page table
        of every owner (already allocated): the ptes written as slices."""
        guest = self.guest
        pae, esize = guest.pae, guest.mode.entry_size
        i = (vaddr >> 12) & (guest.mode.entries - 1)
        if pae and gfn >> 20 != (gfn + n - 1) >> 20:  # the high words differ within the run
            for k in range(n):
                self._map_page(p + k, gfn + k, owners, vaddr + k * 4096, shared_run, slot_of)
            return
        m = self.mappings
        for t, q in enumerate(owners):
            tgfn = self._table(q, vaddr)
            table = guest.mem.tables[tgfn]
            if pae:
                low = ((gfn & 0xFFFFF) << 12) | PTE_FLAGS
                table[2 * i:2 * (i + n):2] = array("I", range(low, low + n * 4096, 4096))
                table[2 * i + 1:2 * (i + n):2] = array("I", [gfn >> 20]) * n
            else:
                first = (gfn << 12) | PTE_FLAGS
                table[i:i + n] = array("I", range(first, first + n * 4096, 4096))
            gpa = (tgfn << 12) + esize * i
            gpas = array("q", range(gpa, gpa + n * esize, esize))
            if t == 0:
                self.pte_gpa[p:p + n] = gpas
            if shared_run:
                s = slot_of[t]
                self.chain[p * m + s:(p + n) * m + s:m] = gpas

    def sizes(self) -> dict[str, int]:
        return {"pages": self.pages, "page_tables": self.page_tables,
                "processes": len(self.procs), "shared_pages": self.shared_pages,
                "cache_pages": self.cache_pages,
                "mappings": self.mappings, "ptes": sum(len(v) for v in self.vaddrs)}
