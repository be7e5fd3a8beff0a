"""pyroute2's namespace helpers always end, even in a process whose SIGTERM handler raises.

Run in a process of its own: it installs a signal handler and changes pyroute2's config.
No namespace is needed. Each helper is asked for from a worker thread (as
`asyncio.to_thread` does) and answers at once; pyroute2 then sends it SIGTERM as it
closes it. In pyroute2's default mode (a bare fork whose `os._exit` is not in a
`finally`) that SIGTERM lands before the helper exits, a handler that raises unwinds it
past its exit into the copied thread pool loop, and it lives on: the parent waits for it
forever (here, on the very first helper).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap

HELPERS = 50
SCRIPT = textwrap.dedent(
    f"""
    import signal
    from concurrent.futures import ThreadPoolExecutor
    from pyroute2.process import ChildProcess
    from pywrenn.hostagent.nlchildren import configure_pyroute2

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as a bench's handler does
    configure_pyroute2()

    def answer():
        return b"ok"

    def ask():
        with ChildProcess(target=answer, args=[]) as child:
            print("helper", child.pid, flush=True)
            child.communicate()

    with ThreadPoolExecutor(1) as pool:
        for _ in range({HELPERS}):
            pool.submit(ask).result()
    print("done", flush=True)
    """
)


def test_helpers_end_though_our_sigterm_handler_raises() -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        for line in out.splitlines():  # the helpers that would not end
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[1]), signal.SIGKILL)
        raise AssertionError(f"waited for a helper for good: {out[-500:]!r}") from None
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == HELPERS + 1 and lines[-1] == "done", done.stdout[-500:]
    left = [
        pid
        for pid in (int(line.split()[1]) for line in lines[:-1])
        if os.path.exists(f"/proc/{pid}")
    ]
    assert not left, f"helpers still there: {left}"
