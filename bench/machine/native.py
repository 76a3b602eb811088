"""The native executor: the reference for what the guest must see, and the native cycle counts.

Every access walks the guest page tables as the hardware does (bench.machine.paging.walk: A on
every level used, D on the leaf for writes). No TLB is modelled natively: it is the strictest
architectural behaviour, under which an access always leaves A (and D) set, and it is what an
emulating shadow MMU reproduces exactly, because KVM keeps an spte only while its gpte has A=1
(and a writable spte only while D=1). See docs/model.md.

An access whose walk fails is a page fault the guest kernel takes: the operation has no effect
(the workload emits the fault handler's operations and the retried access itself).
"""

from __future__ import annotations

from collections.abc import Iterable

from bench.errors import BenchError
from bench.machine.counters import Counters
from bench.machine.memory import GuestMemory
from bench.machine.paging import Mode, Walk, walk
from bench.ops import BTR, BTS, COMPUTE, CR3, INVLPG, LOAD, MARK, PAGE_OFFSET, STORE, OpTuple


def apply_write(mem: GuestMemory, gpa: int, kind: int, width: int, value: int) -> None:
    """Perform a STORE (``width`` bytes of ``value``) or a locked BTR/BTS (bit ``width``) at gpa."""
    if kind == STORE:
        if width == 4 and not gpa & 3:
            mem.write32(gpa, value)
        else:
            mem.write(gpa, width, value)
        return
    word = gpa & ~3
    old = mem.read32(word)
    mem.write32(word, old & ~(1 << width) if kind == BTR else old | (1 << width))


def count_native(c: Counters, kind: int, arg: int) -> None:
    """Count what one operation costs natively (the same under every executor)."""
    if kind == LOAD:
        c.native_load += 1
    elif kind == STORE:
        c.native_store += 1
    elif kind == BTR or kind == BTS:
        c.native_locked_rmw += 1
    elif kind == INVLPG:
        c.native_invlpg += 1
    elif kind == CR3:
        c.native_cr3 += 1
    elif kind == COMPUTE:
        c.native_compute_cycles += arg


def check_op(kind: int, cpu: int, addr: int, arg: int, cpus: int) -> None:
    """Reject an operation the machine cannot execute (bad cpu, width, bit or alignment)."""
    if not 0 <= cpu < cpus:
        raise BenchError(f"operation on cpu {cpu}, but the guest has cpus 0..{cpus - 1}")
    if kind in (STORE, LOAD):
        if arg not in (1, 2, 4, 8):
            raise BenchError(f"access width {arg} is not 1, 2, 4 or 8")
        if (addr & 0xFFF) + arg > 0x1000:
            raise BenchError(f"access at {addr:#x} of {arg} bytes crosses a page boundary")
    elif kind in (BTR, BTS):
        if addr & 3 or not 0 <= arg < 32:
            raise BenchError("locked bit operation needs a 4-byte aligned address and bit 0..31")
    elif kind == COMPUTE and arg < 0:
        raise BenchError(f"compute cycles must not be negative, got {arg}")


class NativeMachine:
    """Runs operations natively on guest memory: the reference execution."""

    def __init__(self, mem: GuestMemory, mode: Mode, cr3s: list[int]) -> None:
        self.mem = mem
        self.mode = mode
        self.cr3 = list(cr3s)
        self.counters = Counters()
        self.marks: list[tuple[int, dict[str, int]]] = []

    def step(self, op: OpTuple) -> None:
        kind, cpu, addr, arg, value = op[0], op[1], op[2], op[3], op[4]
        c = self.counters
        count_native(c, kind, arg)
        if kind == LOAD or kind == STORE or kind == BTR or kind == BTS:
            write = kind != LOAD
            user = addr < PAGE_OFFSET
            w = walk(self.mem, self.mode, self.cr3[cpu], addr, write, user)
            if w is None:
                c.native_page_fault += 1
                return
            self._walked(w, write, user)
            if write:
                gpa = (w.gfn << 12) | (addr & 0xFFF)
                apply_write(self.mem, gpa, kind, arg, value)
                self._written(gpa)
        elif kind == CR3:
            self.cr3[cpu] = addr
            self._loaded_cr3(addr)
        elif kind == MARK:
            self.marks.append((arg, c.as_dict()))

    # observation points for subclasses that record the run (bench.oracle.Recorder)
    def _walked(self, w: Walk, write: bool, user: bool) -> None:
        """A successful guest walk (before the write it translated, if any)."""

    def _written(self, gpa: int) -> None:
        """A write reached guest memory at ``gpa``."""

    def _loaded_cr3(self, cr3: int) -> None:
        """The vCPU loaded ``cr3``."""

    def run(self, ops: Iterable[OpTuple]) -> Counters:
        step = self.step
        for op in ops:
            step(op)
        return self.counters
