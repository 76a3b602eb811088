"""The ``guest`` workload: a recording replayed as guest operations (bench/record/replay.py).

Golden counts on a tiny recording written with the format's writer (tests/_tiny_recording.py),
worked out by hand; the replay's rules one by one; on every shipped recording: every store
translates to its recorded physical address, and (on a bounded prefix) every policy leaves guest
memory as native execution does, with the shadow MMU's invariants checked.
"""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import _tiny_recording as TR
from bench import ops as O
from bench.cell import executor_for, run_cells
from bench.experiment import DEFAULT_WORKLOADS, REAL_GUESTS, Cell, Entry, build
from bench.machine.counters import NATIVE_COUNTERS
from bench.machine.invariants import check_shadow
from bench.machine.native import NativeMachine
from bench.machine.paging import A, D, mode_for, walk
from bench.machine.shadow import ShadowMachine
from bench.params import parse_spec
from bench.record import format as F
from bench.record import replay
from bench.registry import make_policy, make_workload, policies, workload_params
from bench.workload import GuestRun

ROOT = Path(__file__).resolve().parent.parent

NATIVE = {"native_load": 2, "native_store": 2, "native_locked_rmw": 1, "native_invlpg": 1}


@pytest.fixture
def tiny(tmp_path):
    return TR.write(tmp_path / "tiny.rec")


def _counts(path, policy):
    (_, result), = run_cells([policy], "guest", {"recording": str(path)}, 0)
    return {k: v for k, v in result.counters.items() if v}, result.marks


def test_tiny_operations(tiny):
    """Each event's operation: the first cr3 is the snapshot root mapping the first mark's page
    (D); a walk is a LOAD (read) or a 1-byte STORE of 0 (write) at its address; a store keeps
    its virtual address, width and bytes; a 4-byte btr whose value has A clear is a BTR of bit
    5; the invlpg keeps its inferred address; the instruction counts between events are gaps
    (1011 - 1001 - 1 = 9 ...); the end mark closes phase 1."""
    player = replay.Replayer(tiny)
    assert player.cr3 == TR.D
    assert list(player.ops()) == [
        O.load(0, TR.USER_VA, 1),
        O.gap(0, 9),
        O.store(0, 0xC0000000 + TR.T + 8, 4, TR.DATA2 | TR.USER_PTE),
        O.gap(0, 9),
        O.store(0, TR.USER_VA + 0x1000, 1, 0),
        O.gap(0, 9),
        O.btr(0, 0xC0000000 + TR.T, 5),
        O.invlpg(0, TR.USER_VA),
        O.gap(0, 7),
        O.load(0, TR.USER_VA + 4, 1),
        O.gap(0, 1100 - 1040 - 1),
        O.mark(0, 1),
    ]


def test_tiny_always_emulate(tiny):
    """KVM 2.6.26's mechanism, emulating every page-table write.

    The cr3 load at start builds the four quadrant roots of D (mmu_cache_miss 4). 1: the user
    load finds no spte: a hidden fault that shadows T (miss 5). 2: the kernel store through the
    direct map finds no spte: the fault creates the direct shadow page of the 4-MiB kernel page
    (miss 6), and the spte for T's frame must be read-only (T is shadowed): a page-table write,
    emulated (insn_emulation, mmu_pte_write, mmu_pte_updated 1 each). 3: the user's first write
    to its second page finds no spte: hidden fault 2. 4: the btr hits the read-only direct-map
    spte of T: page-table write 2, emulated; it clears A, so update_pte drops the first page's
    spte. 5: invlpg is not intercepted. 6: the user's load refaults: hidden fault 3.
    Exits 2 + 3 = 5, each counted in pf_fixed."""
    counts, marks = _counts(tiny, "always-emulate")
    assert counts == {"exits": 5, "pf_fixed": 5, "exit_hidden_fault": 3,
                      "exit_ptwrite_emulate": 2, "insn_emulation": 2, "mmu_pte_write": 2,
                      "mmu_pte_updated": 2, "mmu_cache_miss": 6, **NATIVE}
    assert [phase for phase, _ in marks] == [1]


