"""The shadow executor: KVM's shadow MMU (domain.md section 3), with a policy at each decision.

Modelled on Linux 2.6.26 arch/x86/kvm/mmu.c and paging_tmpl.h (K26), with the mechanism
differences of other versions selected by the policy's MMUConfig. The host is x86-64, so
shadow pages always hold 512 eight-byte sptes; a vCPU's root is KVM's ``pae_root``, four
level-2 shadow pages, one per GiB of guest-virtual space (mmu_alloc_roots).

Shadow pages are keyed by (gfn, level, quadrant, direct), KVM's role reduced to what differs
here:

- a non-PAE guest's 1024-entry page table is shadowed by up to two level-1 pages (quadrant =
  bit 21 of the address), its page directory by four level-2 pages (quadrant = bits 30-31);
- a PAE guest's tables map 1:1 (quadrant 0); its PDPT is not shadowed (load_pdptrs);
- a guest large page (PS=1) is shadowed by a "direct" (metaphysical) level-1 page whose gfn is
  the first frame of the 2 MiB it maps; direct pages write-protect nothing.

While a gfn has an indirect shadow page that is in sync it is write-protected: every spte mapping
it is read-only (rmap_write_protect when the page is created, K26 mmu.c:843; set_spte, K26
1082-1097). An spte exists only for a present guest pte with A=1 (K26 paging_tmpl.h:254-257).
Sptes are ints: ``gfn << 12 | P | W | A``; the A bit is the shadow accessed bit, clear on
speculative sptes (installed from an emulated write) until the guest really uses them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from bench.errors import BenchError
from bench.machine.counters import Counters
from bench.machine.memory import GuestMemory
from bench.machine.native import apply_write, count_native
from bench.machine.paging import ADDR_MASK_PAE, Mode, Walk, walk
from bench.ops import BTR, BTS, COMPUTE, CR3, INVLPG, LOAD, MARK, PAGE_OFFSET, STORE, OpTuple
from bench.policy import NOTIFICATION_HOOKS, Decision, MMUConfig, Policy, PteWrite, WriteFault, overridden

SPTE_P: Final = 0x1
SPTE_W: Final = 0x2
SPTE_A: Final = 0x20

_FIXED: Final = 0
_PTWRITE: Final = 1
_GUEST_FAULT: Final = 2
_EMULATE, _UNSHADOW, _UNSHADOW_NATIVE, _UNSYNC = (Decision.EMULATE, Decision.UNSHADOW,
                                                 Decision.UNSHADOW_NATIVE, Decision.UNSYNC)


class ShadowPage:
    """kvm_mmu_page: one 512-entry shadow table for (gfn, level, quadrant, direct)."""

    __slots__ = ("gfn", "level", "quadrant", "direct", "sptes", "children", "parents",
                 "unsync", "root_count", "zapped", "write_flooding_count", "prefetched",
                 "notrap", "trap")

    def __init__(self, gfn: int, level: int, quadrant: int, direct: bool) -> None:
        self.gfn = gfn
        self.level = level
        self.quadrant = quadrant
        self.direct = direct
        self.sptes: dict[int, int] = {}  # level 1: index -> spte
        self.children: dict[int, ShadowPage] = {}  # level 2: index -> child page
        self.parents: set[tuple[ShadowPage, int]] = set()
        self.unsync = False
        self.root_count = 0
        self.zapped = False
        self.write_flooding_count = 0  # K36: counted by the policy, cleared by the MMU
        # bypass_guest_pf (c7addb9020): which non-present entries are
        # shadow_notrap_nonpresent_pte. ``prefetched``: FNAME(prefetch_page) filled the page, so
        # an entry never touched since is notrap exactly when its guest entry is not present
        # (while the page is in sync every change to that guest entry is emulated and marks the
        # entry); ``notrap``/``trap``: entries set explicitly since (update_pte, sync_page, zaps).
        self.prefetched = False
        self.notrap: set[int] = set()
        self.trap: set[int] = set()

    @property
    def key(self) -> tuple[int, int, int, bool]:
        return (self.gfn, self.level, self.quadrant, self.direct)

    def __repr__(self) -> str:
        kind = "direct" if self.direct else "shadow"
        return f"<sp {kind} gfn {self.gfn:#x} l{self.level} q{self.quadrant}>"


class ShadowMachine:
    """Executes guest operations under shadow paging with one policy; counts every event."""

    def __init__(self, mem: GuestMemory, mode: Mode, cr3s: list[int], policy: Policy) -> None:
        self.mem = mem
        self.mode = mode
        self.pae = mode.pae
        self.policy = policy
        self.cfg: MMUConfig = policy.mmu_config(mode.pae)
        if self.cfg.tdp:
            raise BenchError(f"policy {policy.name} needs the two-dimensional paging executor")
        self.counters = Counters()
        self.marks: list[tuple[int, dict[str, int]]] = []
        self.pages: dict[tuple[int, int, int, bool], ShadowPage] = {}
        self.by_gfn: dict[int, list[ShadowPage]] = {}  # indirect shadow pages per gfn
        # gfn -> the leaf spte(s) mapping it: one (sp, idx) or a set of them (see rmap_entries)
        self.rmap: dict[int, Any] = {}
        self.unsync_pages: set[ShadowPage] = set()
        self.cpus = len(cr3s)
        self.cr3 = list(cr3s)
        self.roots: list[list[ShadowPage | None]] = [[None] * 4 for _ in cr3s]
        self.batch = [0] * self.cpus
        self._unsynced = False
        self._last_walk: Walk | None = None
        self._reload = [False] * self.cpus
        self._policy_unsyncs = overridden(policy, "unsync_on_map")
        self._decides_writes = overridden(policy, "on_write_fault")
        self._batches = overridden(policy, "extra_emulation")
        self._flood_page = policy.on_pte_write_page if overridden(policy, "on_pte_write_page") \
            else None
        self._hooks = {h: getattr(policy, h) for h in NOTIFICATION_HOOKS if overridden(policy, h)}
        self._on_spte_set = self._hooks.get("on_spte_set")
        self._on_shadow_walk = self._hooks.get("on_shadow_walk")
        self._on_zap = self._hooks.get("on_zap")
        self._on_guest_fault = self._hooks.get("on_guest_fault")
        self._on_shadow_fault = self._hooks.get("on_shadow_fault")
        self._esize = mode.entry_size
        self._update_spte = self.cfg.update_spte_on_write  # (read on every trap)
        self._dirty_bit_pte_write = self.cfg.dirty_bit_pte_write
        self._quadrant_filter = self.cfg.quadrant_filter
        self._user_fault_unshadow = self.cfg.user_fault_unshadow
        self._user_write_unshadow = self.cfg.user_write_unshadow
        self._bypass = self.cfg.bypass_guest_pf
        policy.attach(self)
        for cpu in range(self.cpus):
            self._load_roots(cpu)

    # ===================================================================== MMUView (for policies)
    def spte_accessed(self, ref: tuple[ShadowPage, int]) -> bool:
        sp, idx = ref
        spte = sp.sptes.get(idx)
        return spte is not None and bool(spte & SPTE_A)

    def mark_spte_accessed(self, ref: tuple[ShadowPage, int]) -> None:
        sp, idx = ref
        spte = sp.sptes.get(idx)
        if spte is not None:
            sp.sptes[idx] = spte | SPTE_A

    def gfn_of(self, ref: tuple[ShadowPage, int]) -> int:
        sp, idx = ref
        spte = sp.sptes.get(idx)
        return -1 if spte is None else spte >> 12

    def resync_gfn(self, gfn: int) -> None:
        for sp in list(self.by_gfn.get(gfn, ())):
            if sp.unsync:
                self._sync_page(sp)

    def shadow_levels(self, gfn: int) -> tuple[int, ...]:
        return tuple(sorted(sp.level for sp in self.by_gfn.get(gfn, ())))

    # ============================================================================ running
    def run(self, ops: Iterable[OpTuple]) -> Counters:
        step = self.step
        for op in ops:
            step(op)
        return self.counters

    def step(self, op: OpTuple) -> None:
        kind, cpu, addr, arg, value, insn = op
        if self.batch[cpu] and self._emulate_extra(kind, cpu, addr, arg, value, insn):
            return
        c = self.counters
        if kind <= LOAD:  # STORE, BTR, BTS, LOAD: the hardware walk of the shadow tables
            # A successful access sets the spte's shadow accessed bit, as the processor does; a
            # write through a read-only spte faults without setting it (1b7fcd3263's premise).
            write = kind != LOAD
            if kind == LOAD:
                c.native_load += 1
            elif kind == STORE:
                c.native_store += 1
            else:
                c.native_locked_rmw += 1
            sp2 = self.roots[cpu][addr >> 30]
            if sp2 is not None:
                i2 = (addr >> 21) & 0x1FF
                sp1 = sp2.children.get(i2)
                if sp1 is not None:
                    sptes = sp1.sptes
                    idx = (addr >> 12) & 0x1FF
                    spte = sptes.get(idx)
                    if spte is not None and (not write or spte & SPTE_W):
                        if not spte & SPTE_A:
                            sptes[idx] = spte | SPTE_A
                        if write:
                            apply_write(self.mem, ((spte >> 12) << 12) | (addr & 0xFFF), kind,
                                        arg, value)
                        return
                    if spte is None and self._bypass and self._notrap(sp1, idx):
                        c.pf_bypassed += 1
                        return
                elif self._bypass and self._notrap(sp2, i2):
                    c.pf_bypassed += 1
                    return
            elif self._bypass and self.pae and not self._reload[cpu] and not self.mem.read_entry(
                    (self.cr3[cpu] & 0xFFFFFFE0) + 8 * (addr >> 30), True) & 1:
                # mmu_alloc_roots leaves pae_root[i] = 0 for a pdpte that is not present: a
                # fault there has the present bit clear in its error code and bypasses too
                c.pf_bypassed += 1
                return
            if write:
                self._write_fault(kind, cpu, addr, arg, value, insn)
            else:
                self._page_fault(cpu, addr, False)  # the spte it installs is already accessed
            return
        count_native(c, kind, arg)
        if kind == INVLPG:
            self._invlpg(cpu, addr)
        elif kind == CR3:
            self._set_cr3(cpu, addr)
        elif kind == MARK:
            self.marks.append((arg, c.as_dict()))

    # ============================================================================ bypass
    def _notrap(self, sp: ShadowPage, idx: int) -> bool:
        """Whether entry ``idx`` of ``sp`` is shadow_notrap_nonpresent_pte (bypass_guest_pf):
        a fault through it goes to the guest without an exit."""
        if idx in sp.notrap:
            return True
        if not sp.prefetched or idx in sp.trap:
            return False
        base = sp.gfn << 12
        if self.pae:
            return not self.mem.read_entry(base + (idx << 3), True) & 1
        return not self.mem.read_entry(base + (((sp.quadrant << 9) + idx) << 2), False) & 1

    def _set_nonpresent(self, sp: ShadowPage, idx: int, notrap: bool) -> None:
        """The entry becomes shadow_notrap_nonpresent_pte (``notrap``) or
        shadow_trap_nonpresent_pte."""
        if notrap:
            sp.notrap.add(idx)
            sp.trap.discard(idx)
        else:
            sp.notrap.discard(idx)
            if sp.prefetched:
                sp.trap.add(idx)

    # ============================================================================ page faults
    def _page_fault(self, cpu: int, vaddr: int, write: bool) -> int:
        """FNAME(page_fault) (K26 paging_tmpl.h): walk the guest, fetch, count. Returns status."""
        c = self.counters
        if self._reload[cpu]:
            self._load_roots(cpu)  # kvm_mmu_reload after kvm_reload_remote_mmus
        user = vaddr < PAGE_OFFSET
        w = walk(self.mem, self.mode, self.cr3[cpu], vaddr, write, user)
        self._last_walk = w
        if w is None:
            c.exit_guest_fault += 1
            c.pf_guest += 1
            if self._on_guest_fault:
                self._on_guest_fault(cpu)
            return _GUEST_FAULT
        if w.dirtied and self._dirty_bit_pte_write:
            # walk_addr: cmpxchg_gpte(D) then kvm_mmu_pte_write(pte_gpa, pte) (2.6.21-2.6.30)
            size = self.mode.entry_size
            self._mmu_pte_write(cpu, w.leaf_gpa, size, "walker", w.leaf & ~0x40, w.leaf,
                                extra=False, walker=True)
        self._unsynced = False
        status = self._fetch(cpu, vaddr, w, write, user)
        c.pf_fixed += 1
        if status == _FIXED:
            if self._unsynced and write:
                c.exit_ptwrite_unsync += 1  # 2.6.28: the write fault unsynced the page
            else:
                c.exit_hidden_fault += 1
        if self._on_shadow_fault:
            self._on_shadow_fault(cpu, status == _PTWRITE)
        return status

    def _fetch(self, cpu: int, vaddr: int, w, write: bool, user: bool) -> int:
        """FNAME(fetch): link the shadow pages down to the leaf and set the spte."""
        root = self.roots[cpu][vaddr >> 30]
        if root is None:
            # a PAE pdpte became present after the last cr3 load; KVM would need a reload too
            self._load_roots(cpu)
            root = self.roots[cpu][vaddr >> 30]
            if root is None:
                raise BenchError(f"no shadow root for {vaddr:#x}: the guest changed its PDPT "
                                 "without reloading cr3")
        root.write_flooding_count = 0  # K36 FNAME(fetch): every page on the fault's path
        walk_hook = self._on_shadow_walk
        if walk_hook:
            walk_hook(cpu, root.level, root.gfn)
        i2 = (vaddr >> 21) & 0x1FF
        child = root.children.get(i2)
        if child is None:
            if w.pt_gfn is None:
                child = self._get_page(w.gfn & ~0x1FF, 1, 0, True)
            else:
                quadrant = 0 if self.pae else (vaddr >> 21) & 1
                child = self._get_page(w.pt_gfn, 1, quadrant, False)
            root.children[i2] = child
            child.parents.add((root, i2))
        child.write_flooding_count = 0
        if walk_hook:
            walk_hook(cpu, child.level, child.gfn)
        ptwrite = self._set_spte(cpu, child, (vaddr >> 12) & 0x1FF, w.gfn, w.writable, w.dirty,
                                 write, user, False)
        return _PTWRITE if ptwrite else _FIXED

    def _get_page(self, gfn: int, level: int, quadrant: int, direct: bool) -> ShadowPage:
        """kvm_mmu_get_page: find the shadow page for this role or create it (mmu_cache_miss)."""
        if not direct:
            for unsync_sp in list(self.by_gfn.get(gfn, ())):
                if unsync_sp.unsync:
                    self._sync_page(unsync_sp)  # 2.6.28 kvm_mmu_get_page syncs what it meets
        key = (gfn, level, quadrant, direct)
        sp = self.pages.get(key)
        if sp is not None:
            sp.write_flooding_count = 0  # K36 __clear_sp_write_flooding_count on a hash hit
            return sp
        self.counters.mmu_cache_miss += 1
        sp = ShadowPage(gfn, level, quadrant, direct)
        # FNAME(prefetch_page) (2.6.25 paging_tmpl.h): notrap entries for guest entries that are
        # not present, except in direct pages and in the page directories of non-PAE guests
        # (``PTTYPE == 32 && level > PT_PAGE_TABLE_LEVEL``), which get nonpaging_prefetch_page
        sp.prefetched = self._bypass and not direct and (self.pae or level == 1)
        self.pages[key] = sp
        if not direct:
            self.by_gfn.setdefault(gfn, []).append(sp)
            self._write_protect(gfn)
        return sp

    def _write_protect(self, gfn: int) -> None:
        """rmap_write_protect: every spte mapping gfn becomes read-only."""
        for sp, idx in self.rmap_entries(gfn):
            spte = sp.sptes[idx]
            if spte & SPTE_W:
                sp.sptes[idx] = spte & ~SPTE_W

    def rmap_entries(self, gfn: int) -> tuple | set:
        """The (shadow page, index) of every spte mapping gfn. The rmap holds one tuple for a
        gfn mapped once (KVM's rmap also keeps a single spte inline) and a set for several."""
        entry = self.rmap.get(gfn)
        if entry is None:
            return ()
        return (entry,) if type(entry) is tuple else entry

    def _protected(self, gfn: int) -> bool:
        """Whether gfn has an indirect shadow page that is in sync (so it must stay read-only)."""
        sps = self.by_gfn.get(gfn)
        if not sps:
            return False
        for sp in sps:
            if not sp.unsync:
                return True
        return False

    def _need_write_protect(self, cpu: int, gfn: int, write_fault: bool) -> bool:
        """mmu_need_write_protect (2.6.28): the policy may let a leaf page go out of sync."""
        if not self._protected(gfn):
            return False
        if self._policy_unsyncs and self._can_unsync(gfn) \
                and self.policy.unsync_on_map(cpu, gfn, write_fault):
            self._unsync(gfn)
            self._unsynced = True
            return False
        return True

    def _set_spte(self, cpu: int, sp: ShadowPage, idx: int, gfn: int, writable: bool,
                  dirty: bool, write_fault: bool, user_fault: bool, speculative: bool) -> bool:
        """mmu_set_spte (K26 mmu.c ~L870-990). Returns ptwrite."""
        sptes = sp.sptes
        old = sptes.get(idx)
        if old is not None and old >> 12 != gfn:
            self._rmap_remove(old >> 12, sp, idx)
            old = None
        spte = (gfn << 12) | SPTE_P
        if not speculative:
            spte |= SPTE_A
        ptwrite = False
        if writable and dirty:
            if user_fault and self._user_fault_unshadow:
                # 2.6.20-2.6.25: a user-mode fault maps the page writable and unshadows it
                # (mmu_unshadow; removed in 2.6.26 by 6bf6a9532f)
                if gfn in self.by_gfn:
                    self._unshadow(gfn)
                spte |= SPTE_W
            elif gfn in self.by_gfn and self._need_write_protect(cpu, gfn, write_fault):
                ptwrite = write_fault
            else:
                spte |= SPTE_W
        sptes[idx] = spte
        if old is None:
            rmap = self.rmap
            entry = rmap.get(gfn)
            if entry is None:
                rmap[gfn] = (sp, idx)
            elif type(entry) is tuple:
                rmap[gfn] = {entry, (sp, idx)}
            else:
                entry.add((sp, idx))
        if self._on_spte_set:
            self._on_spte_set(cpu, (sp, idx), speculative, ptwrite)
        return ptwrite

    def _rmap_remove(self, gfn: int, sp: ShadowPage, idx: int) -> None:
        rmap = self.rmap
        entry = rmap.get(gfn)
        if entry is None:
            return
        if type(entry) is tuple:
            if entry == (sp, idx):
                del rmap[gfn]
            return
        entry.discard((sp, idx))
        if len(entry) == 1:
            rmap[gfn] = next(iter(entry))

    # ============================================================================ trapping writes
    def _write_fault(self, kind: int, cpu: int, vaddr: int, arg: int, value: int, insn: str,
                     retry: bool = False) -> None:
        """A write found no writable spte: fault, and decide if it hit a write-protected gfn.

        ``retry`` marks the re-execution after an unshadow. If that write traps on a protected
        gfn again (the zapped page was an in-use root, and reloading the root shadowed it again)
        it is emulated instead of unshadowed once more: the loop breaker of KVM's
        retry_instruction (last_retry_eip / last_retry_addr, K36 x86.c), without which the
        guest would never make progress.
        """
        status = self._page_fault(cpu, vaddr, True)
        if status == _GUEST_FAULT:
            return
        w = self._last_walk
        assert w is not None  # set by the _page_fault that did not return _GUEST_FAULT
        gpa = (w.gfn << 12) | (vaddr & 0xFFF)
        if status != _PTWRITE:  # the fault installed a writable, accessed spte: run natively
            apply_write(self.mem, gpa, kind, arg, value)
            return
        gfn = w.gfn
        c = self.counters
        if self._user_write_unshadow and not retry and vaddr < PAGE_OFFSET:
            # Xen 3.3 sh_page_fault: "We do not emulate user writes. Instead we use them as a
            # hint that the page is no longer a page table": sh_remove_shadows, then the guest
            # re-executes the write, which faults once more and now maps the page writable
            c.exit_ptwrite_unshadow += 1
            self._unshadow(gfn)
            self._write_fault(kind, cpu, vaddr, arg, value, insn, True)
            return
        if not self._decides_writes:  # the base class's answer: emulate (no WriteFault needed)
            c.exit_ptwrite_emulate += 1
            c.insn_emulation += 1
            self._emulate_write(cpu, gpa, kind, arg, value, insn, extra=False)
            return
        pae = self.pae
        esize = self.mode.entry_size
        entry_gpa = gpa & ~(esize - 1)
        old_gpte = self.mem.read_entry(entry_gpa, pae)
        old_word = self.mem.read32(gpa & ~3)
        new_word = _written_word(old_word, gpa, kind, arg, value)
        new_gpte = _gpte_after(old_gpte, entry_gpa, esize, gpa, kind, arg, value, new_word)
        sps = self.by_gfn[gfn]
        leaf_only = True
        for sp in sps:
            if sp.level != 1:
                leaf_only = False
                break
        fault = WriteFault(cpu=cpu, vaddr=vaddr, gpa=gpa, gfn=gfn,
                           width=arg if kind == STORE else 4, insn=insn,
                           bit=arg if kind != STORE else -1, old_word=old_word, new_word=new_word,
                           old_gpte=old_gpte, new_gpte=new_gpte, pae=pae,
                           user=vaddr < PAGE_OFFSET, leaf_only=leaf_only,
                           can_unsync=leaf_only and self._can_unsync(gfn))
        decision = self.policy.on_write_fault(fault)
        if (decision == _UNSYNC and not fault.can_unsync) or \
                (retry and (decision == _UNSHADOW or decision == _UNSHADOW_NATIVE)):
            decision = _EMULATE
        if decision == _EMULATE:
            c.exit_ptwrite_emulate += 1
            c.insn_emulation += 1
            apply_write(self.mem, gpa, kind, arg, value)
            self._after_emulated_write(cpu, gpa, kind, arg, insn, old_gpte, new_gpte, False)
        elif decision == _UNSHADOW:
            c.exit_ptwrite_unshadow += 1
            self._unshadow(gfn)
            self._write_fault(kind, cpu, vaddr, arg, value, insn, True)  # re-execute: refaults
        elif decision == _UNSHADOW_NATIVE:
            c.exit_ptwrite_unshadow += 1
            self._unshadow(gfn)
            self._make_writable_and_write(cpu, vaddr, kind, arg, value, insn)
        elif decision == _UNSYNC:
            c.exit_ptwrite_unsync += 1
            self._unsync(gfn)
            self._make_writable_and_write(cpu, vaddr, kind, arg, value, insn)
        else:
            raise BenchError(f"policy {self.policy.name} returned an unknown decision {decision!r}")

    def _make_writable_and_write(self, cpu: int, vaddr: int, kind: int, arg: int, value: int,
                                 insn: str) -> None:
        """Make the spte the write went through writable in this exit, then run it natively."""
        sp2 = self.roots[cpu][vaddr >> 30]
        sp1 = None if sp2 is None else sp2.children.get((vaddr >> 21) & 0x1FF)
        idx = (vaddr >> 12) & 0x1FF
        spte = None if sp1 is None else sp1.sptes.get(idx)
        if sp1 is None or spte is None or self._protected(spte >> 12):
            # the zap removed the spte itself (a table mapping its own page), or a root reload
            # protected the gfn again: fault again
            self._write_fault(kind, cpu, vaddr, arg, value, insn, True)
            return
        sp1.sptes[idx] = spte | SPTE_W | SPTE_A
        apply_write(self.mem, ((spte >> 12) << 12) | (vaddr & 0xFFF), kind, arg, value)

    def _emulate_write(self, cpu: int, gpa: int, kind: int, arg: int, value: int, insn: str,
                       extra: bool) -> None:
        """emulator_write_phys: write guest memory, then kvm_mmu_pte_write; maybe batch more."""
        mem = self.mem
        entry_gpa = gpa & ~(self._esize - 1)
        old_gpte = mem.read_entry(entry_gpa, self.pae)
        apply_write(mem, gpa, kind, arg, value)
        new_gpte = mem.read_entry(entry_gpa, self.pae)
        self._after_emulated_write(cpu, gpa, kind, arg, insn, old_gpte, new_gpte, extra)

    def _after_emulated_write(self, cpu: int, gpa: int, kind: int, arg: int, insn: str,
                              old_gpte: int, new_gpte: int, extra: bool) -> None:
        """The emulated write is in guest memory: kvm_mmu_pte_write, then maybe batch more."""
        if kind == STORE:
            write = self._mmu_pte_write(cpu, gpa, arg, insn, old_gpte, new_gpte, extra, False)
        else:
            write = self._mmu_pte_write(cpu, gpa & ~3, 4, insn, old_gpte, new_gpte, extra, False)
        if not extra and self._batches:
            n = self.policy.extra_emulation(write)
            if n > 0:
                self.batch[cpu] = n

    def _mmu_pte_write(self, cpu: int, gpa: int, nbytes: int, insn: str, old_gpte: int,
                       new_gpte: int, extra: bool, walker: bool) -> PteWrite:
        """kvm_mmu_pte_write (K26 mmu.c:1674): count, ask the policy to zap, else update sptes."""
        gfn = gpa >> 12
        c = self.counters
        c.mmu_pte_write += 1
        offset = gpa & 0xFFF
        pte_size = self._esize
        write = PteWrite(cpu, gpa, gfn, offset, nbytes, pte_size, insn, old_gpte, new_gpte,
                         extra, walker)
        # a write spanning two gptes is zapped whatever the policy says: KVM only rebuilds the
        # one spte a write falls in ("misaligned accesses are too much trouble to fix up", K20
        # and later); the policy decides everything else (flooding, 2.6.26's bytes < 4)
        zap = self.policy.on_pte_write(write) or write.misaligned
        sps = self.by_gfn.get(gfn)
        if not sps:
            return write
        update = self._update_spte
        flood_page = self._flood_page
        bypass = self._bypass
        for sp in (sps[:] if len(sps) > 1 else sps):  # (a zap changes the list)
            if sp.zapped:
                continue  # zapped earlier in this loop
            if zap or (flood_page is not None and flood_page(write, sp)):
                self._zap_page(sp)
                c.mmu_flooded += 1
                continue
            if self.pae:
                indexes: tuple[int, ...] = (offset >> 3,)
            elif not self._quadrant_filter:
                # 2.6.20 kvm_mmu_pre_write: page_offset = (offset << 1) & ~PAGE_MASK in every
                # shadow page of the gfn, with no quadrant check and one entry (no npte = 2)
                indexes = (((offset << 1) & 0xFFF) >> 3,)
            else:
                gi = offset >> 2
                if sp.level == 1:
                    if gi >> 9 != sp.quadrant:
                        continue
                    indexes = (gi & 0x1FF,)
                else:
                    if gi >> 8 != sp.quadrant:
                        continue
                    base = (gi & 0xFF) * 2  # a 4 MiB guest pde is two 2 MiB shadow pdes
                    indexes = (base, base + 1)
            gpte = new_gpte  # the whole gpte after the write (KVM re-reads it for a partial write)
            for idx in indexes:
                if sp.level == 1:
                    old = sp.sptes.pop(idx, None)
                    if old is not None:
                        self._rmap_remove(old >> 12, sp, idx)
                    if update:
                        c.mmu_pte_updated += 1
                        if gpte & 0x21 == 0x21 and nbytes >= 4:
                            # FNAME(update_pte): a speculative spte from the new gpte
                            self._set_spte(cpu, sp, idx, (gpte & ADDR_MASK_PAE) >> 12,
                                           bool(gpte & 0x2), bool(gpte & 0x40), False, False,
                                           True)
                        elif bypass:
                            # update_pte: ``if (!is_present_pte(gpte)) set_shadow_pte(spte,
                            # shadow_notrap_nonpresent_pte)``; else mmu_pte_write_zap_pte's trap
                            self._set_nonpresent(sp, idx, not gpte & 1)
                    elif bypass:
                        self._set_nonpresent(sp, idx, False)
                else:
                    child = sp.children.pop(idx, None)
                    if child is not None:
                        child.parents.discard((sp, idx))
                    if bypass:
                        self._set_nonpresent(sp, idx, False)  # mmu_pte_write_zap_pte: trap
                    if update:
                        c.mmu_pde_zapped += 1
        return write

    # ============================================================================ extra emulation
    def _emulate_extra(self, kind: int, cpu: int, addr: int, arg: int, value: int, insn: str) -> bool:
        """Emulate the next guest instruction inside the exit (Xen 3.3 sh_page_fault, PAE only).

        After emulating a page-table write, sh_page_fault calls x86_emulate up to four more
        times "in the hope of catching the second half of a 64-bit pagetable write": each call
        emulates the next instruction at the guest's eip; it stops right after one that writes
        a page table (``last_write_was_pt``, shadow_em_ex_pt) or when emulation fails
        (shadow_em_ex_fail); any other instruction is counted (shadow_em_ex_non_pt) and the loop
        goes on. ``self.batch[cpu]`` is the number of instructions left.

        The operations say what the guest executes next (bench.ops): consecutive operations of
        a vCPU are consecutive instructions, and a COMPUTE stands for ``value`` instructions
        between them (0: an unknown number, at least as many as any batch covers). So:

        - MARK is no instruction: the batch goes on past it;
        - COMPUTE: its instructions are emulated as non-page-table instructions until the batch
          is used up; the operation itself then runs normally;
        - a user-mode access: the kernel first returned to user mode, and its exit path (far
          more than four instructions, ending in an iret that the emulator cannot run in
          protected mode) uses the rest of the batch as non-page-table instructions; a
          user-mode access is never emulated by a kernel exit;
        - invlpg and cr3 loads cannot be emulated by the shadow emulator (no such hooks in its
          x86_emulate_ops): emulation fails and the batch ends;
        - a kernel access whose guest walk would fault: X86EMUL_EXCEPTION, the batch ends;
        - any other kernel access is emulated (A and D set as the hardware walker would, as
          Xen's guest_walk_tables does); a write to a shadowed page table goes through
          kvm_mmu_pte_write and ends the batch.

        Returns True when the operation was emulated here (the caller must not run it again).
        """
        if kind == MARK:
            return False
        c = self.counters
        left = self.batch[cpu]
        if kind == COMPUTE:
            used = left if value <= 0 or value >= left else value
            c.insn_emulation_extra += used
            c.insn_emulation_extra_non_pt += used
            self.batch[cpu] = left - used
            return False
        if kind == INVLPG or kind == CR3:
            self.batch[cpu] = 0
            return False
        if addr < PAGE_OFFSET:
            c.insn_emulation_extra += left
            c.insn_emulation_extra_non_pt += left
            self.batch[cpu] = 0
            return False
        write = kind != LOAD
        w = walk(self.mem, self.mode, self.cr3[cpu], addr, write, False)  # a fault sets nothing
        if w is None:
            self.batch[cpu] = 0
            return False
        c.insn_emulation_extra += 1
        count_native(c, kind, arg)  # the guest executes it all the same
        if write:
            gpa = (w.gfn << 12) | (addr & 0xFFF)
            if w.gfn in self.by_gfn:
                # last_write_was_pt = sh_mfn_is_a_page_table(mfn): the frame has shadows (an
                # out-of-sync L1 too); stop right after a page-table write
                self.batch[cpu] = 0
                self._emulate_write(cpu, gpa, kind, arg, value, insn, extra=True)
                return True
            apply_write(self.mem, gpa, kind, arg, value)
        c.insn_emulation_extra_non_pt += 1
        self.batch[cpu] = left - 1
        return True

    # ============================================================================ zap / unshadow
    def _zap_page(self, sp: ShadowPage) -> None:
        """kvm_mmu_zap_page (K26 mmu.c:899): unlink children and parents, free or invalidate.

        Children are only unlinked: they stay, and keep write-protecting their gfn.
        """
        self.counters.mmu_shadow_zapped += 1
        if sp.level == 1:
            for idx, spte in sp.sptes.items():
                self._rmap_remove(spte >> 12, sp, idx)
            sp.sptes.clear()
        else:
            for idx, child in sp.children.items():
                child.parents.discard((sp, idx))
            sp.children.clear()
        for parent, idx in sp.parents:
            if parent.children.get(idx) is sp:
                del parent.children[idx]
                if self._bypass:
                    self._set_nonpresent(parent, idx, False)  # shadow_trap_nonpresent_pte
        sp.parents.clear()
        del self.pages[sp.key]
        if not sp.direct:
            sps = self.by_gfn[sp.gfn]
            sps.remove(sp)
            if not sps:
                del self.by_gfn[sp.gfn]
        if sp.unsync:
            sp.unsync = False
            self.unsync_pages.discard(sp)
        if sp.root_count:
            # an in-use root is invalidated and every vCPU reloads its roots before the next
            # entry (kvm_reload_remote_mmus); here the vCPUs using it reload at their next fault
            for cpu, roots in enumerate(self.roots):
                for i, root in enumerate(roots):
                    if root is sp:
                        roots[i] = None
                        self._reload[cpu] = True
                        sp.root_count -= 1
        sp.zapped = True
        if self._on_zap:
            self._on_zap(sp.gfn, sp.level)

    def _unshadow(self, gfn: int) -> None:
        """mmu_unshadow / kvm_mmu_unprotect_page: zap every shadow page of gfn."""
        for sp in list(self.by_gfn.get(gfn, ())):
            self._zap_page(sp)

    # ============================================================================ out of sync
    def _can_unsync(self, gfn: int) -> bool:
        """kvm_unsync_page's conditions (2.6.28): only leaf pages, shadowed in a single role."""
        sps = self.by_gfn.get(gfn)
        if not sps:
            return False
        quadrant = sps[0].quadrant
        for sp in sps:
            if sp.level != 1 or sp.quadrant != quadrant:
                return False
        return True

    def _unsync(self, gfn: int) -> None:
        """kvm_unsync_page: mark the gfn's leaf pages unsync; mmu_convert_notrap turns their
        notrap entries into trap ones (the guest may now make them present natively)."""
        for sp in self.by_gfn.get(gfn, ()):
            if not sp.unsync:
                sp.unsync = True
                self.unsync_pages.add(sp)
                self.counters.mmu_unsync += 1
                sp.prefetched = False
                sp.notrap.clear()
                sp.trap.clear()

    def _sync_page(self, sp: ShadowPage) -> None:
        """kvm_sync_page: revalidate every spte from its gpte, then write-protect the gfn again.

        FNAME(sync_page) (2.6.28-2.6.3x paging_tmpl.h): a dropped spte becomes notrap when its
        gpte is not present, else trap; it returns ``!nr_present``, and with
        ``sync_zaps_empty`` (KVM 2.6.28 kvm_sync_page) a page left with no present spte is
        zapped (counted in mmu_shadow_zapped; a later fault creates it again, mmu_cache_miss).
        """
        c = self.counters
        c.mmu_resync += 1
        mem = self.mem
        pae = self.pae
        bypass = self._bypass
        base = sp.gfn << 12
        for idx, spte in list(sp.sptes.items()):
            c.mmu_resync_gpte += 1
            gpa = base + (idx << 3 if pae else ((sp.quadrant << 9) + idx) << 2)
            gpte = mem.read_entry(gpa, pae)
            if gpte & 0x21 != 0x21 or (gpte & ADDR_MASK_PAE) >> 12 != spte >> 12:
                del sp.sptes[idx]
                self._rmap_remove(spte >> 12, sp, idx)
                if bypass:
                    self._set_nonpresent(sp, idx, not gpte & 1)
            elif spte & SPTE_W and not (gpte & 0x2 and gpte & 0x40):
                sp.sptes[idx] = spte & ~SPTE_W
        sp.unsync = False
        self.unsync_pages.discard(sp)
        self._write_protect(sp.gfn)
        if not sp.sptes and self.cfg.sync_zaps_empty:
            self._zap_page(sp)

    def _sync_reachable(self, cpu: int) -> None:
        """kvm_mmu_sync_roots: resync the unsync pages linked under this vCPU's roots."""
        roots = {id(sp) for sp in self.roots[cpu] if sp is not None}
        for sp in sorted(self.unsync_pages, key=lambda s: s.key):
            if any(id(parent) in roots for parent, _ in sp.parents):
                self._sync_page(sp)

    # ============================================================================ invlpg, cr3
    def _invlpg(self, cpu: int, vaddr: int) -> None:
        cfg = self.cfg
        if not cfg.intercept_invlpg:
            return
        c = self.counters
        c.exit_invlpg += 1
        c.invlpg += 1
        if cfg.invlpg_drops_spte:
            sp2 = self.roots[cpu][vaddr >> 30]
            sp1 = None if sp2 is None else sp2.children.get((vaddr >> 21) & 0x1FF)
            if sp1 is not None:
                idx = (vaddr >> 12) & 0x1FF
                spte = sp1.sptes.pop(idx, None)
                if spte is not None:
                    self._rmap_remove(spte >> 12, sp1, idx)
                    if self._bypass:
                        self._set_nonpresent(sp1, idx, False)  # shadow_trap_nonpresent_pte
        hook = self._hooks.get("on_invlpg")
        if hook:
            hook(cpu, vaddr)

    def _set_cr3(self, cpu: int, value: int) -> None:
        """kvm_set_cr3 -> kvm_mmu_new_cr3: free the roots, allocate the new ones (and sync)."""
        c = self.counters
        c.exit_cr3 += 1
        c.tlb_flush += 1
        self.cr3[cpu] = value
        self._load_roots(cpu)
        if self.cfg.sync_on_cr3 and self.unsync_pages:
            self._sync_reachable(cpu)
        hook = self._hooks.get("on_cr3")
        if hook:
            hook(cpu, value)

    def _load_roots(self, cpu: int) -> None:
        """mmu_free_roots + mmu_alloc_roots (PAE-format pae_root of four level-2 pages)."""
        for sp in self.roots[cpu]:
            if sp is not None:
                sp.root_count -= 1
        cr3 = self.cr3[cpu]
        roots: list[ShadowPage | None] = []
        for i in range(4):
            if self.pae:
                pdpte = self.mem.read_entry((cr3 & 0xFFFFFFE0) + 8 * i, True)
                sp = self._get_page((pdpte & ADDR_MASK_PAE) >> 12, 2, 0, False) if pdpte & 1 else None
            else:
                sp = self._get_page(cr3 >> 12, 2, i, False)
            if sp is not None:
                sp.root_count += 1
            roots.append(sp)
        self.roots[cpu] = roots
        self._reload[cpu] = False


def _written_word(old: int, gpa: int, kind: int, arg: int, value: int) -> int:
    """The aligned word at gpa & ~3 after the write (its first word for an 8-byte store)."""
    if kind == BTR:
        return old & ~(1 << arg)
    if kind == BTS:
        return old | (1 << arg)
    shift = 8 * (gpa & 3)
    width = min(arg, 4 - (gpa & 3))
    mask = ((1 << (8 * width)) - 1) << shift
    return (old & ~mask) | ((value << shift) & mask)


def _gpte_after(gpte: int, entry_gpa: int, esize: int, gpa: int, kind: int, arg: int, value: int,
                new_word: int) -> int:
    """The gpte at entry_gpa after the write (bytes of the write outside the entry ignored)."""
    if kind != STORE:
        gpa, arg, value = gpa & ~3, 4, new_word
    start = gpa - entry_gpa
    if start < 0:  # the write begins before the entry: drop its leading bytes
        value >>= -8 * start
        arg += start
        start = 0
    width = min(arg, esize - start)
    if width <= 0:
        return gpte
    mask = ((1 << (8 * width)) - 1) << (8 * start)
    return (gpte & ~mask) | ((value << (8 * start)) & mask)
