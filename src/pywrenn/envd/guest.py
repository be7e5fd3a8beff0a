"""Changes the agent makes to its machine, only when it runs as a capsule's guest agent.

Owns: setting the clock, reseeding the kernel RNG, address-space randomisation for the
processes started next, and the hostname (with the `127.0.1.1` line of /etc/hosts that
makes it resolve) after `/init`. The same agent also
runs on developer hosts and in tests, where touching the host's clock would be a
disaster, so `running_in_guest()` decides by looking, not by a flag: in a capsule, PID 1
is our guest init.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import stat
import struct
import time

log = logging.getLogger("pywrenn.envd")

GUEST_INIT_NAME = b"wrenn-init"
# Linux <linux/random.h>: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
# Leave the clock alone when it is already this close: stepping it is not free.
CLOCK_TOLERANCE_S = 0.05
HOSTS_PATH = "/etc/hosts"
RANDOMIZE_VA_SPACE = "/proc/sys/kernel/randomize_va_space"
# Debian's address for the machine's own name (so `sudo`, which looks its host up, answers
# at once instead of warning "unable to resolve host" after a DNS timeout).
OWN_NAME_ADDRESS = "127.0.1.1"
# RFC 1123 labels, dot-separated, at most 64 bytes (the kernel's limit): a name that
# becomes a line of /etc/hosts must not carry spaces, newlines or comments.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")
MAX_HOSTNAME_BYTES = 64
_DEFAULT_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def running_in_guest(proc_root: str = "/proc") -> bool:
    try:
        with open(os.path.join(proc_root, "1", "cmdline"), "rb") as f:
            return GUEST_INIT_NAME in f.read()
    except OSError:
        return False


def set_clock(epoch_seconds: float) -> bool:
    """Step the realtime clock to `epoch_seconds`; True when it was changed."""
    if abs(time.time() - epoch_seconds) < CLOCK_TOLERANCE_S:
        return False
    # time.clock_settime rather than ctypes: finding libc forks ldconfig, which costs
    # a couple of hundred milliseconds under TCG, on the restore path.
    time.clock_settime_ns(time.CLOCK_REALTIME, int(epoch_seconds * 1e9))
    return True


def add_entropy(seed: bytes) -> None:
    """Mix host-provided randomness into the kernel pool and force a reseed.

    A capsule restored from a template starts with its template's RNG state; without
    this, two clones would hand out the same "random" bytes.
    """
    if not seed:
        return
    padded = seed + b"\0" * (-len(seed) % 4)
    info = struct.pack("ii", len(seed) * 8, len(seed)) + padded
    with open("/dev/urandom", "wb") as dev:
        fcntl.ioctl(dev.fileno(), RNDADDENTROPY, info)
        try:
            fcntl.ioctl(dev.fileno(), RNDRESEEDCRNG)
        except OSError as exc:  # kernels before 4.17 lack it; the add alone still helps
            log.warning("RNDRESEEDCRNG failed: %s", exc)


def set_address_randomization(enabled: bool, path: str = RANDOMIZE_VA_SPACE) -> None:
    """Randomise the address space of processes started from now on (2: stack, mmap,
    vDSO and heap, the kernel's default) or lay each one out the same way (0).

    The host turns it off under TCG: QEMU 7.2 finds its translations of guest code by
    virtual address, so with every process's libraries at new addresses each process
    start translated the dynamic loader, libc and the shell again (`bash -l -c` as a
    user: ~59 ms with randomisation, ~20 ms without, docs/performance.md).
    """
    with open(path, "w") as f:
        f.write("2" if enabled else "0")


def valid_hostname(name: str) -> bool:
    return len(name) <= MAX_HOSTNAME_BYTES and _HOSTNAME.match(name) is not None


def set_hostname(name: str, hosts_path: str = HOSTS_PATH) -> None:
    """Name the machine and make the name resolve (as Wrenn's guest init does)."""
    if not valid_hostname(name):
        raise ValueError(f"invalid hostname {name!r}")
    socket.sethostname(name)
    write_hosts(name, hosts_path)


def hosts_with_hostname(text: str, name: str) -> str:
    """`text` (an /etc/hosts) whose one `127.0.1.1` line names `name`.

    Every other line is kept as it was (localhost, IPv6, anything a user added); the
    line goes right after the first `127.0.0.1` line, where Debian puts it.
    """
    kept = [line for line in text.splitlines() if _address(line) != OWN_NAME_ADDRESS]
    ours = f"{OWN_NAME_ADDRESS}\t{name}"
    at = next((i + 1 for i, line in enumerate(kept) if _address(line) == "127.0.0.1"), 0)
    return "\n".join([*kept[:at], ours, *kept[at:]]) + "\n"


def write_hosts(name: str, path: str = HOSTS_PATH) -> None:
    """Rewrite `path` for `name`; nothing is written when it already says so (every
    resume re-sends the same name).

    In place, like a container runtime's bind-mounted /etc/hosts: the file keeps its
    inode, owner and mode, and one write replaces its bytes. Making a new file and
    renaming it over the old one allocates an inode and blocks and journals a rename: in
    a new QEMU process under TCG that cost 36 ms more of every create's first /init (a
    miss's /init went from 112 to 76 ms). A reader racing that one write could see it
    half done, which a rename would rule out; at /init nothing in the guest has reason to
    read the file. A path that is not a plain file of one link (a symlink, a hard link,
    missing) is replaced by a new file, so nothing outside `path` changes.

    Not fsynced: every /init sends the name again and this rewrites the file from it, and
    a pause syncs the guest's disk before its snapshot, so the file never needs to outlive
    a crash on its own. A file a crash left empty is read as missing, so its localhost
    lines come back."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # missing, or a symlink (ELOOP)
        _replace_hosts(name, path)
        return
    with os.fdopen(fd, "r+b", buffering=0) as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            f.close()
            _replace_hosts(name, path)
            return
        current = f.readall()
        wanted = _hosts_bytes(current, name)
        if wanted == current:
            return
        written = 0
        while written < len(wanted):
            written += os.pwrite(fd, wanted[written:], written)
        if len(wanted) < len(current):
            os.ftruncate(fd, len(wanted))


def _hosts_bytes(current: bytes, name: str) -> bytes:
    text = current.decode("utf-8", "surrogateescape")
    if not text.strip():
        text = _DEFAULT_HOSTS
    return hosts_with_hostname(text, name).encode("utf-8", "surrogateescape")


def _replace_hosts(name: str, path: str) -> None:
    """A new file at `path` (readable by every user) renamed over whatever is there, with
    the lines of what `path` led to, if anything."""
    try:
        with open(path, "rb") as f:
            current = f.read()
    except OSError:
        current = b""
    wanted = _hosts_bytes(current, name)
    if wanted == current:
        return
    temp = f"{path}.wrenn-{os.getpid()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(wanted)
        os.chmod(temp, 0o644)  # whatever the umask: every user resolves names through it
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _address(line: str) -> str:
    fields = line.split("#", 1)[0].split()
    return fields[0] if fields else ""
