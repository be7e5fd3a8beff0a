"""Changes the agent makes to its machine, only when it runs as a capsule's guest agent.

Owns: setting the clock, reseeding the kernel RNG and the hostname after `/init`. The
same agent also runs on developer hosts and in tests, where touching the host's clock
would be a disaster, so `running_in_guest()` decides by looking, not by a flag: in a
capsule, PID 1 is our guest init.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import time

log = logging.getLogger("pywrenn.envd")

GUEST_INIT_NAME = b"wrenn-init"
# Linux <linux/random.h>: _IOW('R', 0x03, int[2]) and _IO('R', 0x07).
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207
# Leave the clock alone when it is already this close: stepping it is not free.
CLOCK_TOLERANCE_S = 0.05


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


def set_hostname(name: str) -> None:
    socket.sethostname(name)
