"""Whether a guest randomises its processes' address space: the host's choice.

Owns: the setting (`auto`, `on`, `off`) and what `auto` means on each accelerator. The
host agent sends the answer in every `/init` (envd `aslr`); the guest agent applies it
to the processes it starts from then on (`/proc/sys/kernel/randomize_va_space`).

Why it is a choice at all: under TCG, QEMU 7.2 keeps its translations of guest code by
virtual address. With randomisation, every new process maps the dynamic loader, libc and
its program at new addresses, and TCG translates them all again: in a TCG guest,
`bash -l -c 'echo hi'` as a user took ~59 ms with it and ~20 ms without (p50 of 15,
docs/performance.md). On KVM the guest's code runs natively and randomisation costs
nothing, so `auto` keeps it there. Inside a capsule it guards the capsule's own
processes against each other (both default users may `sudo`), never the host: the VM is
that boundary.
"""

from __future__ import annotations

from typing import Literal

GuestAslr = Literal["auto", "on", "off"]


def guest_aslr_enabled(choice: GuestAslr, accel: str) -> bool:
    """True when a guest on `accel` should randomise: `auto` turns it off only under
    TCG, where each process start otherwise pays for its translation again."""
    if choice == "auto":
        return accel != "tcg"
    return choice == "on"
