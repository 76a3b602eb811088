"""kscand: RHEL3's page-aging daemon walking the active lists and clearing accessed bits.

Follows R3 mm/vmscan.c (docs/rhel3-source-notes.md sections 1-3; 65bd7b49, likely 47.EL):

- kscand sleeps MIN_AGING_INTERVAL = HZ/2 (0.5 s) per iteration; for the zone it acts only when
  jiffies >= zone->age_next (time_before test), then: if need_active_anon_scan (pages in buckets
  0..6 > pages in 7..15) it calls scan_active_list for buckets MAX_AGE-1 = 14 down to 0 with the
  bucket's count; then the adaptive interval: need_scan >= 2 -> max(iv/2, MIN), need_scan == 0 ->
  min(iv*3/2, 300 s), need_scan = 0, age_next = jiffies + iv. Initially age_interval = HZ and
  age_next = jiffies (mm/page_alloc.c free_area_init_core).
- scan_active_list takes ``count`` pages from the tail of the bucket; page_referenced (mm/rmap.c)
  per page; referenced -> age_page_up_nolock: head of bucket min(age + 4, 15); else rotate to the
  head of the same bucket.
- page_referenced: a PageDirect page (one mapping) maps its pte page with kmap_atomic(KM_PTE2),
  reads the pte and test_and_clears bit 5 only if young; a pte_chain page does kmap, an
  unconditional test_and_clear_bit and kunmap for every mapping in chain order.
- New pages enter at the head of bucket INITIAL_AGE = 3 in fault order (mm/swap.c lru_cache_add).
- Memory pressure ages the lists down: kachunk_anon splices every bucket k+1 onto bucket k and
  calls speedup_aging (need_scan++, and after more than 3 an earlier wakeup). Modelling choice:
  ``pressure`` kachunks per guest second, without refill_inactive_zone's deactivation of bucket 0
  (the inactive lists are not modelled), so kachunk does not wait for bucket 0 to be empty.

The lists are doubly linked lists in arrays (one node per page plus 16 bucket heads), so a
guest of 16,777,216 pages costs a few arrays, never a Python object per page. Every page the
processes map is anonymous (private anonymous memory, and SysV shm = shared writable tmpfs,
which page_anon counts as anon), so the cache lists stay empty and the cache pass never runs.
kscand runs on CPU 0 as a kernel thread: it borrows the running mm, no cr3 load (notes 7).
"""

from __future__ import annotations

from array import array

from bench.params import Param
from workloads._kmap import Kernel
from workloads._mm import UserMemory
from workloads._scan import HZ, SCAN_PARAMS, Scanner, ScanWorkload, referenced_ops

MAX_AGE = 15
INITIAL_AGE = 3
MIN_AGING_INTERVAL = HZ // 2
MAX_AGING_INTERVAL = 300 * HZ


class Kscand(ScanWorkload):
    name = "kscand"
    summary = ("RHEL3 kscand: age buckets scanned from the tail, page_referenced through "
               "kmap_atomic(KM_PTE2) (R3 mm/vmscan.c, mm/rmap.c)")
    params = {
        **SCAN_PARAMS,
        "pressure": Param(float, 1.0, "memory-pressure age-downs (kachunk) per guest second",
                          minimum=0.0, maximum=float(HZ)),
    }

    def scanner(self, um: UserMemory, kernel: Kernel) -> "AgingZone":
        return AgingZone(um, kernel, self.pressure)


