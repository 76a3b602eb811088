"""The built guest of every scan workload and of the others, byte for byte as before issue 17's
bulk guest build (workloads._mm writes a page table's ptes as slices, kscand links its age
lists per bucket): golden SHA-256 digests computed from the page-by-page build it replaced.

A digest covers the guest memory (every page-table page and every sparse word, by address), the
cr3s and sizes, the first operations of the stream and, for the scan workloads, the per-page
arrays (fault order, pte gpas, pte chains, per-process mappings) and kscand's age lists."""

from __future__ import annotations

import hashlib
import json
import random
from itertools import islice

import pytest

from bench.registry import make_workload

BIG = {"highmem_mib": 3584, "processes": 32, "shared": 0.01, "seconds": 0.3}
"""3.5 GiB of PAE highmem: frames above 4 GiB, so pte high words change within a page table."""

GOLDEN = [
    ("kscand", {"quick": True}, 0,
     "9c0f42ac931cdd3b225d49878e28abc76f8c8cffb757cbce35613a458c9854ee"),
    ("kscand", {"quick": True}, 7,
     "93ffec4a3b48d97c9a3ad0b3c8a6bb3d31e165a9ecf103da667635da0d664e3f"),
    ("kscand", {"quick": True, "pae": False}, 3,
     "b7d8951b05d27f63a76ee9a8bae1721183bfb7870d8a937c2f1e45ccd35b7d27"),
    ("kscand", {"highmem_mib": 64, "processes": 5, "shared": 0.3, "mappings": 3, "cache": 0.4},
     1,
     "d501e36b6eb6094393ded9d8cc1efb4c0154f9555b8e3807c647b3be096bcfed"),
    ("kscand", {"highmem_mib": 40, "processes": 40, "shared": 0.5, "mappings": 35, "pae": False},
     2,
     "8f3c5d16e64214aa6f1156ec7da7d64c5858db7aa75751737288686240791f4f"),
    ("kscand", BIG, 0,
     "f8269dac52674881abd7a59dce3f99077da0bd8175dd2f0a8424982b5501fd1c"),
    ("linear-scan", {"quick": True}, 0,
     "3e948a7dddaffd1ee4e182f5e6f1b149d081cc910754203638fd7ba1a0165ed0"),
    ("linear-scan", {"highmem_mib": 32, "pae": False}, 4,
     "08583497b7ab97a41e5623ea5385b36a713fdb4ebfb8206caf09d7b1f1fc69e6"),
    ("kmap", {"quick": True}, 0,
     "0ce0a81fcedbcf8b080d690793a7f62c5d06e03d244581ea7281e93a617a7dc4"),
    ("demand-paging", {"quick": True}, 0,
     "17c3075a6e990a5d02b718f7b45d10d60a1002863d93c78e1482dd151c22037d"),
    ("fork-exit", {"quick": True}, 5,
     "a4a075d2111a34bcffe39dc7b988ba800562d169826f2dfb49d9524c6abbd765"),
]


def built_digest(workload: str, params: dict, seed: int) -> str:
    """SHA-256 of what building (workload, params, seed) leaves: see the module docstring."""
    wl = make_workload(workload, params)
    run = wl.build(random.Random(seed))
    h = hashlib.sha256()
    mem = run.guest.mem
    for gfn in sorted(mem.tables):
        h.update(gfn.to_bytes(8, "little"))
        h.update(mem.tables[gfn].tobytes())
    h.update(json.dumps(sorted((w, v) for w, v in mem.words.items() if v)).encode())
    h.update(json.dumps([list(run.cr3s), sorted(run.sizes.items())]).encode())
    h.update(json.dumps(list(islice(run.ops, 2000))).encode())
    scanner = getattr(wl, "last_scanner", None)
    if scanner is not None:
        um = scanner.um
        for arr in [um.fault_order, um.pte_gpa, um.chain, *um.vaddrs, *um.ptes]:
            h.update(arr.tobytes())
        h.update(json.dumps([um.shared_from, um.sizes()]).encode())
        if hasattr(scanner, "nxt"):
            h.update(scanner.nxt.tobytes())
            h.update(scanner.prv.tobytes())
            h.update(json.dumps(list(scanner.count)).encode())
    return h.hexdigest()


@pytest.mark.parametrize("workload,params,seed,digest", GOLDEN,
                         ids=[f"{w}-{i}" for i, (w, *_) in enumerate(GOLDEN)])
def test_built_guest_is_unchanged(workload: str, params: dict, seed: int, digest: str) -> None:
    assert built_digest(workload, params, seed) == digest
