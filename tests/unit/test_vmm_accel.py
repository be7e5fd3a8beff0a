"""Choosing KVM or TCG: probe once per host key, then trust the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pywrenn.vmm.accel import CACHE_FILE, HostKey, choose_accel

pytestmark = pytest.mark.anyio
KEY = HostKey("6.18.44", "QEMU 7.2.22", kvm_present=True)


class Probe:
    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.calls = 0

    async def __call__(self) -> str | None:
        self.calls += 1
        return self.answer


async def test_no_dev_kvm_means_tcg_without_probing(tmp_path: Path) -> None:
    probe = Probe(None)
    key = HostKey("6.18.44", "QEMU 7.2.22", kvm_present=False)
    choice = await choose_accel(tmp_path, key, probe)
    assert (choice.accel, probe.calls) == ("tcg", 0)


async def test_failed_probe_means_tcg_and_is_cached(tmp_path: Path) -> None:
    probe = Probe("no WRENN-PROBE-OK within 15.0s")
    first = await choose_accel(tmp_path, KEY, probe)
    second = await choose_accel(tmp_path, KEY, probe)
    assert (first.accel, first.cached) == ("tcg", False)
    assert (second.accel, second.cached) == ("tcg", True)
    assert "no WRENN-PROBE-OK" in second.reason
    assert probe.calls == 1


async def test_working_probe_means_kvm(tmp_path: Path) -> None:
    choice = await choose_accel(tmp_path, KEY, Probe(None))
    assert choice.accel == "kvm"


@pytest.mark.parametrize(
    "changed",
    [
        HostKey("6.19.0", "QEMU 7.2.22", True),
        HostKey("6.18.44", "QEMU 8.2.0", True),
    ],
)
async def test_any_key_change_probes_again(tmp_path: Path, changed: HostKey) -> None:
    probe = Probe(None)
    await choose_accel(tmp_path, KEY, probe)
    await choose_accel(tmp_path, changed, probe)
    assert probe.calls == 2


@pytest.mark.parametrize("content", ["not json", "[]", '{"key": {}, "accel": "tcg"}'])
async def test_corrupt_cache_probes_again(tmp_path: Path, content: str) -> None:
    (tmp_path / CACHE_FILE).write_text(content)
    probe = Probe(None)
    assert (await choose_accel(tmp_path, KEY, probe)).accel == "kvm"
    assert probe.calls == 1
    assert json.loads((tmp_path / CACHE_FILE).read_text())["accel"] == "kvm"


async def test_unwritable_cache_dir_still_answers(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert (await choose_accel(blocker / "cache", KEY, Probe(None))).accel == "kvm"
