"""What the shadow MMU tells a policy at a decision point (bench.policy re-exports both).

Built once per trapping write, so they live in the compiled core (bench/_compiled.py) as native
classes: a policy reads their fields as attributes, as from any object. They are plain classes
with a written-out ``__init__``, not dataclasses: mypyc keeps a dataclass's generated
``__init__`` interpreted, which cost 14% of a batched-emulation cell (callgrind).
"""

from __future__ import annotations

from typing import ClassVar

from bench.machine.paging import fields_repr


class WriteFault:
    """A guest write that hit a write-protected gfn (the fault, before any emulation).

    ``old_word``/``new_word`` are the aligned 4-byte word the instruction modifies, before and
    after; ``old_gpte``/``new_gpte`` the whole guest pte (8 bytes under PAE) containing it.
    ``leaf_only`` says every shadow page of the gfn is a leaf (level 1) page; ``can_unsync`` that
    KVM's kvm_unsync_page would accept it (leaf only, a single role).
    """

    FIELDS: ClassVar[tuple[str, ...]] = (
        "cpu", "vaddr", "gpa", "gfn", "width", "insn", "bit", "old_word", "new_word", "old_gpte",
        "new_gpte", "pae", "user", "leaf_only", "can_unsync")

    def __init__(self, cpu: int, vaddr: int, gpa: int, gfn: int, width: int, insn: str, bit: int,
                 old_word: int, new_word: int, old_gpte: int, new_gpte: int, pae: bool,
                 user: bool, leaf_only: bool, can_unsync: bool) -> None:
        self.cpu = cpu
        self.vaddr = vaddr
        self.gpa = gpa
        self.gfn = gfn
        self.width = width
        self.insn = insn
        self.bit = bit
        self.old_word = old_word
        self.new_word = new_word
        self.old_gpte = old_gpte
        self.new_gpte = new_gpte
        self.pae = pae
        self.user = user
        self.leaf_only = leaf_only
        self.can_unsync = can_unsync

    def __repr__(self) -> str:
        return fields_repr(self, self.FIELDS)

    @property
    def clears_accessed(self) -> bool:
        """ptep_test_and_clear_young on a present gpte: a btr of bit 5 (``lock btrl $5``).

        Recognised by the instruction, as the seed discussion proposes ("once we detected it from
        the eip address"), whether or not the bit was set: page_referenced clears every mapping of
        a pte_chain page unconditionally, young or not (R3 mm/rmap.c).
        """
        return self.insn == "btr" and self.bit == 5 and self.old_gpte & 1 == 1


class PteWrite:
    """One write reaching kvm_mmu_pte_write (an emulated write to a gfn that has shadow pages).

    ``offset`` is the byte offset in the page, ``bytes`` the width written, ``pte_size`` the guest
    pte size (4 or 8), ``extra`` whether it was emulated in an exit another instruction caused,
    ``walker`` whether it is the guest walker's dirty-bit update (not an instruction).
    """

    FIELDS: ClassVar[tuple[str, ...]] = (
        "cpu", "gpa", "gfn", "offset", "bytes", "pte_size", "insn", "old_gpte", "new_gpte",
        "extra", "walker")

    def __init__(self, cpu: int, gpa: int, gfn: int, offset: int, bytes: int, pte_size: int,
                 insn: str, old_gpte: int, new_gpte: int, extra: bool, walker: bool) -> None:
        self.cpu = cpu
        self.gpa = gpa
        self.gfn = gfn
        self.offset = offset
        self.bytes = bytes
        self.pte_size = pte_size
        self.insn = insn
        self.old_gpte = old_gpte
        self.new_gpte = new_gpte
        self.extra = extra
        self.walker = walker

    def __repr__(self) -> str:
        return fields_repr(self, self.FIELDS)

    @property
    def misaligned(self) -> bool:
        """KVM's rule (K20 and later): ``(offset ^ (offset + bytes - 1)) & ~(pte_size - 1)``."""
        return bool((self.offset ^ (self.offset + self.bytes - 1)) & ~(self.pte_size - 1))
