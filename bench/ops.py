"""Guest operations: the one vocabulary shared by workloads, both executors, trace files and tests.

An operation is a plain 6-tuple ``(kind, cpu, addr, arg, value, insn)`` (``Op`` names the fields;
workloads may yield bare tuples of the same layout, which compare equal):

========  =====================  ==========================  ========  =========================
kind      addr                   arg                         value     insn (instruction class)
========  =====================  ==========================  ========  =========================
STORE     guest-virtual address  width in bytes (1, 2, 4, 8) value     mov, xchg, cmpxchg, ...
BTR       guest-virtual address  bit number (0..31)          0         btr  (``lock btrl``)
BTS       guest-virtual address  bit number (0..31)          0         bts  (``lock btsl``)
LOAD      guest-virtual address  width in bytes              0         mov
INVLPG    guest-virtual address  0                           0         invlpg
CR3       new cr3 value          0                           0         mov-cr3
COMPUTE   0                      native cycles               insns     compute
MARK      0                      phase number                0         mark
========  =====================  ==========================  ========  =========================

Consecutive operations of one vCPU are consecutive guest instructions, unless a COMPUTE lies
between them: it stands for ``value`` instructions that touch no page table (0: an unknown
number, more than any emulation batch covers) costing ``arg`` native cycles. Workloads put one
wherever the kernel code they model runs other instructions between two operations (``gap``).
Only Xen's batched emulation reads the count (bench.machine.shadow, ``_emulate_extra``): after an
emulated page-table write it emulates the next few *instructions*, not the next operations.

MARK is not an instruction: it costs nothing and changes nothing; it tells the executors that a
phase of the workload (a kscand pass) ended, so counters can be recorded over guest time.

BTR and BTS are locked read-modify-write bit operations on the aligned 4-byte word at ``addr``
(``test_and_clear_bit`` / ``test_and_set_bit``, R3 include/asm-i386/bitops.h:171-180). An access
is a user-mode access when its address is below PAGE_OFFSET (0xC0000000).

Operations are produced lazily (iterators), so memory does not grow with run length.
The text form is documented in docs/trace-format.md and implemented in bench.trace.
"""

from __future__ import annotations

from typing import Final, NamedTuple

STORE: Final = 0
BTR: Final = 1
BTS: Final = 2
LOAD: Final = 3
INVLPG: Final = 4
CR3: Final = 5
COMPUTE: Final = 6
MARK: Final = 7
KIND_NAMES: tuple[str, ...] = ("store", "btr", "bts", "load", "invlpg", "cr3", "compute", "mark")
KIND_BY_NAME: dict[str, int] = {name: kind for kind, name in enumerate(KIND_NAMES)}
WRITE_KINDS = frozenset((STORE, BTR, BTS))

PAGE_OFFSET: Final = 0xC0000000
"""Start of the kernel's direct mapping; addresses below it are user-mode accesses."""

STORE_INSNS = ("mov", "xchg", "cmpxchg", "cmpxchg8b", "or", "and")
"""Instruction classes a STORE may carry (what the emulator sees; 3.x flags all of them as
page-table writing, K36 arch/x86/kvm/emulate.c)."""


OpTuple = tuple[int, int, int, int, int, str]
"""An operation's type as the executors take it (a bare tuple or an ``Op``)."""


class Op(NamedTuple):
    """One guest operation on one vCPU (see the module docstring for the field meanings)."""

    kind: int
    cpu: int
    addr: int
    arg: int
    value: int
    insn: str


def store(cpu: int, vaddr: int, width: int, value: int, insn: str = "mov") -> Op:
    return Op(STORE, cpu, vaddr, width, value, insn)


def btr(cpu: int, vaddr: int, bit: int) -> Op:
    return Op(BTR, cpu, vaddr, bit, 0, "btr")


def bts(cpu: int, vaddr: int, bit: int) -> Op:
    return Op(BTS, cpu, vaddr, bit, 0, "bts")


def load(cpu: int, vaddr: int, width: int = 4) -> Op:
    return Op(LOAD, cpu, vaddr, width, 0, "mov")


def invlpg(cpu: int, vaddr: int) -> Op:
    return Op(INVLPG, cpu, vaddr, 0, 0, "invlpg")


def cr3(cpu: int, value: int) -> Op:
    return Op(CR3, cpu, value, 0, 0, "mov-cr3")


def compute(cpu: int, cycles: int, insns: int = 0) -> Op:
    return Op(COMPUTE, cpu, 0, cycles, insns, "compute")


def gap(cpu: int, insns: int) -> Op:
    """``insns`` instructions of kernel code between two operations that touch no page table
    (their native cost is not modelled: 0 cycles)."""
    return Op(COMPUTE, cpu, 0, 0, insns, "compute")


def mark(cpu: int, phase: int) -> Op:
    return Op(MARK, cpu, 0, phase, 0, "mark")
