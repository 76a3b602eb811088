"""Cost profiles: counts of events -> cycles, per CPU generation, each number with its source.

Pricing is separate from simulating: a run's counters (bench.machine.counters) are priced here,
so a stored run is re-priced under another profile without simulating again. Every number names
where it comes from (docs/costs.md, which gathers the published numbers with their
references); numbers no publication gives are marked
``estimate`` with the reasoning. An exit costs the VM exit + entry round trip plus the
hypervisor's handler work for its cause; some causes add per-event work (zapping and creating
shadow pages, resynchronising gptes, extra emulation inside an exit, 2-D walk references).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from bench.errors import unknown_name

PROFILE_VERSION = 1
MAX_EVENT_CYCLES = 10**9
"""The most cycles one event may cost in a profile (a second of a GHz CPU): a bound that keeps
a mistyped or crafted number from overflowing the prices."""

CAUSES: tuple[str, ...] = (
    "emulated_pte_writes",
    "extra_emulation",
    "hidden_faults",
    "guest_faults",
    "unshadow",
    "rebuild",
    "unsync_resync",
    "invlpg_exits",
    "cr3_exits",
    "tdp_walks",
)
"""Cycle causes, in chart order (every virtualization cycle falls under exactly one)."""


@dataclass(frozen=True)
class CostProfile:
    """Cycles per event for one CPU. ``sources`` maps a field to its citation; ``estimates``
    names the fields no publication gives (their source text says how they were derived)."""

    name: str
    cpu: str
    exit_roundtrip: int
    hidden_fault: int
    ptwrite_emulate: int
    ptwrite_unshadow: int
    ptwrite_unsync: int
    guest_fault: int
    invlpg_exit: int
    cr3_exit: int
    extra_emulation: int
    shadow_page_create: int
    shadow_page_zap: int
    resync_page: int
    resync_gpte: int
    tdp_walk_ref: int
    native_load: int
    native_store: int
    native_locked_rmw: int
    native_invlpg: int
    native_cr3: int
    native_page_fault: int
    sources: dict[str, str] = field(default_factory=dict)
    estimates: tuple[str, ...] = ()
    version: int = PROFILE_VERSION

    def as_dict(self) -> dict:
        return asdict(self)

    # -- pricing ---------------------------------------------------------------------------------
    def virtualization_cycles(self, c: dict[str, int]) -> dict[str, int]:
        """Cycles spent by the hypervisor (and the hardware's 2-D walks), by cause."""
        rt = self.exit_roundtrip
        g = c.get
        extra_refs = max(0, g("tdp_walk_refs", 0) - g("native_walk_refs", 0))
        return {
            "emulated_pte_writes": g("exit_ptwrite_emulate", 0) * (rt + self.ptwrite_emulate),
            "extra_emulation": g("insn_emulation_extra", 0) * self.extra_emulation,
            "hidden_faults": g("exit_hidden_fault", 0) * (rt + self.hidden_fault),
            "guest_faults": g("exit_guest_fault", 0) * (rt + self.guest_fault),
            "unshadow": g("exit_ptwrite_unshadow", 0) * (rt + self.ptwrite_unshadow)
            + g("mmu_shadow_zapped", 0) * self.shadow_page_zap,
            "rebuild": g("mmu_cache_miss", 0) * self.shadow_page_create,
            "unsync_resync": g("exit_ptwrite_unsync", 0) * (rt + self.ptwrite_unsync)
            + g("mmu_resync", 0) * self.resync_page + g("mmu_resync_gpte", 0) * self.resync_gpte,
            "invlpg_exits": g("exit_invlpg", 0) * (rt + self.invlpg_exit),
            "cr3_exits": g("exit_cr3", 0) * (rt + self.cr3_exit),
            "tdp_walks": extra_refs * self.tdp_walk_ref,
        }

    def native_cycles(self, c: dict[str, int]) -> int:
        """What the same operations cost on bare metal."""
        g = c.get
        return (g("native_load", 0) * self.native_load + g("native_store", 0) * self.native_store
                + g("native_locked_rmw", 0) * self.native_locked_rmw
                + g("native_invlpg", 0) * self.native_invlpg + g("native_cr3", 0) * self.native_cr3
                + g("native_page_fault", 0) * self.native_page_fault
                + g("native_compute_cycles", 0))

    def price(self, c: dict[str, int]) -> dict:
        """{native, virtualization, total, overhead, by_cause} for one run's counters."""
        by_cause = self.virtualization_cycles(c)
        native = self.native_cycles(c)
        virt = sum(by_cause.values())
        return {
            "native_cycles": native,
            "virtualization_cycles": virt,
            "cycles": native + virt,
            "overhead": (native + virt) / native if native else float("nan"),
            "cycles_by_cause": by_cause,
        }


_AA06 = "Adams & Agesen, ASPLOS 2006, Pentium 4 VT-x table (second-hand quotes; docs/costs.md 3)"
_VMLAT = "yulyugin/vmlatency results (docs/costs.md 1)"
_HANSEN = "Dave Hansen, linux-mm 2015-06 (docs/costs.md 4)"

P4 = CostProfile(
    name="p4-vtx-2006", cpu="Pentium 4 (Prescott), first-generation VT-x",
    exit_roundtrip=2500, hidden_fault=7649, ptwrite_emulate=10233, ptwrite_unshadow=7649,
    ptwrite_unsync=7649, guest_fault=7649, invlpg_exit=2000, cr3_exit=4000, extra_emulation=1500,
    shadow_page_create=4000, shadow_page_zap=2000, resync_page=1000, resync_gpte=60,
    tdp_walk_ref=20, native_load=1, native_store=1, native_locked_rmw=100, native_invlpg=500,
    native_cr3=500, native_page_fault=1093,
    sources={
        "exit_roundtrip": "estimate: no Prescott round trip is published; Merom measures 1681 "
                          f"({_VMLAT}) and Prescott's transitions were slower",
        "ptwrite_emulate": f"derived: ptemod 12733 cycles in VT-x ({_AA06}) minus the round trip",
        "guest_fault": f"derived: pgfault 11242 in VT-x minus native 1093 ({_AA06}) minus the round trip",
        "hidden_fault": "estimate: the same guest walk as guest_fault, installing an spte instead",
        "ptwrite_unshadow": "estimate: a fault's walk plus unprotect (zaps priced apiece)",
        "ptwrite_unsync": "estimate: as ptwrite_unshadow",
        "invlpg_exit": "estimate: handler work within docs/costs.md 3's 500-4000 range",
        "cr3_exit": "estimate: root switch and hash lookups, within docs/costs.md 3's range",
        "extra_emulation": "estimate: decode and emulate one instruction without an exit; "
                           "every instruction a batch emulates, page-table write or not "
                           "(Xen's shadow_em_ex_pt and shadow_em_ex_non_pt)",
        "shadow_page_create": "estimate: allocation, zeroing, rmap write-protect walk",
        "shadow_page_zap": "estimate: unlink parents and children, free",
        "resync_page": "estimate", "resync_gpte": "estimate: read and compare one gpte",
        "tdp_walk_ref": "hypothetical estimate: Prescott has no EPT; priced as if it had, at a "
                        "page-walk reference mostly hitting its caches",
        "native_page_fault": f"{_AA06}: native pgfault 1093",
        "native_locked_rmw": "estimate: locked RMW on NetBurst is slow (~100 cycles)",
        "native_invlpg": "estimate", "native_cr3": "estimate",
    },
    estimates=("exit_roundtrip", "hidden_fault", "ptwrite_unshadow", "ptwrite_unsync",
               "invlpg_exit", "cr3_exit", "extra_emulation", "shadow_page_create",
               "shadow_page_zap", "resync_page", "resync_gpte", "tdp_walk_ref",
               "native_locked_rmw", "native_invlpg", "native_cr3"),
)

PENRYN = CostProfile(
    name="core2-penryn-2008", cpu="Core 2 Duo E8500 (Penryn, 45 nm), KVM 2.6.2x era",
    exit_roundtrip=1118, hidden_fault=2500, ptwrite_emulate=3500, ptwrite_unshadow=2500,
    ptwrite_unsync=2500, guest_fault=2000, invlpg_exit=1000, cr3_exit=2500, extra_emulation=800,
    shadow_page_create=2500, shadow_page_zap=1200, resync_page=600, resync_gpte=30,
    tdp_walk_ref=14, native_load=1, native_store=1, native_locked_rmw=20, native_invlpg=250,
    native_cr3=150, native_page_fault=800,
    sources={
        "exit_roundtrip": f"measured: E8500 1118 TSC ticks ({_VMLAT})",
        "hidden_fault": "estimate: KVM walk_addr + fetch + mmu_set_spte in software",
        "ptwrite_emulate": "estimate: walk + x86_emulate decode/execute + kvm_mmu_pte_write",
        "ptwrite_unshadow": "estimate", "ptwrite_unsync": "estimate", "guest_fault": "estimate",
        "invlpg_exit": "estimate (docs/costs.md 3: RT + 500-4000)",
        "cr3_exit": "estimate (docs/costs.md 3: RT + 500-4000)",
        "extra_emulation": "estimate: decode and emulate one instruction inside an exit, "
                           "page-table write or not (Xen's shadow_em_ex_pt, shadow_em_ex_non_pt)",
        "shadow_page_create": "estimate",
        "shadow_page_zap": "estimate", "resync_page": "estimate", "resync_gpte": "estimate",
        "tdp_walk_ref": "hypothetical estimate: Penryn has no EPT (Nehalem, 2008-11, was first); "
                        "priced as if it had, at a page-walk reference mostly hitting its caches",
        "native_locked_rmw": "estimate: ~18-25 cycles on Intel Core (docs/costs.md 4)",
        "native_invlpg": f"estimate near Westmere's 232 ({_HANSEN})",
        "native_cr3": f"estimate near Westmere's 108 ({_HANSEN})",
        "native_page_fault": "estimate",
    },
    estimates=("hidden_fault", "ptwrite_emulate", "ptwrite_unshadow", "ptwrite_unsync",
               "guest_fault", "invlpg_exit", "cr3_exit", "extra_emulation",
               "shadow_page_create", "shadow_page_zap", "resync_page", "resync_gpte",
               "tdp_walk_ref", "native_locked_rmw", "native_invlpg", "native_cr3",
               "native_page_fault"),
)

NEHALEM = CostProfile(
    name="nehalem-2009", cpu="Core i5-760 (Nehalem), EPT available",
    exit_roundtrip=950, hidden_fault=2000, ptwrite_emulate=2900, ptwrite_unshadow=2000,
    ptwrite_unsync=2000, guest_fault=1600, invlpg_exit=900, cr3_exit=2000, extra_emulation=650,
    shadow_page_create=2000, shadow_page_zap=1000, resync_page=500, resync_gpte=25,
    tdp_walk_ref=12, native_load=1, native_store=1, native_locked_rmw=20, native_invlpg=232,
    native_cr3=108, native_page_fault=700,
    sources={
        "exit_roundtrip": f"measured: i5-760 ~950 TSC ticks ({_VMLAT}); AnandTech 2009: ~40% "
                          "faster transitions than Penryn-era Xeons",
        "hidden_fault": "estimate: Penryn's handler scaled by ~0.8 for Nehalem's core",
        "ptwrite_emulate": "estimate: as hidden_fault",
        "ptwrite_unshadow": "estimate", "ptwrite_unsync": "estimate", "guest_fault": "estimate",
        "invlpg_exit": "estimate", "cr3_exit": "estimate", "extra_emulation": "estimate",
        "shadow_page_create": "estimate", "shadow_page_zap": "estimate",
        "resync_page": "estimate", "resync_gpte": "estimate",
        "tdp_walk_ref": "estimate: a page-walk reference mostly hitting the caches; a 2-D miss "
                        "takes up to 24 references against 4 (Gandhi et al., MICRO 2014)",
        "native_invlpg": f"Westmere Xeon 232 ({_HANSEN})",
        "native_cr3": f"Westmere 108 ({_HANSEN})",
        "native_locked_rmw": "estimate (docs/costs.md 4)", "native_page_fault": "estimate",
    },
    estimates=("hidden_fault", "ptwrite_emulate", "ptwrite_unshadow", "ptwrite_unsync",
               "guest_fault", "invlpg_exit", "cr3_exit", "extra_emulation",
               "shadow_page_create", "shadow_page_zap", "resync_page", "resync_gpte",
               "tdp_walk_ref", "native_locked_rmw", "native_page_fault"),
)

MODERN = CostProfile(
    name="skylake-2015", cpu="Core i7-6700K / Xeon Gold 6140 (Skylake)",
    exit_roundtrip=620, hidden_fault=1500, ptwrite_emulate=2200, ptwrite_unshadow=1500,
    ptwrite_unsync=1500, guest_fault=1200, invlpg_exit=700, cr3_exit=4386, extra_emulation=500,
    shadow_page_create=1500, shadow_page_zap=800, resync_page=400, resync_gpte=20,
    tdp_walk_ref=10, native_load=1, native_store=1, native_locked_rmw=18, native_invlpg=216,
    native_cr3=124, native_page_fault=600,
    sources={
        "exit_roundtrip": f"measured: i7-6700K ~608-632 TSC ticks ({_VMLAT})",
        "cr3_exit": "derived: 5006 cycles per shadow-MMU context-reset exit (Paolo Bonzini, "
                    "2022-02-17, CPU not named; docs/costs.md 2) minus the round trip",
        "hidden_fault": "estimate: KVM adds ~400-900 cycles to a bare exit (docs/costs.md 2); a shadow "
                        "fault walks the guest tables and sets an spte on top",
        "ptwrite_emulate": "estimate: hidden_fault plus the emulator",
        "ptwrite_unshadow": "estimate", "ptwrite_unsync": "estimate", "guest_fault": "estimate",
        "invlpg_exit": "estimate", "extra_emulation": "estimate",
        "shadow_page_create": "estimate", "shadow_page_zap": "estimate",
        "resync_page": "estimate", "resync_gpte": "estimate",
        "tdp_walk_ref": "estimate (see nehalem-2009)",
        "native_invlpg": f"Haswell Xeon 216 ({_HANSEN})",
        "native_cr3": f"Haswell 124 ({_HANSEN})",
        "native_locked_rmw": "estimate (docs/costs.md 4)", "native_page_fault": "estimate",
    },
    estimates=("hidden_fault", "ptwrite_emulate", "ptwrite_unshadow", "ptwrite_unsync",
               "guest_fault", "invlpg_exit", "extra_emulation", "shadow_page_create",
               "shadow_page_zap", "resync_page", "resync_gpte", "tdp_walk_ref",
               "native_locked_rmw", "native_page_fault"),
)

PROFILES: dict[str, CostProfile] = {p.name: p for p in (P4, PENRYN, NEHALEM, MODERN)}
DEFAULT_PROFILE = PENRYN.name
"""The era of the discussion (2008)."""


def profile(name: str) -> CostProfile:
    """A built-in profile by name, or the profile a TOML file describes (``NAME.toml``,
    bench.cost_file)."""
    from bench import cost_file

    if cost_file.is_profile_file(name):
        return cost_file.load(name)
    if name not in PROFILES:
        raise unknown_name("cost profile (or a PATH.toml file)", name, PROFILES)
    return PROFILES[name]


def profile_from_dict(data: dict) -> CostProfile:
    """Rebuild a profile stored in a results file (so re-pricing never depends on code drift)."""
    fields = dict(data)
    fields["estimates"] = tuple(fields.get("estimates", ()))
    return CostProfile(**fields)


def profile_problem(name: str) -> str | None:
    """Param check for a policy's ``cost_profile``: None for a built-in profile's name or a
    valid profile file, else what is wrong."""
    from bench.errors import BenchError

    try:
        profile(name)
    except BenchError as err:
        return str(err)
    return None