def test_tiny_always_unshadow(tiny):
    """Unshadowing at every page-table write.

    Roots: miss 4. 1: hidden fault 1, T shadowed (miss 5). 2: the store's fault creates the
    direct shadow page (miss 6) and finds T shadowed: unshadow T (zap 1), re-execute, refault
    writable (hidden fault 2); the store runs natively. 3: T's shadow page is gone, so the
    user's write faults and re-shadows T (miss 7, hidden fault 3), which write-protects T's
    frame in the direct map again. 4: the btr hits that read-only spte: unshadow T (zap 2),
    refault (hidden fault 4). 6: the load re-shadows T (miss 8, hidden fault 5).
    Exits 2 + 5 = 7."""
    counts, _ = _counts(tiny, "always-unshadow")
    assert counts == {"exits": 7, "pf_fixed": 7, "exit_hidden_fault": 5,
                      "exit_ptwrite_unshadow": 2, "mmu_shadow_zapped": 2, "mmu_cache_miss": 8,
                      **NATIVE}


def test_walk_of_a_store_is_dropped_and_classes_map(tmp_path):
    """A walk at the instruction count of a store to the same page is the store's own walk;
    a walk of another page at that count is kept. Store classes outside the emulator's set are
    movs; a btr whose value keeps A set clears its lowest clear bit (counted)."""
    evs = TR.events()
    end = evs.pop()
    pte = 0xC0000000 + TR.T
    evs += [
        F.Event(F.WALK, 0, 1, F.WRITE, 0, 1050, 0xC1000000, 0, pte, 0),
        F.Event(F.WALK, 0, 1, 0, 0, 1050, 0xC1000000, 0, 0xFFF00000, 0),
        F.Event(F.STORE, 4, 9, 0, 1, 1050, 0xC1000000, TR.T + 12, pte + 12, 0),  # stos
        F.Event(F.STORE, 4, 7, F.LOCKED, 1, 1051, 0xC1000000, TR.T + 4,
                pte + 4, (TR.DATA1 | TR.USER_PTE) & ~0x2),  # btr of RW, A kept
        end,
    ]
    player = replay.Replayer(TR.write(tmp_path / "w.rec", evs))
    ops = list(player.ops())
    tail = ops[ops.index(O.load(0, TR.USER_VA + 4, 1)) + 2:]
    assert tail == [O.load(0, 0xFFF00000, 1), O.store(0, pte + 12, 4, 0), O.btr(0, pte + 4, 1),
                    O.gap(0, 1100 - 1051 - 1), O.mark(0, 1)]
    assert player.stats["walks_of_a_store"] == 1
    assert player.stats["store_stos_as_mov"] == 1
    assert player.stats["btr_not_accessed"] == 1


def test_a_table_linked_mid_run_is_written_through_the_direct_map(tmp_path):
    """A frame that becomes a table after the start with contents guest memory does not hold
    (they were written while the recorder did not track it) gets the differing words by 4-byte
    movs through the direct map, after its linking store; the cr3 load that links a new
    directory waits for the tables it links (filled under the previous cr3)."""
    new_pt, new_pd = 0x5000, 0x6000
    evs = TR.events()
    end = evs.pop()
    pt = bytearray(4096)
    pt[8:12] = (0x300000 | TR.USER_PTE).to_bytes(4, "little")
    pd = bytearray(4096)
    pd[0x10 * 4:0x10 * 4 + 4] = (new_pt | TR.USER_PDE).to_bytes(4, "little")
    pd[768 * 4:768 * 4 + 4] = TR.KERNEL_LARGE.to_bytes(4, "little")
    evs += [
        F.Event(F.CR3, 0, 0, 0, 0, 1060, 0, new_pd, 0, new_pd),
        F.Event(F.TABLE, 2, 0, 0, 4096, 1060, 0, new_pd, 0, 0, bytes(pd)),
        F.Event(F.TABLE, 1, 0, 0, 4096, 1060, 0, new_pt, 0x04000000, 0, bytes(pt)),
        F.Event(F.WALK, 0, 1, F.USER, 0, 1070, 0x08048000, 0, 0x04002000, 0),
        end,
    ]
    player = replay.Replayer(TR.write(tmp_path / "t.rec", evs))
    first_cr3 = player.cr3
    ops = list(player.ops())
    start = ops.index(O.load(0, TR.USER_VA + 4, 1)) + 2
    direct = 0xC0000000
    assert ops[start:] == [
        O.store(0, direct + new_pd + 0x40, 4, new_pt | TR.USER_PDE),
        O.store(0, direct + new_pd + 768 * 4, 4, TR.KERNEL_LARGE),
        O.store(0, direct + new_pt + 8, 4, 0x300000 | TR.USER_PTE),
        O.cr3(0, new_pd),
        O.gap(0, 9),
        O.load(0, 0x04002000, 1),
        O.gap(0, 1100 - 1070 - 1), O.mark(0, 1)]
    assert player.stats["table_words_rewritten"] == 3
    run = GuestRun(player.guest, [first_cr3], iter(ops))
    native = NativeMachine(run.guest.mem, run.guest.mode, run.cr3s)
    native.run(run.ops)
    assert native.counters.native_page_fault == 0


