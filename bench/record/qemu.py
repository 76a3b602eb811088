"""Boot the guest under QEMU TCG (never KVM) with the recording plugin and collect its output."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.record.errors import EnvironmentFailure

MEMORY_MB = 1536
"""Guest memory: about 655 MB of it is highmem, so HIGHPTE page tables live there."""
QEMU = "qemu-system-i386"
ICOUNT_RTC = "base=2026-01-01T00:00:00,clock=vm"
"""With -icount the RTC follows the virtual clock from a fixed date: QEMU's default RTC follows the
host's, and its update cycle (the UIP bit the kernel polls, the time it seeds its RNG with) would
make the run depend on when it happened."""
MARK_VA = 0x5B000000
"""The page guest/sbload.c stores phase marks to (must match it)."""


@dataclass
class GuestRun:
    events: Path
    """The plugin's raw event stream."""
    sections: dict[str, str]
    """What the guest printed on ttyS1, by section name."""
    command: list[str]
    seconds: float
    output: str
    """What QEMU (and the plugin) printed."""


def qemu_version() -> str:
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    except OSError as exc:
        raise EnvironmentFailure(f"{QEMU} not runnable: {exc}") from None
    return out.splitlines()[0].strip() if out else "unknown"


def parse_sections(text: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    for match in re.finditer(r"^SB-BEGIN (\S+)\n(.*?)^SB-END \1 rc=(\d+)$", text, re.S | re.M):
        sections[match.group(1)] = match.group(2)
        sections[match.group(1) + ".rc"] = match.group(3)
    return sections


def boot(work: Path, kernel: Path, initrd: Path, plugin: Path, pae: bool, icount: bool,
         timeout: float, progress: bool = True) -> GuestRun:
    events, data, console, mmulog = (work / n for n in ("events.raw", "ttyS1.txt", "console.txt",
                                                       "cr3.log"))
    for p in (events, data, console, mmulog):
        p.unlink(missing_ok=True)
    ram = MEMORY_MB << 20
    cmd = [QEMU, "-accel", "tcg", "-cpu", "qemu32", "-smp", "1", "-m", f"{MEMORY_MB}M",
           "-object", f"memory-backend-memfd,id=ram0,size={MEMORY_MB}M,share=on",
           "-machine", "pc,memory-backend=ram0", "-nodefaults", "-no-reboot", "-display", "none",
           "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", "console=ttyS0 nokaslr panic=-1 quiet loglevel=4 mitigations=auto",
           "-serial", f"file:{console}", "-serial", f"file:{data}",
           "-d", "mmu", "-D", str(mmulog),
           "-plugin", f"{plugin},out={events},log={mmulog},pae={int(pae)},ram={ram},mark={MARK_VA:#x}"]
    if icount:
        cmd[1:1] = ["-icount", "shift=0,sleep=off", "-rtc", ICOUNT_RTC]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as exc:
        raise EnvironmentFailure(f"cannot start {QEMU}: {exc}") from None
    seen: set[str] = set()
    try:
        while proc.poll() is None:
            time.sleep(1)
            elapsed = time.monotonic() - start
            text = data.read_text(errors="replace") if data.exists() else ""
            for name in re.findall(r"^SB-BEGIN (\S+)$", text, re.M):
                if name not in seen:
                    seen.add(name)
                    if progress:
                        size = events.stat().st_size >> 20 if events.exists() else 0
                        print(f"  [{elapsed:5.0f} s] guest: {name} (events so far {size} MB)",
                              file=sys.stderr)
            if elapsed > timeout:
                raise EnvironmentFailure(f"the guest did not finish within {timeout:.0f} s "
                                         f"(last section: {sorted(seen)[-1:] or 'none'})")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    text = data.read_text(errors="replace") if data.exists() else ""
    if "SB-DONE" not in text:
        tail = console.read_text(errors="replace").strip().splitlines() if console.exists() else []
        why = next((l for l in reversed(tail) if "panic" in l.lower()), None) or \
            (output.strip().splitlines() or tail or ["no output"])[-1]
        raise EnvironmentFailure(f"the guest did not complete its scenario: {why.strip()}")
    return GuestRun(events, parse_sections(text), cmd, time.monotonic() - start, output)
