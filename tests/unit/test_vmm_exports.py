"""The public surface of pywrenn.vmm and pywrenn.envdclient, and the QEMU-naming rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pywrenn.envdclient
import pywrenn.vmm

SRC = Path(pywrenn.vmm.__file__).parent


@pytest.mark.parametrize("module", [pywrenn.vmm, pywrenn.envdclient])
def test_all_is_sorted_and_complete(module: object) -> None:
    exported = module.__all__  # type: ignore[attr-defined]
    assert exported == sorted(exported)
    public = {n for n in vars(module) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(exported)


def test_only_the_backend_modules_name_qemu() -> None:
    # Words that tie a module to QEMU: only the backend may use them (STYLE habit 3).
    tied = re.compile(r"qemu-img|qemu-system|QMPClient|-incoming|migrate-incoming")
    allowed = {"qemu.py", "qmp.py", "overlays.py"}  # overlays.py: the backend's qcow2 disks
    offenders = [
        p.name for p in SRC.glob("*.py") if p.name not in allowed and tied.search(p.read_text())
    ]
    assert offenders == []
