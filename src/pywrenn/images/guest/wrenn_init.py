#!/usr/bin/python3 -IS
"""wrenn-init: PID 1 inside a capsule (installed as /usr/local/sbin/wrenn-init).

Owns: the guest's early mounts, its hostname, keeping the agent (envd) and the image's
boot services (/etc/wrenn/services/*) running, reaping every orphan, and a clean
power-off on SIGTERM. Knows nothing of: the agent's protocol.

Standard library only, and a small part of it: under TCG every imported module costs ~20x
its host time, and `subprocess`, `dataclasses`, `pathlib` and `socket` together added about
a second to boot. System calls go through ctypes instead, and `-IS` skips site.py.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

AGENT_ARGV = ("-m", "pywrenn.envd", "--host", "0.0.0.0", "--port", "49983")
AGENT_PYTHONPATH = "/opt/wrenn"
DEFAULT_HOSTNAME = "wrenn"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# An image's own boot services (the code-runner image's Jupyter server, say): supervised
# like the agent.
SERVICES_DIR = "/etc/wrenn/services"

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT = 1, 2, 4, 32
_LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC

# (target, fstype, flags, options): what a capsule expects before the agent starts. These
# are the guest's own mount points.
MOUNTS = (
    ("/run", "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755"),
    ("/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777"),  # noqa: S108
    ("/dev/pts", "devpts", _MS_NOSUID, "gid=5,mode=0620,ptmxmode=0666"),
    ("/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777"),  # noqa: S108
)

# SIGTERM from the VM runtime, SIGINT (ctrl-alt-del) and SIGPWR (ACPI button) all mean stop.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGPWR})
HANDLED = STOP_SIGNALS | {signal.SIGCHLD}

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0  # an agent that lived this long resets the backoff
STOP_GRACE = 5.0

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def log(message: str) -> None:
    # stdout is the console (ttyS0); the host keeps it as console.log. Uptime stamps make
    # boot time visible next to the kernel's own `[ 1.234]` lines.
    try:
        with open("/proc/uptime") as f:
            stamp = f.read().split()[0]
    except OSError:
        stamp = "?"
    print(f"wrenn-init[{stamp}]: {message}", flush=True)


def next_backoff(previous: float, lived: float) -> float:
    """Delay before restarting the agent: doubles on quick deaths, resets after a healthy run."""
    if lived >= HEALTHY_AFTER or previous <= 0:
        return BACKOFF_FIRST
    return min(previous * 2, BACKOFF_MAX)


def cmdline_value(cmdline: str, key: str) -> str | None:
    """The value of `key=` on the kernel command line, or None."""
    for arg in cmdline.split():
        if arg.startswith(key + "="):
            return arg[len(key) + 1 :]
    return None


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str) -> None:
    def enc(value: str | None) -> bytes | None:
        return None if value is None else value.encode()

    if libc().mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), target)


def mount_early() -> None:
    with open("/proc/self/mounts") as f:
        present = {line.split()[1] for line in f if line.strip()}
    for target, fstype, flags, options in MOUNTS:
        if target in present:
            continue
        try:
            os.makedirs(target, exist_ok=True)
            mount(fstype, target, fstype, flags, options)
        except OSError as exc:
            log(f"mount {target} failed ({exc}); continuing without it")


def set_hostname() -> None:
    with open("/proc/cmdline") as f:
        name = cmdline_value(f.read(), "wrenn.hostname")
    if not name:
        try:
            with open("/etc/hostname") as f:
                name = f.read().strip()
        except OSError:
            name = ""
    raw = (name or DEFAULT_HOSTNAME).encode()
    if libc().sethostname(raw, len(raw)) != 0:
        log(f"sethostname failed: {os.strerror(ctypes.get_errno())}")


class Service:
    """One supervised child: its pid (0 when not running) and restart schedule."""

    def __init__(self, name: str, argv: tuple[str, ...], env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.pid = 0
        self.started = 0.0
        self.backoff = 0.0
        self.restart_at = 0.0  # monotonic time of the next start when pid == 0

    def start(self) -> None:
        # posix_spawn, not subprocess: the child must start with an empty signal mask
        # (ours blocks everything we wait for), and only this loop may reap children.
        self.pid = os.posix_spawn(
            self.argv[0], list(self.argv), self.env, setsigmask=(), setsid=True
        )
        self.started = time.monotonic()
        log(f"started {self.name} pid {self.pid}: {' '.join(self.argv)}")

    def exited(self, status: int) -> None:
        lived = time.monotonic() - self.started
        self.backoff = next_backoff(self.backoff, lived)
        self.restart_at = time.monotonic() + self.backoff
        log(
            f"{self.name} pid {self.pid} exited (status {os.waitstatus_to_exitcode(status)}) "
            f"after {lived:.1f}s; restarting in {self.backoff:.1f}s"
        )
        self.pid = 0

    def start_or_retry(self) -> None:
        try:
            self.start()
        except OSError as exc:
            log(f"cannot start {self.name}: {exc}")
            self.started = time.monotonic()
            self.exited(1 << 8)


def agent_service() -> Service:
    env = {
        "PATH": PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONPATH": AGENT_PYTHONPATH,
        "PYTHONUNBUFFERED": "1",
    }
    return Service("agent", (sys.executable, *AGENT_ARGV), env)


def image_services(directory: str = SERVICES_DIR) -> list[Service]:
    """The image's own boot services: each executable file in `directory`, started as
    root after the agent (a service drops privileges itself), in name order."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    services = []
    for name in names:
        path = f"{directory}/{name}"
        if not name.startswith(".") and os.path.isfile(path) and os.access(path, os.X_OK):
            services.append(Service(name, (path,), env))
    return services


def reap(services: list[Service]) -> None:
    """Collect every exited child; orphans re-parented to PID 1 end up here too."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        for service in services:
            if pid == service.pid:
                service.exited(status)


def wait_children(grace: float) -> bool:
    """Reap until no children are left (True) or `grace` seconds pass (False)."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            time.sleep(0.05)
    return False


def power_off() -> None:
    log("stopping")
    for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 1.0)):
        try:
            os.kill(-1, sig)  # every process but PID 1
        except ProcessLookupError:
            break
        if wait_children(grace):
            break
    os.sync()
    try:
        mount(None, "/", None, _MS_REMOUNT | _MS_RDONLY, "")
    except OSError as exc:
        log(f"remount / read-only failed ({exc})")
    log("power off")
    libc().reboot(_LINUX_REBOOT_CMD_POWER_OFF)
    # reboot(2) only returns on error; exiting PID 1 panics, which also ends the VM.
    sys.exit(1)


def main() -> None:
    if os.getpid() != 1:
        sys.exit("wrenn-init: must run as PID 1")
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    log("starting")
    os.chdir("/")
    mount_early()
    set_hostname()
    services = [agent_service(), *image_services()]
    for service in services:
        service.start_or_retry()
    while True:
        now = time.monotonic()
        waits = [max(0.0, s.restart_at - now) for s in services if s.pid == 0]
        info = signal.sigtimedwait(HANDLED, min(waits, default=3600.0))
        if info is not None and info.si_signo in STOP_SIGNALS:
            power_off()
        reap(services)
        for service in services:
            if service.pid == 0 and time.monotonic() >= service.restart_at:
                service.start_or_retry()


if __name__ == "__main__":
    main()
