"""The built image boots under QEMU (TCG), its agent answers, and the KVM probe works.

Nothing is faked: this builds (or reuses) the real image and boots it. The guest's network
is QEMU user networking with `restrict=on`, so it can reach nothing but the one forwarded
port on the host's loopback.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

import pywrenn
from pywrenn.images import ImageManifest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

AGENT_PORT = 49983
READY_TIMEOUT = 60.0


def tsc_khz() -> int:
    # Under TCG the guest's TSC calibration is unreliable; vm-lab.md §2 passes the host's.
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return round(float(line.split(":")[1]) * 1000)
    raise AssertionError("no 'cpu MHz' in /proc/cpuinfo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def qemu_argv(
    image: ImageManifest, work: Path, extra_cmdline: str = "", port: int = 0
) -> list[str]:
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None, "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    overlay = work / "disk.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            str(image.rootfs),
            "-F",
            "raw",
            str(overlay),
        ],
        check=True,
    )
    cmdline = f"{image.cmdline} tsc_early_khz={tsc_khz()} {extra_cmdline}".strip()
    hostfwd = f",hostfwd=tcp:127.0.0.1:{port}-:{AGENT_PORT}" if port else ""
    return [
        qemu,
        *("-accel", "tcg", "-M", "microvm", "-cpu", "max", "-m", "256", "-smp", "1"),
        *("-nodefaults", "-no-user-config", "-nographic", "-display", "none", "-no-reboot"),
        *("-serial", f"file:{work / 'console.log'}"),
        *("-kernel", str(image.kernel), "-initrd", str(image.initramfs), "-append", cmdline),
        *("-drive", f"id=root,file={overlay},format=qcow2,if=none,cache=writeback"),
        *("-device", "virtio-blk-device,drive=root"),
        # restrict=on: the guest must never reach beyond the forwarded port.
        *("-netdev", f"user,id=n0,restrict=on{hostfwd}", "-device", "virtio-net-device,netdev=n0"),
    ]


def console(work: Path) -> str:
    path = work / "console.log"
    return path.read_text(errors="replace") if path.exists() else ""


def envd_has_entry_point() -> bool:
    return (Path(pywrenn.__file__).parent / "envd" / "__main__.py").is_file()


def test_image_boots_and_agent_answers_health(guest_image: ImageManifest, tmp_path: Path) -> None:
    port = free_port()
    argv = qemu_argv(guest_image, tmp_path, port=port)
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        status = None
        deadline = started + READY_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code
            except httpx.HTTPError:
                status = None
            if status == 204:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        log = console(tmp_path)
        if status != 204 and not envd_has_entry_point():
            # The agent is still being written; what this test can check is that our init
            # ran as PID 1 and started it.
            assert "started agent pid" in log, log
            pytest.xfail("pywrenn.envd has no __main__ yet; wrenn-init started it (console)")
        assert status == 204, f"no 204 from /health after {elapsed:.1f}s\n{log}"
        print(f"boot to /health 204: {elapsed:.2f}s")
        assert "started agent pid" in log
    finally:
        proc.kill()
        proc.wait()


def test_probe_prints_ok_and_powers_off(guest_image: ImageManifest, tmp_path: Path) -> None:
    argv = qemu_argv(guest_image, tmp_path, extra_cmdline="wrenn.probe=1")
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        returncode = proc.wait(timeout=READY_TIMEOUT)
        elapsed = time.monotonic() - started
        log = console(tmp_path)
        assert "WRENN-PROBE-OK" in log, log
        assert returncode == 0, log
        print(f"probe boot to power-off: {elapsed:.2f}s")
    finally:
        proc.kill()
        proc.wait()
