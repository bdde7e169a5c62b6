"""The `make repro` kernel pin (CPU_ISA) and the kernel facts that experiments/timed_repro.py records."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIN = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


def _fake_bin(tmp_path: Path) -> Path:
    """A BIN whose `python` prints the pinning variables it was started with (and a fresh .installed)."""
    b = tmp_path / "bin"
    b.mkdir(parents=True)
    py = b / "python"
    py.write_text("#!/bin/sh\nfor k in " + " ".join(PIN) + "; do eval \"echo $k=\\${$k:-unset}\"; done\n")
    py.chmod(0o755)
    (b / ".installed").touch()
    os.utime(b / ".installed", (2**31 - 1, 2**31 - 1))  # newer than pyproject.toml: no re-install
    return b


def _make(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in PIN}
    return subprocess.run(["make", "-s", "-C", str(ROOT), "repro", f"BIN={_fake_bin(tmp_path)}", *args],
                          capture_output=True, text=True, env=env, timeout=60)


@needs_make
def test_make_repro_pins_kernels_only_when_asked(tmp_path):
    pinned = _make(tmp_path / "a", "CPU_ISA=avx2")
    assert pinned.returncode == 0, pinned.stderr
    assert "ATEN_CPU_CAPABILITY=avx2" in pinned.stdout and "MKL_CBWR=AVX2" in pinned.stdout
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in pinned.stdout
    native = _make(tmp_path / "b")
    assert native.returncode == 0, native.stderr
    assert all(f"{k}=unset" in native.stdout for k in PIN), native.stdout


@needs_make
def test_make_repro_rejects_unknown_cpu_isa(tmp_path):
    bad = _make(tmp_path, "CPU_ISA=avx9")
    assert bad.returncode != 0
    assert "CPU_ISA must be 'native' or 'avx2'" in bad.stderr


def test_timed_repro_records_the_kernel_selection(monkeypatch):
    spec = importlib.util.spec_from_file_location("timed_repro_script", ROOT / "experiments/timed_repro.py")
    timed_repro = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timed_repro)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    facts = timed_repro.cpu_facts()
    assert facts["ATEN_CPU_CAPABILITY"] == "default"
    assert facts["torch_cpu_capability"] == "DEFAULT"  # the child saw the variable
