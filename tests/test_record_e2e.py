"""`python -m bench record`: bad input without QEMU; one short real recording with QEMU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from bench.__main__ import main
from bench.record import format as F


def test_bad_input_is_exit_2_before_anything_runs(tmp_path, capsys):
    assert main(["record", "nosuch", "--kernel", "686", "--out", str(tmp_path / "a.rec")]) == 2
    err = capsys.readouterr().err
    assert "unknown scenario 'nosuch'" in err and "reclaim" in err
    assert main(["record", "reclaim", "--kernel", "686-smp", "--out", str(tmp_path / "a.rec")]) == 2
    assert "unknown kernel '686-smp'" in capsys.readouterr().err
    assert main(["record", "reclaim", "--kernel", "686", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["record", "reclaim", "--kernel", "686", "--out",
                 str(tmp_path / "missing" / "a.rec")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_missing_host_tool_is_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["record", "fork-exit", "--kernel", "686", "--out", str(tmp_path / "a.rec"),
                 "--work", str(tmp_path / "work")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "install the Debian package" in err[0]
    assert not (tmp_path / "a.rec").exists()


MISSING = [tool for tool in ("qemu-system-i386", "gcc") if shutil.which(tool) is None]


def require_qemu():
    """Skip where QEMU or gcc is missing, except in CI (CI=true): there .ci/run installs them, so
    their absence is a failure, never a silent skip."""
    if MISSING:
        why = (f"{' and '.join(MISSING)} not found: qemu-system-i386 (Debian qemu-system-x86) and "
               f"gcc (gcc-multilib) are needed to record a real guest")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {why}; .ci/run installs them as root")
        pytest.skip(why)


@pytest.fixture
def qemu():
    require_qemu()


def test_missing_qemu_fails_under_ci(monkeypatch):
    """The fixture's CI rule itself: with the tools gone and CI=true, the test fails."""
    monkeypatch.setattr(sys.modules[__name__], "MISSING", ["qemu-system-i386"])
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but qemu-system-i386 not found"):
        require_qemu()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_qemu()


def _record(out, *extra):
    done = subprocess.run([sys.executable, "-m", "bench", "record", "fork-exit", "--kernel", "686",
                           "--out", str(out), "--timeout", "600", *extra],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return F.open_recording(out)


def test_record_and_inspect_a_real_guest(tmp_path, qemu):
    """Two -icount recordings of one scenario: both complete and proven, identical events."""
    out = tmp_path / "fork.rec"
    rec = _record(out, "--icount")
    prov = rec.header["provenance"]
    assert prov["kernel_package"].startswith("linux-image-") and prov["kernel_package"].endswith("-686")
    assert prov["scenario"] == "fork-exit" and prov["icount"] is True
    assert prov["deterministic"] is True
    assert rec.header["proof"]["checked"]["children_ok"] == 16
    kinds = {F.KIND_NAMES[e.kind] for e in rec.events()}
    assert {"table", "store", "mark", "walk", "invlpg"} <= kinds
    shown = subprocess.run([sys.executable, "-m", "bench", "inspect", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "copy_page_range" in shown.stdout and "children_ok 16" in shown.stdout
    again = _record(tmp_path / "again.rec", "--icount")
    assert again.header["body"] == rec.header["body"]  # events, bytes, sha256 of the events
