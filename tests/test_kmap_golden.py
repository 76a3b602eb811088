"""Golden trap counts of the kmap microbenchmark per kernel variant (domain.md 2.2).

Worked out by hand from workloads/_kmap.py and the kernel code it follows: after the warm-up
(MARK 0) the fixmap page table and the user page tables are shadowed, so under always-emulate
every write to them traps and is emulated. Per iteration (kmap_atomic + btr + kunmap_atomic):

- fixmap writes: set_pte is 2 stores under PAE and 1 without; pte_clear the same.
  rhel3: 0 when the slot already maps the same page table (tables=same), else a set_pte;
  2.6-proposed: a set_pte every time (only its invlpg is skipped for an unchanged pte);
  rhel3-debug: set_pte + pte_clear; 2.4: set_pte; 2.6.12: set_pte (+ pte_clear with
  debug_highmem); 2.6.20: set_pte + pte_clear.
- user page-table writes: 1, the btr on the shadowed user pte.
"""

from __future__ import annotations

import random

import pytest

from bench.machine.shadow import ShadowMachine
from bench.policy import Decision, WriteFault
from bench.registry import make_workload
from policies.always_emulate import AlwaysEmulate

# (kernel, debug_highmem) -> (set_pte on a new page?, set_pte on the same page?, kunmap clears?)
VARIANTS = {
    ("rhel3", False): (True, False, False),
    ("rhel3-debug", False): (True, True, True),
    ("2.4", False): (True, True, False),
    ("2.6.12", False): (True, True, False),
    ("2.6.12", True): (True, True, True),
    ("2.6.20", False): (True, True, True),
    ("2.6-proposed", False): (True, True, False),
}


class Recorder(AlwaysEmulate):
    """always-emulate that records (phase, gfn) of every trapping write."""

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.faults: list[tuple[int, int]] = []

    def on_write_fault(self, fault: WriteFault) -> Decision:
        self.faults.append((len(self.mmu.marks), fault.gfn))
        return Decision.EMULATE


def expected_per_iteration(kernel: str, debug: bool, pae: bool, tables: str) -> int:
    new_set, same_set, clear = VARIANTS[(kernel, debug)]
    halves = 2 if pae else 1
    sets = new_set if tables == "different" else same_set
    return halves * (int(sets) + int(clear))


@pytest.mark.parametrize("kernel,debug", sorted(VARIANTS))
@pytest.mark.parametrize("pae", [True, False])
@pytest.mark.parametrize("tables", ["same", "different"])
def test_fixmap_writes_per_mapping(kernel: str, debug: bool, pae: bool, tables: str) -> None:
    w = make_workload("kmap", {"kernel": kernel, "debug_highmem": debug, "pae": pae,
                               "tables": tables, "quick": True})
    run = w.build(random.Random(1))
    policy = Recorder()
    m = ShadowMachine(run.guest.mem, run.guest.mode, run.cr3s, policy)
    m.run(run.ops)
    assert [phase for phase, _ in m.marks] == [0, 1]
    iterations = run.sizes["iterations"]
    fixmap = run.guest.fixmap_pt
    measured = [gfn for phase, gfn in policy.faults if phase == 1]
    fix = sum(1 for gfn in measured if gfn == fixmap)
    user = len(measured) - fix
    assert fix == iterations * expected_per_iteration(kernel, debug, pae, tables)
    assert user == iterations  # the btr on a shadowed user pte


def test_examples_from_the_brief() -> None:
    assert expected_per_iteration("2.6.20", False, True, "different") == 4
    assert expected_per_iteration("rhel3", False, True, "same") == 0
    assert expected_per_iteration("rhel3-debug", False, True, "same") == 4
    assert expected_per_iteration("rhel3-debug", False, False, "different") == 2


def test_smp_uses_each_cpus_own_slot() -> None:
    """With 2 CPUs alternating on one page table, rhel3's same-value shortcut still applies:
    each CPU's slot keeps mapping that table."""
    run = make_workload("kmap", {"tables": "same", "cpus": 2, "quick": True}).build(
        random.Random(1))
    policy = Recorder()
    ShadowMachine(run.guest.mem, run.guest.mode, run.cr3s, policy).run(run.ops)
    measured = [gfn for phase, gfn in policy.faults if phase == 1]
    assert run.guest.fixmap_pt not in measured
    slots = {run.guest.kmap_pte_gpa(run.guest.kmap_slot(30, c)) for c in (0, 1)}
    assert len(slots) == 2
