"""Invariant checks on the shadow MMU (on in tests after every operation, off by default).

- every spte of an in-sync indirect leaf page corresponds to a present guest pte with A=1 mapping
  the same frame (domain.md 3.1); a writable one also needs the gpte writable and dirty;
- every spte of a direct page maps the frame its index says;
- no writable spte maps a write-protected gfn (one with an in-sync indirect shadow page);
- the rmap holds exactly the present leaf sptes; every linked child is registered and its parent
  link is recorded on both sides; unsync pages are tracked in ``unsync_pages``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.machine.paging import ADDR_MASK_PAE

if TYPE_CHECKING:
    from bench.machine.shadow import ShadowMachine


class InvariantError(AssertionError):
    """The shadow MMU broke one of its invariants (a simulator bug, never bad input)."""


def check_shadow(m: ShadowMachine) -> None:
    """Raise InvariantError if any invariant of the module docstring fails."""
    mem, pae = m.mem, m.pae
    rmap_seen: dict[int, set] = {}
    for key, sp in m.pages.items():
        if sp.key != key:
            raise InvariantError(f"{sp!r} registered under {key}")
        if not sp.direct and sp not in m.by_gfn.get(sp.gfn, ()):
            raise InvariantError(f"{sp!r} missing from by_gfn")
        if sp.unsync != (sp in m.unsync_pages):
            raise InvariantError(f"{sp!r} unsync flag and unsync_pages disagree")
        for parent, idx in sp.parents:
            if parent.children.get(idx) is not sp:
                raise InvariantError(f"{sp!r} lists parent {parent!r}[{idx}] which does not link it")
        for idx, child in sp.children.items():
            if (sp, idx) not in child.parents:
                raise InvariantError(f"{sp!r}[{idx}] links {child!r} without a parent record")
            if m.pages.get(child.key) is not child:
                raise InvariantError(f"{sp!r}[{idx}] links freed page {child!r}")
        for idx, spte in sp.sptes.items():
            gfn = spte >> 12
            rmap_seen.setdefault(gfn, set()).add((sp, idx))
            if spte & 2 and m._protected(gfn):
                raise InvariantError(f"writable spte {sp!r}[{idx}] maps write-protected gfn {gfn:#x}")
            if sp.direct:
                if gfn != sp.gfn + idx:
                    raise InvariantError(f"direct {sp!r}[{idx}] maps {gfn:#x}")
                continue
            if sp.unsync:
                continue
            gpa = (sp.gfn << 12) + (idx << 3 if pae else ((sp.quadrant << 9) + idx) << 2)
            gpte = mem.read_entry(gpa, pae)
            if gpte & 0x21 != 0x21:
                raise InvariantError(f"spte {sp!r}[{idx}] for gpte {gpte:#x} without P and A")
            if (gpte & ADDR_MASK_PAE) >> 12 != gfn:
                raise InvariantError(f"spte {sp!r}[{idx}] maps {gfn:#x}, gpte {gpte:#x}")
            if spte & 2 and not (gpte & 2 and gpte & 0x40):
                raise InvariantError(f"writable spte {sp!r}[{idx}] for clean or read-only gpte")
    rmap = {gfn: set(m.rmap_entries(gfn)) for gfn in m.rmap}
    if rmap != rmap_seen:
        raise InvariantError("rmap does not match the present sptes")
    for gfn, sps in m.by_gfn.items():
        for sp in sps:
            if m.pages.get(sp.key) is not sp:
                raise InvariantError(f"by_gfn[{gfn:#x}] holds freed page {sp!r}")
