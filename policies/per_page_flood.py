"""per-page-flood: the per-shadow-page write_flooding_count of Linux 3.x (the discussion's
"per-page pte history").

Source: Linux 3.6 arch/x86/kvm/mmu.c (New-B/Linux3.6 @ b5154d3e, kvm-source-notes.md Q9; domain.md
3.3, K36 mmu.c:3763-3800):

- ``detect_write_flooding(sp)``: ``if (sp->role.level == PT_PAGE_TABLE_LEVEL) return false;
  return ++sp->write_flooding_count >= 3;`` per shadow page;
- the count is cleared in ``FNAME(fetch)`` for every shadow page the faulting walk passes
  through, and in ``kvm_mmu_get_page`` on a hash hit; a new shadow page starts at 0;
- ``detect_write_misaligned``: an aligned 1-byte write is exempt ("linux ... andb instruction is
  used in clear_bit()"), otherwise KVM's misaligned formula ``| bytes < 4``; it is evaluated
  first and short-circuits, so a misaligned write does not increment the count.

Leaf pages: 3.x excludes them because they go out of sync instead (2.6.28 commit 4731d4c7a077).
The default, ``include_leaf=false``, is that literal 3.x rule. This policy runs on the 2.6.26
mechanism, where nothing else relieves a leaf table, so ``include_leaf=true`` counts leaf tables
too: a what-if no kernel ran (the discussion's per-page pte history applied to the user ptes
kscand clears), offered as such and not published in the default comparison.

The count lives in each shadow page (``write_flooding_count``), as in 3.x: the MMU clears it on
the fault path and on hash hits (cr3 loads included), the policy counts it per shadow page in
``on_pte_write_page`` (asked for every shadow page of the gfn, before the quadrant filter, as
kvm_mmu_pte_write does), and only the flooded page is zapped. The mechanism otherwise is K26's
(MMUConfig()), so the only difference from flood-count 2.6.26 is the detector. The walker's
dirty-bit update, which 3.x never passes to kvm_mmu_pte_write (>=2.6.31 sets D with
cmpxchg_gpte only), is not counted.
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from bench.params import Param
from bench.policy import MMUConfig, Policy, PteWrite, ShadowPageView


@mypyc_attr(allow_interpreted_subclasses=True)
class PerPageFlood(Policy):
    """3.x per-shadow-page flood counter (K36 mmu.c detect_write_flooding / detect_write_misaligned,
    cleared by FNAME(fetch) on every shadow page of the fault path), on the 2.6.26 mechanism;
    ``include_leaf`` decides whether leaf tables are counted (3.x: no, they go unsync)."""

    name = "per-page-flood"
    summary = ("3.x per-shadow-page write_flooding_count, cleared when a fault walks through the "
               "page; zap at `threshold` (K36 mmu.c detect_write_flooding)")
    params = {
        "threshold": Param(int, 3, "emulated writes to one shadow page between two fault walks "
                           "through it that count as a flood (K36: 3)", minimum=1),
        "include_leaf": Param(bool, False, "count leaf (level-1) tables too: a what-if; 3.x "
                              "does not, because they go out of sync there"),
    }

    threshold: int
    include_leaf: bool

    def mmu_config(self, pae: bool) -> MMUConfig:
        return MMUConfig()

    def on_pte_write_page(self, write: PteWrite, page: ShadowPageView) -> bool:
        """detect_write_misaligned(sp) || detect_write_flooding(sp), for one shadow page."""
        if write.walker:
            return False  # 3.x walk_addr sets D without kvm_mmu_pte_write
        if not (write.bytes == 1 and write.offset % write.pte_size == 0):
            if write.misaligned or write.bytes < 4:
                return True  # misaligned short-circuits: the flood count is not incremented
        if page.level == 1 and not self.include_leaf:
            return False
        page.write_flooding_count += 1
        return page.write_flooding_count >= self.threshold


POLICY = PerPageFlood
