"""spikenorm.allocator: glibc keeps freed memory mapped after retain_freed_memory, and the CLI applies it."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

import spikenorm.cli
from spikenorm.allocator import retain_freed_memory

GLIBC = ctypes.util.find_library("c") is not None and sys.platform.startswith("linux")

# Resident MiB gained by allocating, touching and freeing a 256 MiB block, with or without retaining.
PROBE = """
import sys
from spikenorm.allocator import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
before = resident_mib()
block = bytearray(256 * 2**20)  # zero-filled: every page touched
del block
print(resident_mib() - before)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc malloc only")
def test_freed_memory_stays_mapped_only_when_retained():
    kept = {
        mode: float(
            subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
        )
        for mode in ("default", "retain")
    }
    assert kept["default"] < 64, kept  # glibc unmapped the block on free
    assert kept["retain"] > 200, kept  # the block's pages stay in the heap for reuse


def test_trim_threshold_is_checked():
    with pytest.raises(ValueError, match="trim_threshold"):
        retain_freed_memory(trim_threshold=2**31)


@pytest.mark.parametrize("setting, applied", [(None, True), ("default", False)])
def test_console_script_applies_it_unless_opted_out(monkeypatch, setting, applied):
    calls = []
    monkeypatch.setattr(spikenorm.cli, "retain_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(spikenorm.cli, "SpikenormCLI", lambda args: None)
    if setting is None:
        monkeypatch.delenv("SPIKENORM_MALLOC", raising=False)
    else:
        monkeypatch.setenv("SPIKENORM_MALLOC", setting)
    spikenorm.cli.main([])
    assert bool(calls) == applied