class AgingZone(Scanner):
    """The highmem zone's active anon lists (16 age buckets) and kscand's per-zone state."""

    def __init__(self, um: UserMemory, kernel: Kernel, pressure: float) -> None:
        n = um.pages
        self.um = um
        self.kernel = kernel
        self.base = n  # node n + b is the head of bucket b
        self.nxt = nxt = array("i", range(1, n + MAX_AGE + 2))
        self.prv = prv = array("i", range(-1, n + MAX_AGE))
        for b in range(MAX_AGE + 1):
            nxt[n + b] = prv[n + b] = n + b
        self.count = [0] * (MAX_AGE + 1)
        for p in um.fault_order:  # lru_cache_add: list_add at the head of INITIAL_AGE
            self._add_head(p, INITIAL_AGE)
        self.age_interval = HZ
        self.age_next = 0
        self.need_scan = 0
        self.kachunk_every = round(HZ / pressure) if pressure > 0 else 0
        self.visited: list[tuple[int, int]] = []

    # -- list primitives (include/linux/list.h on array nodes) ---------------------------------
    def _add_head(self, p: int, bucket: int) -> None:
        nxt, prv = self.nxt, self.prv
        head = self.base + bucket
        first = nxt[head]
        nxt[p] = first
        prv[p] = head
        prv[first] = p
        nxt[head] = p
        self.count[bucket] += 1

    def bucket(self, age: int) -> list[int]:
        """The pages of a bucket from the tail (the order scan_active_list takes them)."""
        out, head = [], self.base + age
        p = self.prv[head]
        while p != head:
            out.append(p)
            p = self.prv[p]
        return out

    def _splice_down(self) -> None:
        """kachunk_anon: list_splice_init(list[k+1], list[k]) for k = 0..14, counts follow."""
        nxt, prv, base = self.nxt, self.prv, self.base
        for k in range(MAX_AGE):
            src, dst = base + k + 1, base + k
            if nxt[src] != src:
                first, last, at = nxt[src], prv[src], nxt[dst]
                nxt[dst] = first
                prv[first] = dst
                nxt[last] = at
                prv[at] = last
                nxt[src] = prv[src] = src
            self.count[k] += self.count[k + 1]
            self.count[k + 1] = 0

    def _kachunk(self, jiffy: int) -> None:
        if not sum(self.count):
            return
        self._splice_down()
        self.need_scan += 1  # speedup_aging
        if self.need_scan > 3:
            next_wakeup = jiffy + MIN_AGING_INTERVAL
            if next_wakeup < self.age_next:
                self.age_next = next_wakeup

    # -- kscand ----------------------------------------------------------------------------------
    def wake(self, jiffy: int):
        if self.kachunk_every and jiffy % self.kachunk_every == 0:
            self._kachunk(jiffy)
        if jiffy % MIN_AGING_INTERVAL or jiffy < self.age_next:
            return None
        count = self.count
        low = sum(count[:MAX_AGE // 2])
        high = sum(count[MAX_AGE // 2:])
        scan = None
        if high < low:  # need_active_anon_scan
            total = sum(count[:MAX_AGE]) + self.um.shared_pages * (self.um.mappings - 1)
            scan = (self._pass(), total)
        iv = self.age_interval
        if self.need_scan >= 2:
            iv = max(iv // 2, MIN_AGING_INTERVAL)
        elif not self.need_scan:
            iv = min(iv + iv // 2, MAX_AGING_INTERVAL)
        self.need_scan = 0
        self.age_interval = iv
        self.age_next = jiffy + iv
        return scan

    def _pass(self):
        """Buckets 14..0, each scan_active_list(count = the bucket's count when it starts)."""
        nxt, prv, count, base = self.nxt, self.prv, self.count, self.base
        kernel = self.kernel
        mem = kernel.mem
        um = self.um
        pte_gpa, chain = um.pte_gpa, um.chain
        nshared, m = um.shared_pages, um.mappings
        record = self.record
        visited = self.visited
        for age in range(MAX_AGE - 1, -1, -1):
            head = base + age
            todo = count[age]
            while todo > 0:
                p = prv[head]
                if p == head:
                    break
                todo -= 1
                if record:
                    visited.append((age, p))
                referenced = False
                if p < nshared:
                    for t in range(p * m, p * m + m):
                        ops: list = []
                        if referenced_ops(kernel, mem, chain[t], True, ops):
                            referenced = True
                        yield ops
                else:
                    ops = []
                    referenced = referenced_ops(kernel, mem, pte_gpa[p], False, ops)
                    yield ops
                # list_del, then list_add at the head of the new (or the same) bucket
                a, b = prv[p], nxt[p]
                nxt[a] = b
                prv[b] = a
                if referenced:
                    new_age = min(age + 4, MAX_AGE)
                    count[age] -= 1
                    count[new_age] += 1
                else:
                    new_age = age
                dst = base + new_age
                first = nxt[dst]
                nxt[p] = first
                prv[p] = dst
                prv[first] = p
                nxt[dst] = p


WORKLOAD = Kscand
