"""Host facts: TSC frequency detection, memory from smaps_rollup, liveness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pywrenn.vmm.host import pid_alive, proc_memory, tsc_khz

CPUINFO_MHZ = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\ncpu MHz\t\t: 2100.000\n"
CPUINFO_GHZ = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2670 @ 2.60GHz\n"


def test_tsc_prefers_sysfs(tmp_path: Path) -> None:
    (tmp_path / "tsc").write_text("2294608\n")
    (tmp_path / "cpuinfo").write_text(CPUINFO_MHZ)
    assert tsc_khz(tmp_path / "tsc", tmp_path / "cpuinfo") == 2294608


def test_tsc_falls_back_to_cpu_mhz(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(CPUINFO_MHZ)
    assert tsc_khz(tmp_path / "absent", tmp_path / "cpuinfo") == 2_100_000


def test_tsc_falls_back_to_model_name_ghz(tmp_path: Path) -> None:
    (tmp_path / "tsc").write_text("garbage")
    (tmp_path / "cpuinfo").write_text(CPUINFO_GHZ)
    assert tsc_khz(tmp_path / "tsc", tmp_path / "cpuinfo") == 2_600_000


def test_tsc_unknown_raises_naming_files(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text("processor\t: 0\n")
    with pytest.raises(ValueError, match="no TSC frequency"):
        tsc_khz(tmp_path / "absent", tmp_path / "cpuinfo")


def test_tsc_on_this_host_is_plausible() -> None:
    assert 500_000 < tsc_khz() < 10_000_000


def test_proc_memory_parses_smaps_rollup(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "smaps_rollup").write_text(
        "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:  1000 kB\nPss:   600 kB\n"
    )
    mem = proc_memory(42, tmp_path)
    assert (mem.rss_bytes, mem.pss_bytes) == (1000 * 1024, 600 * 1024)
    assert proc_memory(43, tmp_path).rss_bytes == 0


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(2**22 + 7)
