"""x86-32 guest paging, non-PAE (2 levels, 4-byte entries) and PAE (PDPT + 2 levels, 8-byte entries).

The walker follows the hardware rules the kernel relies on (Intel SDM vol. 3 ch. 4; R3
include/asm-i386/pgtable*.h): a translation through an entry sets its accessed bit (bit 5); a
write sets the dirty bit (bit 6) of the leaf (pte, or a PS=1 directory entry); a write through a
read-only leaf faults (CR0.WP=1, as Linux sets it); a user-mode access through a supervisor
entry faults. PAE PDPT entries have no accessed bit and are not written.
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from bench.machine.memory import GuestMemory

P: Final = 0x001
RW: Final = 0x002
US: Final = 0x004
A: Final = 0x020
D: Final = 0x040
PS: Final = 0x080
G: Final = 0x100
BIT_ACCESSED: Final = 5
"""_PAGE_BIT_ACCESSED (R3 include/asm-i386/pgtable.h)."""

ADDR_MASK_32: Final = 0xFFFFF000
ADDR_MASK_PAE: Final = 0x000FFFFFFFFFF000
"""PAE entries carry up to 52 address bits (KVM's PT64_BASE_ADDR_MASK); real 32-bit CPUs use 36."""


class Mode(NamedTuple):
    """A paging mode's geometry."""

    pae: bool
    entry_size: int  # bytes per entry
    entries: int  # entries per table page
    pte_shift: int  # log2 of entries per leaf table (10 or 9)
    large_shift: int  # bytes mapped by one directory entry: 22 (4 MiB) or 21 (2 MiB)
    addr_mask: int


NONPAE = Mode(False, 4, 1024, 10, 22, ADDR_MASK_32)
PAE = Mode(True, 8, 512, 9, 21, ADDR_MASK_PAE)


def mode_for(pae: bool) -> Mode:
    return PAE if pae else NONPAE


def fields_repr(obj: Any, fields: tuple[str, ...]) -> str:
    """``Name(field=value, ...)``: the repr of the core's plain record classes (Walk, and the
    PteWrite and WriteFault of bench.machine.events)."""
    return f"{type(obj).__name__}({', '.join(f'{f}={getattr(obj, f)!r}' for f in fields)})"


_WALK_FIELDS: Final = ("gfn", "pt_gfn", "pd_gfn", "leaf_gpa", "leaf", "writable", "user", "dirty",
                       "dirtied")


class Walk:
    """The result of a successful guest walk.

    ``pt_gfn`` is the gfn of the leaf page table (None when a PS=1 directory entry maps the page),
    ``pd_gfn`` the gfn of the page directory holding the directory entry, ``leaf_gpa``/``leaf`` the
    leaf entry's gpa and value after the walk's A/D updates, ``writable``/``user`` the combined
    permissions, ``dirty`` whether the leaf's D bit is set and ``dirtied`` whether this walk set
    it (a write through a clean leaf). (A plain class: a native one in the compiled core.)
    """

    __slots__ = _WALK_FIELDS

    def __init__(self, gfn: int, pt_gfn: int | None, pd_gfn: int, leaf_gpa: int, leaf: int,
                 writable: bool, user: bool, dirty: bool, dirtied: bool) -> None:
        self.gfn = gfn
        self.pt_gfn = pt_gfn
        self.pd_gfn = pd_gfn
        self.leaf_gpa = leaf_gpa
        self.leaf = leaf
        self.writable = writable
        self.user = user
        self.dirty = dirty
        self.dirtied = dirtied

    def __repr__(self) -> str:
        return fields_repr(self, _WALK_FIELDS)


def directory_entry_gpa(mem: GuestMemory, mode: Mode, cr3: int, vaddr: int) -> int:
    """The gpa of the page-directory entry for ``vaddr`` (reading the PDPT under PAE); -1 if none."""
    if mode.pae:
        pdpte = mem.read_entry((cr3 & 0xFFFFFFE0) + ((vaddr >> 30) << 3), True)
        if not pdpte & P:
            return -1
        return (pdpte & ADDR_MASK_PAE) + (((vaddr >> 21) & 0x1FF) << 3)
    return (cr3 & ADDR_MASK_32) + ((vaddr >> 22) << 2)


def walk(mem: GuestMemory, mode: Mode, cr3: int, vaddr: int, write: bool, user: bool,
         set_bits: bool = True) -> Walk | None:
    """Translate ``vaddr`` as the hardware walker does; None is a guest page fault.

    With ``set_bits`` the accessed bits of the directory entry and pte, and the dirty bit of the
    leaf on a write, are set in guest memory, as the CPU (or KVM's walk_addr, K26
    paging_tmpl.h:178-184) does. A walk that faults changes nothing.

    This is the simulator's hottest function: the entry reads of GuestMemory.read_entry are
    inlined for page-table pages held densely (every page the guest allocated as a table).
    """
    pae = mode.pae
    tables = mem.tables
    if pae:
        gpa = (cr3 & 0xFFFFFFE0) + ((vaddr >> 30) << 3)
        page = tables.get(gpa >> 12)
        if page is not None:
            i = (gpa & 0xFFF) >> 2
            pdpte = page[i] | (page[i + 1] << 32)
        else:
            pdpte = mem.read_entry(gpa, True)
        if not pdpte & P:
            return None
        pde_gpa = (pdpte & ADDR_MASK_PAE) + (((vaddr >> 21) & 0x1FF) << 3)
    else:
        pde_gpa = (cr3 & ADDR_MASK_32) + ((vaddr >> 22) << 2)
    page = tables.get(pde_gpa >> 12)
    if page is not None:
        i = (pde_gpa & 0xFFF) >> 2
        pde = page[i] | (page[i + 1] << 32) if pae else page[i]
    else:
        pde = mem.read_entry(pde_gpa, pae)
    if not pde & P or (user and not pde & US):
        return None
    mask = mode.addr_mask
    if pde & PS:
        if write and not pde & RW:
            return None
        dirtied = bool(write and not pde & D)
        if set_bits:
            want = pde | A | (D if write else 0)
            if want != pde:
                mem.write32(pde_gpa, want & 0xFFFFFFFF)
                pde = want
        span = (1 << (mode.large_shift - 12)) - 1
        gfn = ((pde & mask) >> 12 & ~span) + ((vaddr >> 12) & span)
        return Walk(gfn, None, pde_gpa >> 12, pde_gpa, pde, bool(pde & RW), bool(pde & US),
                    bool(pde & D), dirtied)
    pte_gpa = (pde & mask) + (((vaddr >> 12) & (mode.entries - 1)) * mode.entry_size)
    page = tables.get(pte_gpa >> 12)
    if page is not None:
        i = (pte_gpa & 0xFFF) >> 2
        pte = page[i] | (page[i + 1] << 32) if pae else page[i]
    else:
        pte = mem.read_entry(pte_gpa, pae)
    if not pte & P or (user and not pte & US):
        return None
    writable = bool(pde & RW and pte & RW)
    if write and not writable:
        return None
    dirtied = bool(write and not pte & D)
    if set_bits:
        if not pde & A:
            mem.write32(pde_gpa, (pde | A) & 0xFFFFFFFF)
        want = pte | A | (D if write else 0)
        if want != pte:
            mem.write32(pte_gpa, want & 0xFFFFFFFF)
            pte = want
    return Walk((pte & mask) >> 12, (pde & mask) >> 12, pde_gpa >> 12, pte_gpa, pte, writable,
                bool(pde & US and pte & US), bool(pte & D), dirtied)
