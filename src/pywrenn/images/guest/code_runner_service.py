#!/usr/bin/python3 -I
"""The code-runner image's boot service (installed as /etc/wrenn/services/jupyter).

wrenn-init starts it as root at boot and restarts it if it dies. It runs Jupyter Server
on port 8888 as wrenn-user, opens one `wrenn` kernel (which imports the usual data
libraries while it starts), and writes /run/wrenn-code-runner/ready once that kernel is
idle and the server has opened its WebSocket channels once: the image's readiness check
waits for that file before a base snapshot is taken, so every capsule restored from it
finds the kernel already running (the `wrenn` SDK reuses a running kernel of its
kernelspec) and the server already holding its kernel_info.

No token and no XSRF check: the port proxy in front decides who reaches a capsule's
ports (docs/proxy.md), and a capsule is its user's own machine.

Standard library only, but for jupyter_client (installed with the server) to wait for the
kernel.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid

USER = "wrenn-user"
PORT = 8888
KERNEL = "wrenn"
READY_DIR = "/run/wrenn-code-runner"
READY_FILE = f"{READY_DIR}/ready"
START_BUDGET_S = 1200.0  # under TCG the warm-up imports alone take minutes

SERVER_ARGS = (
    "-m",
    "jupyter_server",
    "--ip=0.0.0.0",
    f"--port={PORT}",
    "--port-retries=0",
    "--no-browser",
    "--IdentityProvider.token=",
    "--ServerApp.password=",
    "--ServerApp.disable_check_xsrf=True",
    "--ServerApp.allow_origin=*",
    "--ServerApp.allow_remote_access=True",
    f"--ServerApp.root_dir=/home/{USER}",
    f"--MappingKernelManager.default_kernel_name={KERNEL}",
)


def log(message: str) -> None:
    print(f"code-runner: {message}", file=sys.stderr, flush=True)


def drop_privileges() -> dict[str, str]:
    """Become wrenn-user (after making the ready dir it may write); its environment."""
    entry = pwd.getpwnam(USER)
    os.makedirs(READY_DIR, exist_ok=True)
    os.chown(READY_DIR, entry.pw_uid, entry.pw_gid)
    if os.path.exists(READY_FILE):
        os.unlink(READY_FILE)  # a restarted service is ready again only with a new kernel
    os.initgroups(USER, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.chdir(entry.pw_dir)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": entry.pw_dir,
        "USER": USER,
        "LOGNAME": USER,
        "SHELL": entry.pw_shell,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.clear()
    os.environ.update(env)  # ours too: jupyter_client finds the kernel's files under HOME
    return env


def call(
    method: str, path: str, body: dict[str, object] | None = None, timeout: float = 30.0
) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{PORT}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 (loopback)
        return json.loads(answer.read() or b"null")


def open_warm_kernel(server: int) -> None:
    """Wait for the server, start the `wrenn` kernel, and wait until it answers."""
    deadline = time.monotonic() + START_BUDGET_S
    kernel_id = ""
    while not kernel_id:
        if time.monotonic() > deadline:
            raise SystemExit(f"jupyter server not up in {START_BUDGET_S:.0f}s")
        if os.waitpid(server, os.WNOHANG)[0] != 0:
            raise SystemExit("jupyter server exited while starting")
        try:
            # A long timeout: a retried POST would start a second kernel.
            kernel = call("POST", "/api/kernels", {"name": KERNEL}, timeout=600.0)
            assert isinstance(kernel, dict)
            kernel_id = str(kernel["id"])
        except (OSError, urllib.error.URLError, ValueError):
            time.sleep(0.5)  # not listening yet
    log(f"kernel {kernel_id} starting")
    wait_for_kernel(kernel_id, deadline - time.monotonic())
    try:
        open_channels_once(kernel_id, deadline - time.monotonic())
    except (OSError, HandshakeRefused) as error:
        # Best effort: without it each capsule's server asks the kernel on its first
        # connection, as Jupyter does anyway.
        log(f"kernel {kernel_id}: could not open its channels once: {error}")


def wait_for_kernel(kernel_id: str, budget_s: float) -> None:
    """Ask the kernel for its info and wait for the answer: it has then run its warm-up,
    and the server sees it idle. (The server itself asks only once a client connects.)"""
    # Imported here: the rest of this file is stdlib-only and jupyter_client is slow to
    # import under TCG; it is installed beside the server.
    import queue

    from jupyter_client import BlockingKernelClient
    from jupyter_core.paths import jupyter_runtime_dir

    connection_file = os.path.join(jupyter_runtime_dir(), f"kernel-{kernel_id}.json")
    client = BlockingKernelClient(connection_file=connection_file)
    client.load_connection_file()
    # No heartbeat channel: a kernel busy with its warm-up under TCG misses heartbeats,
    # and jupyter_client's wait_for_ready takes that for a dead kernel. One request,
    # queued by ZeroMQ until the kernel listens, and one long wait for its reply.
    client.start_channels(hb=False)
    try:
        request = client.kernel_info()
        deadline = time.monotonic() + budget_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SystemExit(f"kernel {kernel_id} did not answer in {budget_s:.0f}s")
            try:
                reply = client.get_shell_msg(timeout=remaining)
            except queue.Empty:
                continue
            if reply.get("parent_header", {}).get("msg_id") == request:
                return
    finally:
        client.stop_channels()


class HandshakeRefused(Exception):
    pass


def open_channels_once(kernel_id: str, budget_s: float, port: int = PORT) -> None:
    """Open the kernel's WebSocket through the server once, and close it.

    The server answers a WebSocket's handshake only once it has the kernel's
    kernel_info reply, which it asks for (and then keeps) at the first connection. Asked
    here, before the base snapshot, the answer is in every capsule's server: a client's
    first handshake then waits for no round trip to the kernel, and a kernel still busy
    (or slow) in a fresh capsule cannot hold it past a client's connect timeout (the
    `wrenn` SDK's is httpx's default, 5 s). Standard library only: the handshake, then
    one masked close frame (RFC 6455)."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=max(budget_s, 1.0)) as sock:
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk or len(head) > 65536:
                raise HandshakeRefused(f"no WebSocket handshake from the server: {head[:200]!r}")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if status.split()[1:2] != [b"101"]:
            raise HandshakeRefused(f"WebSocket refused: {status!r}")
        sock.sendall(bytes([0x88, 0x80]) + os.urandom(4))  # close, no payload, masked
        sock.settimeout(5.0)
        try:
            while sock.recv(4096):  # until the server's close and end of stream
                pass
        except OSError:
            pass  # closed is all we wanted
    log(f"kernel {kernel_id}: channels opened once")


def main() -> None:
    env = drop_privileges()
    server = os.posix_spawn(sys.executable, [sys.executable, *SERVER_ARGS], env)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(server, signal.SIGTERM))
    started = time.monotonic()
    try:
        open_warm_kernel(server)
    except BaseException:
        os.kill(server, signal.SIGTERM)  # wrenn-init starts us (and a server) again
        raise
    with open(READY_FILE, "w") as ready:
        ready.write(f"{time.monotonic() - started:.1f}\n")
    log(f"ready in {time.monotonic() - started:.1f}s")
    _, status = os.waitpid(server, 0)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
