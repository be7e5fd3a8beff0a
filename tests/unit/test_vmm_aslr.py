"""Address-space randomisation in guests: what each setting means on each accelerator,
what the runtime sends in /init, and how the guest agent writes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pywrenn.envd import guest
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.vmm import NetworkSpec, QemuRuntime, VMHandle
from pywrenn.vmm.aslr import guest_aslr_enabled


@pytest.mark.parametrize(
    ("choice", "accel", "enabled"),
    [
        ("auto", "tcg", False),  # each process start would translate its libraries again
        ("auto", "kvm", True),
        ("on", "tcg", True),
        ("on", "kvm", True),
        ("off", "tcg", False),
        ("off", "kvm", False),
    ],
)
def test_each_choice_on_each_accelerator(choice: str, accel: str, enabled: bool) -> None:
    assert guest_aslr_enabled(choice, accel) is enabled  # type: ignore[arg-type]


def vm_on(accel: str, tmp_path: Path) -> VMHandle:
    return VMHandle("vm-1", 1, tmp_path, NetworkSpec.user(5000), accel)


def test_every_init_carries_the_hosts_choice_and_the_callers_fields(tmp_path: Path) -> None:
    runtime = QemuRuntime(tmp_path)
    assert runtime.guest_fields(vm_on("tcg", tmp_path), {"hostname": "cl-a"}) == {
        "aslr": False,
        "hostname": "cl-a",
    }
    assert runtime.guest_fields(vm_on("kvm", tmp_path), None) == {"aslr": True}
    # A caller that names it (a test, a bench's baseline) has the last word.
    assert runtime.guest_fields(vm_on("tcg", tmp_path), {"aslr": True}) == {"aslr": True}
    assert QemuRuntime(tmp_path, guest_aslr="on").guest_fields(vm_on("tcg", tmp_path), {}) == {
        "aslr": True
    }


def test_the_host_agent_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert HostAgentSettings(dir=tmp_path).guest_aslr == "auto"
    monkeypatch.setenv("WRENN_GUEST_ASLR", "on")
    assert HostAgentSettings(dir=tmp_path).guest_aslr == "on"
    monkeypatch.setenv("WRENN_GUEST_ASLR", "sometimes")
    with pytest.raises(ValidationError, match="guest_aslr"):
        HostAgentSettings(dir=tmp_path)


def test_the_guest_writes_the_kernels_values(tmp_path: Path) -> None:
    knob = tmp_path / "randomize_va_space"
    knob.write_text("2\n")
    guest.set_address_randomization(False, str(knob))
    assert knob.read_text() == "0"
    guest.set_address_randomization(True, str(knob))
    assert knob.read_text() == "2"
