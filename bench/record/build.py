"""Build what the guest run needs: the plugin, the static scenario program, the initramfs."""

from __future__ import annotations

import gzip
import hashlib
import io
import subprocess
from pathlib import Path

from bench.record.errors import EnvironmentFailure
from bench.record.scenarios import Scenario

HERE = Path(__file__).parent
PLUGIN_SOURCE = HERE / "plugin" / "sbtrace.c"
GUEST = HERE / "guest"


def _compile(args: list[str], what: str) -> None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentFailure(f"building {what} failed: {exc}") from None
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["(no output)"])[0]
        raise EnvironmentFailure(f"building {what} failed ({' '.join(args[:2])}): {first}")


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def build_plugin(work: Path) -> Path:
    """The plugin shared object (rebuilt when its source changes)."""
    out = work / f"sbtrace-{_digest(PLUGIN_SOURCE, HERE / 'plugin' / 'qemu-plugin.h')}.so"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        _compile(["gcc", "-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-Wall",
                  f"-I{HERE / 'plugin'}", "-o", str(tmp), str(PLUGIN_SOURCE)], "the QEMU plugin")
        tmp.rename(out)
    return out


def build_sbload(work: Path) -> Path:
    """The static i386 scenario program (gcc -m32 -static: Debian gcc-multilib)."""
    src = GUEST / "sbload.c"
    out = work / f"sbload-{_digest(src)}"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        _compile(["gcc", "-m32", "-static", "-O2", "-o", str(tmp), str(src)],
                 "the guest program (needs gcc-multilib)")
        tmp.rename(out)
    return out


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio 'newc' archive of (path, mode, data) entries (directories have no data)."""
    buf = io.BytesIO()

    def put(name: str, mode: int, data: bytes, ino: int) -> None:
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        buf.write(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
        buf.write(b"\0" * (-(110 + len(raw)) % 4))
        buf.write(data)
        buf.write(b"\0" * (-len(data) % 4))

    for ino, (name, mode, data) in enumerate(entries, start=1):
        put(name, mode, data, ino)
    put("TRAILER!!!", 0, b"", 0)
    return buf.getvalue()


def build_initramfs(work: Path, busybox: Path, sbload: Path, scenario: Scenario,
                    modules: list[Path]) -> Path:
    """A gzip'd cpio initramfs: busybox, /init, the scenario script and program, zram modules."""
    script = (GUEST / "scenarios" / scenario.script).read_text()
    env = "".join(f"export {k}={v}\n" for k, v in sorted(scenario.settings.items()))
    dirs = ["bin", "dev", "proc", "sys", "tmp", "lib"]
    entries: list[tuple[str, int, bytes]] = [(d, 0o40755, b"") for d in dirs]
    entries += [("bin/busybox", 0o100755, busybox.read_bytes()),
                ("bin/sh", 0o120777, b"busybox"),
                ("bin/sbload", 0o100755, sbload.read_bytes()),
                ("init", 0o100755, (GUEST / "init.sh").read_bytes()),
                ("scenario.sh", 0o100644, (env + script).encode())]
    if scenario.swap:
        entries += [(f"lib/{m.name}", 0o100644, m.read_bytes()) for m in modules]
    out = work / f"initramfs-{scenario.name}.cpio.gz"
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(_cpio(entries), compresslevel=6, mtime=0))
    tmp.rename(out)
    return out
