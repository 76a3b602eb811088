"""Fetch the guest's ingredients by package name: Debian i386 kernels and busybox.

The i386 packages are fetched with apt options selecting that architecture and a private state and
cache directory (the host's dpkg database and apt lists are left alone); the package version is
resolved at fetch time from the ``linux-image-686-pae`` / ``linux-image-686`` metapackages, never
hard-coded. Each package is unpacked with ``dpkg -x``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.record.errors import EnvironmentFailure

KERNELS = ("686-pae", "686")
"""Debian i386 kernel flavours: 686-pae (3-level PAE paging), 686 (2-level)."""

HOST_TOOLS = {"qemu-system-i386": "qemu-system-x86", "gcc": "gcc-multilib",
              "apt-get": "apt", "dpkg": "dpkg"}
"""Host commands the recorder runs and the Debian package that provides each."""


@dataclass
class Package:
    name: str
    version: str
    root: Path
    """Where the .deb was unpacked."""


def check_host_tools() -> None:
    for tool, package in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            raise EnvironmentFailure(f"{tool} not found; install the Debian package {package} "
                                     f"(apt-get install {package})")


def _host_sources() -> list[str]:
    """The host's Debian sources (deb.debian.org and its security suite only)."""
    found = []
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        if "debian.org" in text:
            found.append(path)
    return found


class I386Apt:
    """apt-get for i386 packages with a private state and cache directory under ``work``."""

    def __init__(self, work: Path) -> None:
        self.work = work / "apt"
        for sub in ("lists/partial", "cache/archives/partial", "etc"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        sources = self.work / "etc" / "sources.list.d"
        sources.mkdir(exist_ok=True)
        for path in _host_sources():
            keep = [block for block in Path(path).read_text().split("\n\n")
                    if "debian.org" in block]
            name = Path(path).name if "." in Path(path).name else "sources.list"
            (sources / name).write_text("\n\n".join(keep) + "\n")
        self.options = [
            "-o", "APT::Architecture=i386", "-o", "APT::Architectures=i386",
            "-o", f"Dir::State::Lists={self.work / 'lists'}",
            "-o", f"Dir::Cache={self.work / 'cache'}",
            "-o", "Dir::State::Status=/dev/null",
            "-o", f"Dir::Etc::SourceParts={sources}",
            "-o", "Dir::Etc::SourceList=/dev/null",
            "-o", "Debug::NoLocking=1",
        ]

    def _run(self, *args: str, cwd: Path | None = None) -> str:
        try:
            done = subprocess.run(list(args[:1]) + self.options + list(args[1:]), cwd=cwd,
                                  capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EnvironmentFailure(f"{args[0]} {args[1]} failed: {exc}") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise EnvironmentFailure(f"{' '.join(args[:3])} failed: {last}")
        return done.stdout

    def update(self) -> None:
        self._run("apt-get", "update", "-q")

    def candidate(self, name: str) -> str:
        """The version apt would fetch of ``name`` (EnvironmentFailure if none)."""
        out = self._run("apt-cache", "policy", name)
        match = re.search(r"Candidate:\s*(\S+)", out)
        if not match or match.group(1) == "(none)":
            raise EnvironmentFailure(f"no i386 package {name} in the Debian archive")
        return match.group(1)

    def kernel_package(self, flavour: str) -> str:
        """The versioned kernel image package the ``linux-image-FLAVOUR`` metapackage names."""
        meta = f"linux-image-{flavour}"
        out = self._run("apt-cache", "depends", meta)
        for line in out.splitlines():
            match = re.match(rf"\s*Depends:\s*(linux-image-[0-9][^\s]*-{re.escape(flavour)})$",
                             line.strip() and line)
            if match:
                return match.group(1)
        raise EnvironmentFailure(f"cannot resolve the kernel package of {meta}")

    def fetch(self, name: str) -> Package:
        """Download ``name`` (the candidate version) and unpack it; cached by version."""
        version = self.candidate(name)
        root = self.work / "unpacked" / f"{name}_{version.replace(':', '%3a')}"
        if not (root / ".complete").exists():
            debs = self.work / "debs"
            debs.mkdir(exist_ok=True)
            for old in debs.glob(f"{name}_*.deb"):
                old.unlink()
            self._run("apt-get", "download", "-q", f"{name}={version}", cwd=debs)
            deb = next(debs.glob(f"{name}_*.deb"), None)
            if deb is None:
                raise EnvironmentFailure(f"apt-get download {name} left no .deb")
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            done = subprocess.run(["dpkg", "-x", str(deb), str(root)], capture_output=True,
                                  text=True)
            if done.returncode != 0:
                raise EnvironmentFailure(f"dpkg -x {deb.name} failed: {done.stderr.strip()}")
            (root / ".complete").write_text(version + "\n")
        return Package(name, version, root)


def kernel_release(pkg: Package) -> str:
    """The kernel release (uname -r) of an unpacked linux-image package."""
    images = sorted((pkg.root / "boot").glob("vmlinuz-*"))
    if not images:
        raise EnvironmentFailure(f"{pkg.name} has no /boot/vmlinuz-*")
    return images[0].name[len("vmlinuz-"):]


def default_work_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "shadowbench" / "record"
