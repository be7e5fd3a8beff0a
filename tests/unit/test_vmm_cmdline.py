"""The QEMU command line, word by word, and the guest kernel command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from pywrenn.vmm.qemu import LaunchConfig, build_argv, guest_cmdline
from pywrenn.vmm.runtime import BootSpec, NetworkSpec


def config(**overrides: object) -> LaunchConfig:
    values: dict[str, object] = {
        "vm_id": "cap1",
        "kernel": Path("/k/vmlinuz"),
        "initramfs": Path("/k/initrd"),
        "cmdline": "console=ttyS0 tsc_early_khz=2100000",
        "disk": Path("/r/cap1/disk.qcow2"),
        "run_dir": Path("/r/cap1"),
        "network": NetworkSpec.user(40001),
        "vcpus": 2,
        "memory_mb": 512,
        "accel": "tcg",
    }
    values.update(overrides)
    return LaunchConfig(**values)  # type: ignore[arg-type]


def opt(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == name]


def test_user_network_is_restricted_and_forwards_only_loopback_to_agent() -> None:
    argv = build_argv(config())
    assert opt(argv, "-netdev") == ["user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40001-:49983"]
    assert opt(argv, "-device") == [
        "virtio-blk-device,drive=root",
        "virtio-net-device,netdev=n0",
        "virtio-rng-device",
    ]


def test_microvm_essentials() -> None:
    argv = build_argv(config())
    assert argv[0] == "qemu-system-x86_64"
    assert opt(argv, "-machine") == ["microvm,memory-backend=ram0"]
    assert opt(argv, "-accel") == ["tcg,tb-size=64"]
    assert opt(argv, "-cpu") == ["max"]
    assert opt(argv, "-smp") == ["2"]
    assert opt(argv, "-object") == ["memory-backend-ram,id=ram0,size=512M"]
    assert {"-nodefaults", "-no-user-config", "-daemonize"} <= set(argv)
    assert "-nographic" not in argv  # QEMU refuses it together with -daemonize
    assert opt(argv, "-pidfile") == ["/r/cap1/qemu.pid"]
    assert opt(argv, "-D") == ["/r/cap1/vmm.log"]
    assert opt(argv, "-qmp") == ["unix:/r/cap1/qmp.sock,server=on,wait=off"]
    # The console is a 1 MiB ring in QEMU, never a file a guest could grow (hole 4).
    assert opt(argv, "-chardev") == ["ringbuf,id=console,size=1048576"]
    assert "-sandbox" not in argv
    assert opt(argv, "-serial") == ["chardev:console"]
    assert opt(argv, "-append") == ["console=ttyS0 tsc_early_khz=2100000"]
    assert opt(argv, "-drive") == [
        "id=root,file=/r/cap1/disk.qcow2,format=qcow2,if=none,cache=writeback,auto-read-only=off"
    ]
    assert "-incoming" not in argv
    assert "acpi=off" not in " ".join(argv)  # ACPI finds the virtio-mmio devices


def test_sandbox_when_probed() -> None:
    argv = build_argv(config(sandbox="on,obsolete=deny,resourcecontrol=deny"))
    assert opt(argv, "-sandbox") == ["on,obsolete=deny,resourcecontrol=deny"]


def test_kvm_accel() -> None:
    assert opt(build_argv(config(accel="kvm")), "-accel") == ["kvm"]


def test_template_source_shares_ram_file_and_clone_maps_it_private() -> None:
    source = build_argv(config(memory_file=Path("/t/mem"), memory_shared=True))
    clone = build_argv(config(memory_file=Path("/t/mem"), memory_shared=False, incoming=True))
    assert opt(source, "-object") == [
        "memory-backend-file,id=ram0,size=512M,mem-path=/t/mem,share=on"
    ]
    assert opt(clone, "-object") == [
        "memory-backend-file,id=ram0,size=512M,mem-path=/t/mem,share=off"
    ]
    assert opt(clone, "-incoming") == ["defer"]


def test_tap_runs_inside_the_namespace() -> None:
    argv = build_argv(config(network=NetworkSpec.tap("tap0", "wrenn-3", host_address="10.11.0.3")))
    assert argv[:4] == ["ip", "netns", "exec", "wrenn-3"]
    assert argv[4] == "qemu-system-x86_64"
    assert opt(argv, "-netdev") == ["tap,id=n0,ifname=tap0,script=no,downscript=no"]


def test_comma_in_path_is_refused() -> None:
    with pytest.raises(ValueError, match="contains ','"):
        build_argv(config(disk=Path("/r/a,b/disk.qcow2")))


def test_guest_cmdline_adds_host_musts_once() -> None:
    assert guest_cmdline("console=ttyS0 quiet", 2_100_000) == (
        "console=ttyS0 quiet tsc_early_khz=2100000 random.trust_cpu=on"
    )
    # The image may already say it; never duplicate or override.
    assert guest_cmdline("tsc_early_khz=5 random.trust_cpu=off", 9) == (
        "tsc_early_khz=5 random.trust_cpu=off"
    )


def test_specs_validate_with_value_in_message(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid: host_port 0"):
        NetworkSpec.user(0)
    with pytest.raises(ValueError, match=r"invalid: vcpus 40 is outside 1\.\.32"):
        BootSpec(tmp_path, tmp_path, "", tmp_path, tmp_path, NetworkSpec.user(1), vcpus=40)
    assert NetworkSpec.user(4000).agent_url() == "http://127.0.0.1:4000"
    assert (
        NetworkSpec.tap("t", "n", host_address="10.11.0.9").agent_url() == "http://10.11.0.9:49983"
    )