def test_prefix_ends_the_phase(tiny):
    """events=N replays the first N events after the snapshot (the first mark is one) and closes
    the phase."""
    ops = list(replay.Replayer(tiny, limit=3).ops())
    assert ops == [O.load(0, TR.USER_VA, 1), O.gap(0, 9),
                   O.store(0, 0xC0000000 + TR.T + 8, 4, TR.DATA2 | TR.USER_PTE), O.mark(0, 1)]


def test_spec_and_shipped_names(tiny):
    assert parse_spec("guest:reclaim-686") == ("guest", {"recording": "reclaim-686"})
    assert parse_spec("guest:/a,b/c.rec") == ("guest", {"recording": "/a,b/c.rec"})
    assert parse_spec("guest:recording=x.rec,events=5") == ("guest", {"recording": "x.rec",
                                                                      "events": "5"})
    assert set(REAL_GUESTS) <= set(replay.shipped())  # the default rows are shipped recordings
    assert {F.open_recording(p).header["entry_bytes"] for p in replay.shipped().values()} == {4, 8}


def test_default_comparison_has_one_seed_of_each_shipped_recording():
    exp = build()
    assert [n for n, p in DEFAULT_WORKLOADS if n == "guest"] == ["guest"] * len(REAL_GUESTS)
    guest_cells = [c for c in exp.cells() if c.workload.name == "guest"]
    assert len(guest_cells) == len(REAL_GUESTS) * len(exp.policies)
    assert {c.seed for c in guest_cells} == {0}
    assert {c.seed for c in exp.cells() if c.workload.name == "kscand"} == {0, 1, 2}


def test_cache_key_follows_the_recording_bytes(tmp_path):
    path = TR.write(tmp_path / "k.rec")
    params = workload_params("guest", {"recording": str(path)})
    policy = Entry("always-emulate", {})
    first = Cell(policy, Entry("guest", params), 0).digest()
    evs = TR.events()
    evs[4] = F.Event(F.WALK, 0, 1, F.USER, 0, 1001, 0x08048010, 0, TR.USER_VA + 8, 0)
    TR.write(path, evs)
    assert Cell(policy, Entry("guest", params), 0).digest() != first


# -- the shipped recordings ---------------------------------------------------------------------
STORE_PREFIX = 150_000
"""Events of each shipped recording checked for store translation (the whole files were checked
when the rule was made: docs/real-guests.md)."""
CONFORMANCE_PREFIX = 6_000
OTHER_PREFIX = 1_500
"""The shipped recordings outside the default rows (demand-paging, shared-file, mixed) are
checked on a shorter prefix: 13 policies x 10 recordings x 6,000 events took 8 minutes."""
"""Events of each shipped recording replayed under every policy with the invariants checked
after every operation (a few seconds per policy; the whole recordings run in results/real)."""


