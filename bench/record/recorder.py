"""`python -m bench record`: fetch, build, boot, run a scenario, write the recording."""

from __future__ import annotations

import bisect
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.errors import BenchError, unknown_name
from bench.record import build, fetch, format, qemu
from bench.record.errors import EnvironmentFailure
from bench.record.scenarios import Scenario, get

WALK_MODEL = {
    "tlb": "direct-mapped, 1024 sets of 4 KiB translations, one vCPU",
    "walks": "a data access or instruction fetch (per translated block) that misses the model, "
             "or a first write through a translation filled by a read (dirty bit)",
    "flushed_by": "CR3 load (user translations; kernel ones are global), INVLPG (its inferred "
                  "address), recording start",
    "not_modelled": "the kernel's direct map (0xC0000000-0xF7800000: large global pages), "
                    "instruction fetches after the first of a translated block, "
                    "capacity misses of a real TLB beyond the direct-mapped model",
}


def parse_vmstat(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_kallsyms(text: str) -> list[tuple[int, str]]:
    """Text symbols (address, name) sorted by address."""
    syms = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in "tT":
            try:
                syms.append((int(parts[0], 16), parts[2]))
            except ValueError:
                continue
    syms.sort()
    return syms


def used_symbols(events: Path, syms: list[tuple[int, str]]) -> list[list[Any]]:
    """The symbols that contain a pc of a store, INVLPG or walk event, as [address, name]."""
    addrs = [a for a, _ in syms]
    used: dict[int, str] = {}
    stream = format.EventStream()
    with open(events, "rb") as handle:
        while data := handle.read(format.CHUNK):
            pcs = {e.pc for e in stream.feed(data) if e.pc >= 0xC0000000}
            for pc in pcs:
                i = bisect.bisect_right(addrs, pc) - 1
                if i >= 0:
                    used[syms[i][0]] = syms[i][1]
    stream.finish()
    return [[a, n] for a, n in sorted(used.items())]


def _ensure_writable(out: Path) -> None:
    if out.is_dir():
        raise BenchError(f"--out {out} is a directory; give a file name (e.g. run.rec)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise BenchError(f"--out {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise BenchError(f"--out {out}: directory {parent} is not writable")


def record(scenario_name: str, kernel: str, out: Path, work: Path | None = None,
           icount: bool = False, timeout: float = 1800, progress: bool = True) -> dict[str, Any]:
    """Record ``scenario_name`` on the Debian i386 ``kernel`` flavour into ``out``. Returns the
    header written. BenchError for bad input; EnvironmentFailure for the rest."""
    scenario = get(scenario_name)
    if kernel not in fetch.KERNELS:
        raise unknown_name("kernel", kernel, fetch.KERNELS)
    _ensure_writable(out)
    work = work or fetch.default_work_dir()

    def step(msg: str) -> None:
        if progress:
            print(f"record: {msg}", file=sys.stderr)

    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EnvironmentFailure(f"cannot create the work directory {work}: {exc.strerror}")
    fetch.check_host_tools()
    step("resolving the i386 packages (apt-get update with a private state directory)")
    apt = fetch.I386Apt(work)
    apt.update()
    kernel_pkg = apt.fetch(apt.kernel_package(kernel))
    busybox = apt.fetch("busybox-static")
    release = fetch.kernel_release(kernel_pkg)
    step(f"kernel {kernel_pkg.name} {kernel_pkg.version}; busybox-static {busybox.version}")
    modules = [kernel_pkg.root / "lib" / "modules" / release / "kernel" / p
               for p in ("mm/zsmalloc.ko", "drivers/block/zram/zram.ko")]
    missing = [str(m) for m in modules if not m.exists()]
    if scenario.swap and missing:
        raise EnvironmentFailure(f"{kernel_pkg.name} lacks {missing[0]} (zram swap)")
    step("building the plugin, the guest program and the initramfs")
    plugin = build.build_plugin(work)
    initrd = build.build_initramfs(work, busybox.root / "bin" / "busybox",
                                   build.build_sbload(work), scenario, modules)
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{scenario.name}-", dir=work))
    step(f"booting under TCG ({'with' if icount else 'without'} -icount); scenario "
         f"{scenario.name}")
    try:
        run = qemu.boot(run_dir, kernel_pkg.root / "boot" / f"vmlinuz-{release}", initrd, plugin,
                        pae=kernel == "686-pae", icount=icount, timeout=timeout,
                        progress=progress)
        header = _header(scenario, kernel, kernel_pkg, busybox, run, icount, work, run_dir)
        step(f"guest done in {run.seconds:.0f} s; writing {out}")
        with open(run.events, "rb") as body:
            size = format.write_recording(out, header, body)
        step(f"wrote {out} ({size / 1e6:.2f} MB)")
        return header
    finally:
        for p in run_dir.iterdir():
            p.unlink()
        run_dir.rmdir()


def _header(scenario: Scenario, kernel: str, kernel_pkg: fetch.Package, busybox: fetch.Package,
            run: qemu.GuestRun, icount: bool, work: Path, run_dir: Path) -> dict[str, Any]:
    """The recording's header; the QEMU command names the work directory $WORK and the run's
    own directory $RUN."""
    sec = run.sections
    if sec.get("scenario.rc") != "0":
        last = (sec.get("scenario", "").strip().splitlines() or ["no output"])[-1]
        raise EnvironmentFailure(f"scenario {scenario.name} failed in the guest "
                                 f"(exit {sec.get('scenario.rc')}): {last}")
    before, after = parse_vmstat(sec.get("vmstat-before", "")), parse_vmstat(sec.get("vmstat-after", ""))
    if not before or not after:
        raise EnvironmentFailure("the guest printed no /proc/vmstat before or after the scenario")
    output = dict(re.findall(r"^([\w.-]+)=(.*)$", sec.get("scenario", ""), re.M))
    proof = scenario.proof(before, after, output)
    syms = parse_kallsyms(sec.get("kallsyms", ""))
    if len(syms) < 1000:
        raise EnvironmentFailure("the guest printed no usable /proc/kallsyms (booted nokaslr)")
    changed = {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] != before.get(k, 0)}
    pae = kernel == "686-pae"
    return {
        "format": "shadowbench-recording",
        "arch": "i386-pae" if pae else "i386",
        "paging_levels": 3 if pae else 2,
        "entry_bytes": 8 if pae else 4,
        "page_offset": 0xC0000000,
        "kinds": list(format.KIND_NAMES),
        "insn_classes": list(format.INSN_NAMES),
        "flags": {name: bit for bit, name in format.FLAG_NAMES.items()},
        "phases": list(scenario.phases),
        "provenance": {
            "kernel_package": kernel_pkg.name, "kernel_version": kernel_pkg.version,
            "kernel_release": sec.get("uname", "").strip(), "kernel_flavour": kernel,
            "busybox_package": busybox.name, "busybox_version": busybox.version,
            "qemu": qemu.qemu_version(), "scenario": scenario.name,
            "scenario_settings": scenario.settings, "guest_memory_mb": qemu.MEMORY_MB,
            "vcpus": 1, "icount": icount, "deterministic": icount,
            "guest_cmdline": sec.get("cmdline", "").strip(),
            "qemu_command": [a.replace(str(run_dir), "$RUN").replace(str(work), "$WORK")
                             for a in run.command],
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_seconds": round(run.seconds, 1),
        },
        "proof": {"checked": proof, "scenario_output": output, "vmstat_delta": changed,
                  "swaps": sec.get("swaps", "").strip()},
        "walk_model": WALK_MODEL,
        "symbols": used_symbols(run.events, syms),
    }
