"""kscand: RHEL3's page-aging daemon walking the active lists and clearing accessed bits.

Follows R3 mm/vmscan.c (docs/rhel3-source-notes.md sections 1-3; 65bd7b49, likely 47.EL):

- kscand sleeps MIN_AGING_INTERVAL = HZ/2 (0.5 s) per iteration; for the zone it acts only when
  jiffies >= zone->age_next (time_before test), then: if need_active_anon_scan (anon pages in
  buckets 0..6 > anon pages in 7..15) it calls scan_active_list for the anon buckets
  MAX_AGE-1 = 14 down to 0 with the bucket's count; then, if need_active_cache_scan (the same test
  on the cache counts), for the cache buckets 14 down to 0 with count = active_anon_count[age]
  -- 65bd7b49's quirk, ``cache_count=anon`` (default) -- or active_cache_count[age] as in HEAD
  ec0b97ce (``cache_count=cache``); then the adaptive interval: need_scan >= 2 -> max(iv/2, MIN),
  need_scan == 0 -> min(iv*3/2, 300 s), need_scan = 0, age_next = jiffies + iv. Initially
  age_interval = HZ and age_next = jiffies (mm/page_alloc.c free_area_init_core).
- scan_active_list takes the tail of the bucket ``count`` times, stopping early only when the
  bucket is empty: page_referenced (mm/rmap.c) per page; referenced -> age_page_up_nolock: head
  of bucket min(age + 4, 15) of the same (anon or cache) list; else rotate to the head of the same
  bucket. So with the quirk a cache bucket is scanned as many times as the anon bucket of the same
  age holds pages: not at all when that is 0, in several laps (rotated pages re-checked) when it
  is above the bucket's length, partly (the tail end) when below.
- page_referenced, the same for anon and cache pages: a PageDirect page (one mapping) maps its pte
  page with kmap_atomic(KM_PTE2), reads the pte and test_and_clears bit 5 only if young; a
  pte_chain page does kmap, an unconditional test_and_clear_bit and kunmap for every mapping in
  chain order.
- New pages enter at the head of bucket INITIAL_AGE = 3 of the anon or the cache list in fault
  order (mm/swap.c lru_cache_add -> add_page_to_active_list, which picks the list by page_anon;
  a file page is added when it enters the page cache, before it is mapped, so it goes to the
  cache list).
- Memory pressure ages the lists down: kachunk_anon, then kachunk_cache (refill_inactive_zone's
  order), each splicing every bucket k+1 onto bucket k of its list and calling speedup_aging
  (need_scan++, and after more than 3 an earlier wakeup); a list without pages is skipped. So
  with both lists populated one age-down adds 2 to need_scan. Modelling choice: ``pressure``
  age-downs per guest second, without refill_inactive_zone's deactivation of bucket 0 (the
  inactive lists are not modelled), so kachunk does not wait for bucket 0 to be empty.

Pages (workloads._mm): a ``cache`` fraction of the shared pages (shared library text and other
shared file mappings: pte_chain pages) and the same fraction of the private pages (program text,
mmap'd files: PageDirect pages) are page-cache pages on the active_cache lists; the rest are
anonymous (private anonymous memory, and SysV shm = shared writable tmpfs, which page_anon counts
as anon) on the active_anon lists. A page never changes list: only activation from the inactive
lists (not modelled) re-runs page_anon, which would move a mapped file page to the anon lists.

The lists are doubly linked lists in arrays (one node per page plus 32 bucket heads), so a
guest of 16,777,216 pages costs a few arrays, never a Python object per page.
kscand runs on CPU 0 as a kernel thread: it borrows the running mm, no cr3 load (notes 7).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from itertools import compress
from operator import not_

from mypy_extensions import mypyc_attr

from bench.params import Param
from workloads._kmap import Kernel
from workloads._mm import UserMemory
from workloads._scan import (HZ, SCAN_PARAMS, PassStart, Scanner, ScanWorkload,
                             referenced_ops)

MAX_AGE = 15
INITIAL_AGE = 3
MIN_AGING_INTERVAL = HZ // 2
MAX_AGING_INTERVAL = 300 * HZ


@mypyc_attr(allow_interpreted_subclasses=True)
class Kscand(ScanWorkload):
    name = "kscand"
    summary = ("RHEL3 kscand: anon and cache age buckets scanned from the tail, page_referenced "
               "through kmap_atomic(KM_PTE2) (R3 mm/vmscan.c, mm/rmap.c)")
    params = {
        **SCAN_PARAMS,
        "pressure": Param(float, 1.0, "memory-pressure age-downs per guest second (kachunk_anon "
                          "and kachunk_cache)", minimum=0.0, maximum=float(HZ)),
        "cache": Param(float, 0.25, "fraction of the mapped pages that are page-cache pages "
                       "(file-backed: library and program text, mmap'd files; the same fraction "
                       "of the shared and of the private pages), on the active_cache lists",
                       minimum=0.0, maximum=1.0),
        "cache_count": Param(str, "anon", "count the cache pass passes to scan_active_list: anon "
                             "(65bd7b49, likely 47.EL: active_anon_count[age]) or cache (HEAD "
                             "ec0b97ce: active_cache_count[age])", choices=("anon", "cache")),
    }

    pressure: float
    cache: float
    cache_count: str

    def cache_fraction(self) -> float:
        return self.cache

    def scanner(self, um: UserMemory, kernel: Kernel) -> "AgingZone":
        return AgingZone(um, kernel, self.pressure, self.cache_count == "anon")


ANON = 0
"""Bucket index of anon age 0: anon bucket ``age`` is ANON + age (0..15)."""
CACHE = MAX_AGE + 1
"""Bucket index of cache age 0: cache bucket ``age`` is CACHE + age (16..31)."""


class AgingZone(Scanner):
    """The highmem zone's active anon and active cache lists (16 age buckets each) and kscand's
    per-zone state. Buckets are numbered 0..15 (anon ages) and 16..31 (cache ages)."""

    def __init__(self, um: UserMemory, kernel: Kernel, pressure: float,
                 anon_count_quirk: bool = True) -> None:
        n = um.pages
        self.um = um
        self.kernel = kernel
        self.quirk = anon_count_quirk
        self.base = n  # node n + b is the head of bucket b
        heads = 2 * (MAX_AGE + 1)
        # Every page is linked into a bucket below, so only the heads need initial links.
        self.nxt = nxt = array("i", bytes(4 * (n + heads)))
        self.prv = prv = array("i", bytes(4 * (n + heads)))
        for b in range(heads):
            nxt[n + b] = prv[n + b] = n + b
        self.count = array("q", bytes(8 * heads))  # (an array: the C stream shares it)
        # lru_cache_add in fault order: list_add at the head of INITIAL_AGE of the page's list
        # (the two lists are independent, so each takes its pages in one go).
        order, cached = um.fault_order, um.order_is_cache
        self._add_heads(compress(order, map(not_, cached)), ANON + INITIAL_AGE,
                        len(order) - cached.count(1))
        self._add_heads(compress(order, cached), CACHE + INITIAL_AGE, cached.count(1))
        self.age_interval = HZ
        self.age_next = 0
        self.need_scan = 0
        self.kachunk_every = round(HZ / pressure) if pressure > 0 else 0
        self.visited: list[tuple[int, int]] = []

    # -- list primitives (include/linux/list.h on array nodes) ---------------------------------
    def _add_heads(self, pages: Iterator[int], bucket: int, n: int) -> None:
        """list_add(p, bucket's head) for every p of the ``n`` ``pages``, in order."""
        nxt, prv = self.nxt, self.prv
        head = self.base + bucket
        after = nxt[head]
        for p in pages:
            nxt[p] = after
            prv[after] = p
            after = p
        nxt[head] = after
        prv[after] = head
        self.count[bucket] += n

    def bucket(self, b: int) -> list[int]:
        """The pages of bucket b (0..15 anon, 16..31 cache) from the tail (the order
        scan_active_list takes them)."""
        out, head = [], self.base + b
        p = self.prv[head]
        while p != head:
            out.append(p)
            p = self.prv[p]
        return out

    def _splice_down(self, lst: int) -> None:
        """kachunk_anon / kachunk_cache: list_splice_init(list[k+1], list[k]) for k = 0..14,
        counts follow."""
        nxt, prv, base, count = self.nxt, self.prv, self.base + lst, self.count
        for k in range(MAX_AGE):
            src, dst = base + k + 1, base + k
            if nxt[src] != src:
                first, last, at = nxt[src], prv[src], nxt[dst]
                nxt[dst] = first
                prv[first] = dst
                nxt[last] = at
                prv[at] = last
                nxt[src] = prv[src] = src
            count[lst + k] += count[lst + k + 1]
            count[lst + k + 1] = 0

    def _kachunk(self, jiffy: int) -> None:
        """refill_inactive_zone's age-downs: kachunk_anon, then kachunk_cache; each returns at
        once if its list has no pages, else splices and calls speedup_aging."""
        for lst in (ANON, CACHE):
            if not sum(self.count[lst:lst + MAX_AGE + 1]):
                continue
            self._splice_down(lst)
            self.need_scan += 1  # speedup_aging
            if self.need_scan > 3:
                next_wakeup = jiffy + MIN_AGING_INTERVAL
                if next_wakeup < self.age_next:
                    self.age_next = next_wakeup

    def _need_scan(self, lst: int) -> bool:
        """need_active_anon_scan / need_active_cache_scan: buckets 0..6 hold more than 7..15."""
        count = self.count
        low = sum(count[lst:lst + MAX_AGE // 2])
        high = sum(count[lst + MAX_AGE // 2:lst + MAX_AGE + 1])
        return high < low

    # -- kscand ----------------------------------------------------------------------------------
    def wake(self, jiffy: int) -> PassStart | None:
        if self.kachunk_every and jiffy % self.kachunk_every == 0:
            self._kachunk(jiffy)
        if jiffy % MIN_AGING_INTERVAL or jiffy < self.age_next:
            return None
        scan = None
        # need_active_cache_scan reads only cache counts, which the anon pass does not change,
        # so testing both now is the same as testing the cache lists after the anon pass.
        anon, cache = self._need_scan(ANON), self._need_scan(CACHE)
        if cache and not anon and self.quirk:
            # Without an anon pass the anon counts the cache pass reads are today's: if every
            # non-empty cache bucket meets an anon count of 0, the pass visits nothing and emits
            # nothing (no MARK; CPU 0's process keeps its jiffy).
            count = self.count
            cache = any(count[CACHE + a] and count[ANON + a] for a in range(MAX_AGE))
        if anon or cache:
            scan = (self._pass(anon, cache), self._estimate(anon, cache))
        iv = self.age_interval
        if self.need_scan >= 2:
            iv = max(iv // 2, MIN_AGING_INTERVAL)
        elif not self.need_scan:
            iv = min(iv + iv // 2, MAX_AGING_INTERVAL)
        self.need_scan = 0
        self.age_interval = iv
        self.age_next = jiffy + iv
        return scan

    def _estimate(self, anon: bool, cache: bool) -> int:
        """About how many ptes the pass visits (to spread the other CPUs' accesses over it)."""
        um, count = self.um, self.count
        extra = um.mappings - 1
        shared_cache = um.shared_cache_pages
        total = 0
        if anon:
            total += sum(count[:MAX_AGE]) + (um.shared_pages - shared_cache) * extra
        if cache and um.cache_pages:
            src = ANON if self.quirk else CACHE
            visits = sum(count[src + a] for a in range(MAX_AGE) if count[CACHE + a])
            total += visits + visits * shared_cache * extra // um.cache_pages
        return total

    def _pass(self, anon: bool, cache: bool) -> Iterator[list[tuple]]:
        """kscand's per-zone scan: if ``anon``, anon buckets 14..0, each
        scan_active_list(count = active_anon_count[age]); then if ``cache``, cache buckets 14..0,
        each scan_active_list(count = active_anon_count[age] (65bd7b49, the quirk) or
        active_cache_count[age] (HEAD)). A count is read when its scan_active_list starts."""
        nxt, prv, count, base = self.nxt, self.prv, self.count, self.base
        kernel = self.kernel
        mem = kernel.mem
        um = self.um
        pte_gpa, chain = um.pte_gpa, um.chain
        nshared, m = um.shared_pages, um.mappings
        record = self.record
        visited = self.visited
        lists = []
        if anon:
            lists.append((ANON, ANON))
        if cache:
            lists.append((CACHE, ANON if self.quirk else CACHE))
        for lst, src in lists:
            for age in range(MAX_AGE - 1, -1, -1):
                b = lst + age
                head = base + b
                todo = count[src + age]
                # scan_active_list: take the tail ``count`` times, stop only on an empty list
                # (a count above the length re-checks rotated pages; below it, some are left).
                while todo > 0:
                    p = prv[head]
                    if p == head:
                        break
                    todo -= 1
                    if record:
                        visited.append((b, p))
                    referenced = False
                    if p < nshared:
                        for t in range(p * m, p * m + m):
                            ops: list[tuple] = []
                            if referenced_ops(kernel, mem, chain[t], True, ops):
                                referenced = True
                            yield ops
                    else:
                        ops = []
                        referenced = referenced_ops(kernel, mem, pte_gpa[p], False, ops)
                        yield ops
                    # list_del, then list_add at the head of the new (or the same) bucket
                    a, c = prv[p], nxt[p]
                    nxt[a] = c
                    prv[c] = a
                    if referenced:
                        new = lst + min(age + 4, MAX_AGE)
                        count[b] -= 1
                        count[new] += 1
                    else:
                        new = b
                    dst = base + new
                    first = nxt[dst]
                    nxt[p] = first
                    prv[p] = dst
                    prv[first] = p
                    nxt[dst] = p


WORKLOAD = Kscand
