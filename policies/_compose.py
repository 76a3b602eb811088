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

from mypy_extensions import mypyc_attr

from bench.params import Param
from bench.policy import DECISION_HOOKS, NOTIFICATION_HOOKS, MMUConfig, MMUView, Policy


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


@mypyc_attr(allow_interpreted_subclasses=True)
class ComposedPolicy(Policy):
    """Base of a policy with a fallback: every hook the subclass does not define is the fallback's.

    Subclasses define the hooks they decide and call ``_build_fallback()`` in ``__init__``, which
    binds the fallback's own methods for every other hook on the instance (an instance attribute
    shadows the class's default). The executor then calls the fallback directly, and skips a
    hook the fallback leaves at its default (bench.policy.overridden asks the instance).
    """

    fallback: str
    fallback_policy: Policy

    def _build_fallback(self, shared: dict[str, object] | None = None) -> None:
        """Build the fallback with its defaults, except the ``shared`` parameters that the
        fallback also declares (xen-batch passes its ``version`` to a Xen fallback)."""
        from bench.registry import make_policy, policy_class  # late: the registry imports us

        declared = policy_class(self.fallback).params
        given = {k: v for k, v in (shared or {}).items() if k in declared}
        fb = make_policy((self.fallback, given))
        self.fallback_policy = fb
        # A composite is only as TLB-like as its fallback (out-of-sync, tdp): the conformance
        # check reads this from the instance.
        self.tlb_like = fb.tlb_like
        for hook in DECISION_HOOKS + NOTIFICATION_HOOKS:
            if getattr(type(self), hook) is getattr(Policy, hook):  # not decided here
                setattr(self, hook, getattr(fb, hook))

    # -- mechanism and attachment -------------------------------------------------------------
    def mmu_config(self, pae: bool) -> MMUConfig:
        return self.fallback_policy.mmu_config(pae)

    def attach(self, mmu: MMUView) -> None:
        super().attach(mmu)
        self.fallback_policy.attach(mmu)
