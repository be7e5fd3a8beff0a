"""How pyroute2 runs its namespace helpers in our processes.

pyroute2 does namespace work (create, remove, sockets inside one) in a child process.
In its default `fork` mode that child is a bare `os.fork()` of ours, made from whichever
worker thread asked, which runs the work and then `os._exit(0)` without a `try`: when
the child is slow to answer (its deadline, 2 s by default, is easily passed while VMs
boot on a small host) the parent sends it SIGTERM, and a SIGTERM handler the child
inherited from us (one that raises, as a bench's `KeyboardInterrupt` does) unwinds it
past that exit into the copied thread pool loop. It then lives for good: the parent
waits for it in `waitpid` forever (a create that never ends), and every descriptor it
inherited stays open (a spawn's exec-status pipe, so a QEMU start never returns).

In `mp` mode the child runs under `multiprocessing`, which always ends it with an exit
status whatever it raises, and with `disable_mp_signal` it takes SIGTERM and SIGINT
with their default actions. The deadline is longer too: a namespace built a little late
is better than a create failed for it.
"""

from __future__ import annotations

CHILD_DEADLINE_S = 15  # pyroute2's default is 2 s

_configured = False


def configure_pyroute2() -> None:
    """Set pyroute2's child mode and deadline; idempotent, cheap after the first call."""
    global _configured
    if _configured:
        return
    from pyroute2 import config

    config.child_process_mode = "mp"
    config.disable_mp_signal = True
    config.default_communicate_timeout = CHILD_DEADLINE_S
    _configured = True
