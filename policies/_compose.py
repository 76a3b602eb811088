"""Helpers for policies that hand part of their decisions to another policy (a "fallback").

Used by accessed-clear and xen-batch (issue 4: "Policies compose where the discussion composes
them"). The fallback is named by a string parameter, built with bench.registry.make_policy with
its own defaults (``NAME:k=v`` specs split on ``,`` and ``=``, so nested parameters for the
fallback cannot be written; a fallback with other parameters would need a registered name of its
own). Every hook the composite does not decide itself is forwarded to the fallback, including
``mmu_config`` and ``attach``, so the fallback runs exactly as it would alone.
"""

from __future__ import annotations

import difflib
from typing import Any

from bench.params import Param
from bench.policy import (NOTIFICATION_HOOKS, Decision, MMUConfig, MMUView, Policy, PteWrite,
                          ShadowPageView, WriteFault)


def fallback_param(owner: str, default: str, help_text: str) -> Param:
    """A ``fallback`` parameter: any registered policy name except ``owner`` itself."""

    def check(value: str) -> str | None:
        if value == owner:
            return f"{owner} cannot be its own fallback"
        from bench.registry import policies  # late: the registry imports this package

        known = sorted(policies())
        if value not in known:
            close = difflib.get_close_matches(value, known, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            return f"not a registered policy; {hint}(valid: {', '.join(known)})"
        return None

    return Param(str, default, help_text, check=check)


class ComposedPolicy(Policy):
    """Base of a policy with a fallback: forwards every hook to ``self.fallback_policy``.

    Subclasses override the hooks they decide and call ``_build_fallback()`` in ``__init__``.
    The forwarding methods below exist on the class so the executor sees them as overridden
    and calls them; for speed, ``_build_fallback`` also binds the fallback's own notification
    methods directly on the instance (an instance attribute shadows the class method).
    """

    fallback_policy: Policy

    def _build_fallback(self) -> None:
        from bench.registry import make_policy  # late: the registry imports this package

        fb = make_policy((self.fallback, {}))
        self.fallback_policy = fb
        # A composite is only as TLB-like as its fallback (out-of-sync, tdp): the conformance
        # check reads this from the instance.
        self.tlb_like = type(fb).tlb_like or getattr(fb, "tlb_like", False)
        for hook in NOTIFICATION_HOOKS:
            if getattr(type(self), hook) is getattr(ComposedPolicy, hook):  # not handled here
                setattr(self, hook, getattr(fb, hook))

    # -- mechanism and attachment -------------------------------------------------------------
    def mmu_config(self, pae: bool) -> MMUConfig:
        return self.fallback_policy.mmu_config(pae)

    def attach(self, mmu: MMUView) -> None:
        super().attach(mmu)
        self.fallback_policy.attach(mmu)

    # -- decisions ------------------------------------------------------------------------------
    def on_write_fault(self, fault: WriteFault) -> Decision:
        return self.fallback_policy.on_write_fault(fault)

    def on_pte_write(self, write: PteWrite) -> bool:
        return self.fallback_policy.on_pte_write(write)

    def on_pte_write_page(self, write: PteWrite, page: ShadowPageView) -> bool:
        return self.fallback_policy.on_pte_write_page(write, page)

    def extra_emulation(self, write: PteWrite) -> int:
        return self.fallback_policy.extra_emulation(write)

    def unsync_on_map(self, cpu: int, gfn: int, write_fault: bool) -> bool:
        return self.fallback_policy.unsync_on_map(cpu, gfn, write_fault)

    # -- notifications (replaced per instance by the fallback's bound methods) ------------------
    def on_spte_set(self, cpu: int, ref: Any, speculative: bool, ptwrite: bool) -> None:
        self.fallback_policy.on_spte_set(cpu, ref, speculative, ptwrite)

    def on_shadow_walk(self, cpu: int, level: int, gfn: int) -> None:
        self.fallback_policy.on_shadow_walk(cpu, level, gfn)

    def on_shadow_fault(self, cpu: int, ptwrite: bool) -> None:
        self.fallback_policy.on_shadow_fault(cpu, ptwrite)

    def on_guest_fault(self, cpu: int) -> None:
        self.fallback_policy.on_guest_fault(cpu)

    def on_invlpg(self, cpu: int, vaddr: int) -> None:
        self.fallback_policy.on_invlpg(cpu, vaddr)

    def on_cr3(self, cpu: int, cr3: int) -> None:
        self.fallback_policy.on_cr3(cpu, cr3)

    def on_zap(self, gfn: int, level: int) -> None:
        self.fallback_policy.on_zap(gfn, level)