@pytest.mark.parametrize("name", sorted(replay.shipped()))
def test_every_store_translates_to_its_recorded_address(name):
    rec = F.open_recording(replay.shipped()[name])
    player = replay.Replayer(replay.shipped()[name])
    mem, mode = player.guest.mem, mode_for(player.pae)
    cr3 = player.cr3
    stores = 0
    for i, e in enumerate(rec.events()):
        if i < player.snapshot_events:
            continue
        if i > STORE_PREFIX:
            break
        if e.kind == F.CR3:
            cr3 = e.value
        elif e.kind == F.TABLE:
            page = mem.add_table_page(e.pa >> 12)
            for j in range(len(e.payload) // 4):
                page[((e.pa & 0xFFF) >> 2) + j] = int.from_bytes(e.payload[4 * j:4 * j + 4],
                                                                  "little")
        elif e.kind == F.STORE:
            w = walk(mem, mode, cr3, e.va, True, False, set_bits=False)
            assert w is not None and (w.gfn << 12) | (e.va & 0xFFF) == e.pa, (name, i)
            mem.add_table_page(e.pa >> 12)
            mem.write(e.pa, e.arg, e.value)
            stores += 1
    assert stores > 1000


@functools.cache
def _table_frames(name):
    """Every frame the recording names as a table (its A and D may differ under tlb_like)."""
    return frozenset(e.pa >> 12 for e in F.open_recording(replay.shipped()[name]).events()
                     if e.kind == F.TABLE)


def _image(mem, frames, mask):
    out = {}
    for w, v in mem.image().items():
        if mask and (w >> 10) in frames:
            v &= ~(A | D)
        if v:
            out[w] = v
    return out


def _prefix(name: str) -> dict:
    return {"recording": name,
            "events": CONFORMANCE_PREFIX if name in REAL_GUESTS else OTHER_PREFIX}


@pytest.fixture(scope="module")
def native_reference():
    """The prefix of a shipped recording run natively, once per recording for every policy's
    test: ``(name, mask) -> (operations, native counters, page faults, table frames, memory image
    with A and D masked in those frames if mask)``."""
    made: dict[str, tuple] = {}

    def reference(name: str, mask: bool) -> tuple:
        if name not in made:
            ref = make_workload("guest", _prefix(name)).build(random.Random(0))
            native = NativeMachine(ref.guest.mem, ref.guest.mode, ref.cr3s)
            native_ops = []
            for op in ref.ops:
                native_ops.append(op)
                native.step(op)
            made[name] = (native_ops, native.counters.as_dict(),
                          native.counters.native_page_fault, ref.guest.mem,
                          set(ref.guest.mem.tables) | _table_frames(name), {})
        native_ops, counters, faults, mem, frames, images = made[name]
        if mask not in images:
            images[mask] = _image(mem, frames, mask)
        return native_ops, counters, faults, frames, images[mask]

    return reference


@pytest.mark.parametrize("spec", sorted(policies()))
@pytest.mark.parametrize("name", sorted(replay.shipped()))
def test_shipped_recording_conforms_under_every_policy(name, spec, native_reference):
    """The native-equivalence property and the invariants (as tests/test_conformance.py states
    them) on the first CONFORMANCE_PREFIX events of each shipped recording: guest memory under
    the policy equals native (A and D masked in every table frame for tlb_like policies), the
    guest takes the page faults it takes natively (none: every recorded access is mapped), the
    native counts agree, and check_shadow holds after every operation. The native run is made
    once per recording (``native_reference``)."""
    params = _prefix(name)
    workload = make_workload("guest", params)
    policy = make_policy(spec)
    if getattr(policy, "needs_trace", False):
        from bench.oracle import trace

        policy.use_trace(trace(workload.build(random.Random(0))))
    run = workload.build(random.Random(0))
    machine = executor_for(run, policy)
    shadow = isinstance(machine, ShadowMachine)
    ops = []
    for op in run.ops:  # generated while it runs: the replay reads the memory it writes
        ops.append(op)
        machine.step(op)
        if shadow:
            check_shadow(machine)
    mask = bool(getattr(policy, "tlb_like", False))
    native_ops, native_counters, native_faults, frames, native_image = native_reference(name, mask)
    assert ops == native_ops
    assert native_faults == 0
    if shadow:
        assert machine.counters.pf_guest + machine.counters.pf_bypassed == 0
    keys = [k for k in NATIVE_COUNTERS if k != "native_page_fault"]
    got = machine.counters.as_dict()
    assert {k: got[k] for k in keys} == {k: native_counters[k] for k in keys}
    assert _image(run.guest.mem, frames, mask) == native_image


def test_validation_counts_on_the_tiny_recording(tiny):
    """bench.record.validate on the tiny recording: two writes reach T (the mov mapping a third
    page, the btr), both user-pte writes; the btr clears A of a present, young pte; no fixmap
    table, so no kmap mapping; from the first mark (1000) to the last (1100): 100 instructions; no CR3 load, one INVLPG (1e7 per 1e9)."""
    from bench.record import validate

    row = validate.measure_recording(str(tiny))
    assert row["pt_stores"] == 2
    assert row["user_pte_writes_by_insn"] == {"btr": 0.5, "mov": 0.5}
    assert row["accessed_clears"] == 1
    assert row["kmap_mappings"] == 0 and row["fixmap_share"] == 0.0
    assert row["instructions"] == 100
    assert row["cr3_per_1e9"] == 0 and row["invlpg_per_1e9"] == 1e7


def test_the_replay_and_the_decoder_are_in_the_cell_digest(tmp_path):
    """bench/record holds the recorder (outside the cells' key) and the decoder and replay,
    which run inside a guest cell: an edit to either recomputes the cells, one to the recorder
    does not."""
    import shutil
    from pathlib import Path

    from bench import fingerprint

    root = Path(__file__).resolve().parent.parent
    project = tmp_path / "p"
    for package in fingerprint.PACKAGES:
        shutil.copytree(root / package, project / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    digest = fingerprint.core_digest.__wrapped__
    before = digest(project)
    with open(project / "bench" / "record" / "recorder.py", "a") as handle:
        handle.write("\n# recorder only\n")
    assert digest(project) == before
    for name in ("replay.py", "format.py"):
        with open(project / "bench" / "record" / name, "a") as handle:
            handle.write("\n")
        after = digest(project)
        assert after != before, name
        before = after


def test_labels_name_the_recorded_guests_one_seed():
    """A default run's records: kscand over 3 seeds, a recorded guest over 1. A chart or summary
    must not say 3 seeds of the guest."""
    from bench.charts import captions, data

    recs = [{"workload_label": "kscand", "workload": "kscand", "seed": s} for s in range(3)]
    recs.append({"workload_label": "guest[recording=x]", "workload": "guest", "seed": 0})
    assert data.seeds_text(recs) == "3 seeds (1 for the recorded guests)"
    assert data.seeds_text(recs[:3]) == "3 seeds"
    assert captions._spread(recs[3:]) == "min-max over 1 seed"


def test_an_installed_package_carries_the_shipped_recordings(tmp_path):
    """setup.py's build_py copies recordings/ into the package (bench/_recordings/): an installed
    ``shadowbench`` run from any folder finds the same files the checkout ships (the default
    comparison replays them), byte for byte."""
    lib = tmp_path / "lib"
    env = dict(os.environ, SHADOWBENCH_PURE="1")  # build_py only: no compile
    built = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    code = ("import json; from bench.record import replay; "
            "print(json.dumps({n: str(p) for n, p in replay.shipped().items()}))")
    found = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                           env=dict(env, PYTHONPATH=str(lib)), capture_output=True, text=True,
                           timeout=120)
    assert found.returncode == 0, found.stderr
    installed = {n: Path(p) for n, p in json.loads(found.stdout).items()}
    assert set(installed) == set(replay.shipped()) and set(REAL_GUESTS) <= set(installed)
    for name, path in installed.items():
        assert path.parent == lib / "bench" / "_recordings"
        assert path.read_bytes() == replay.shipped()[name].read_bytes()
