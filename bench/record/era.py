"""Which policies model hypervisor code that could run a recorded 2026-era guest (Linux 6.1).

The shipped recordings are of Debian's 6.1 kernel; most policies model KVM and Xen releases of
2007-2009, which never ran such a guest. Running them on it is a what-if (the experiment users
want), and every table of a real guest says so with a marker (docs/real-guests.md, "Which
policies could have run this guest").
"""

from __future__ import annotations

NOW = "now"
WHAT_IF = "what-if"
MODEL = "model"

MARKERS = {NOW: "", WHAT_IF: " †", MODEL: " ‡"}
LEGEND = ("Markers: no marker, the mechanism of a hypervisor that runs 6.1 guests today (tdp: "
          "EPT/NPT, the default of KVM and Xen; per-page-flood and unsync: rules kept in today's "
          "KVM shadow MMU, modelled in their 3.x / 2.6.28 form); † a 2007-2009 release "
          "(KVM 2.6.20-2.6.27 flood counting, Xen 3.3.1 / 4.2 shadow code) that never ran a 6.1 "
          "guest: a what-if; ‡ no hypervisor shipped it (a proposal, a rule from the literature, "
          "or a bound).")

ERA = {
    "tdp": NOW,
    "per-page-flood": NOW,
    "unsync": NOW,
    "flood-count": WHAT_IF,
    "xen-batch": WHAT_IF,
    "xen-early-unshadow": WHAT_IF,
    "xen-oos": WHAT_IF,
    "accessed-clear": MODEL,
    "ski-rental": MODEL,
    "ski-rental-random": MODEL,
    "oracle": MODEL,
    "always-emulate": MODEL,
    "always-unshadow": MODEL,
}


def era(policy: str) -> str:
    """NOW, WHAT_IF or MODEL; a policy not listed (a third-party one) counts as MODEL."""
    return ERA.get(policy, MODEL)


def marked(policy: str, label: str) -> str:
    """``label`` with the policy's marker."""
    return label + MARKERS[era(policy)]
