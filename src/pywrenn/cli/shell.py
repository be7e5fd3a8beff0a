"""`wrenn capsule shell`: an interactive terminal in a capsule, over the PTY WebSocket.

Owns: the command, the WebSocket client (wsproto over a plain socket: the node speaks HTTP on
loopback or a private network), raw terminal mode, resize on SIGWINCH, and pumping bytes
both ways until the shell exits. Frames follow the wrenn SDK's PTY protocol: JSON text
frames for control, binary frames for terminal bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys
import termios
import tty
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import typer
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from pywrenn.cli.common import KEY, URL, api, run
from pywrenn.client import APIError

__all__ = ["capsule_shell", "run_shell"]


def capsule_shell(
    ctx: typer.Context,
    capsule_id: str,
    cmd: str = typer.Option("/bin/bash", help="program to run on the terminal"),
    url: str = URL,
    api_key: str = KEY,
) -> None:
    """Open an interactive terminal in a capsule (exit the shell to leave)."""
    with api(ctx, url, api_key) as client:
        key = client.api_key
    code = run(lambda: run_shell(url, key, capsule_id, cmd=cmd))
    raise typer.Exit(int(code) & 0xFF)


def run_shell(
    base_url: str,
    api_key: str,
    capsule_id: str,
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    cmd: str = "/bin/bash",
) -> int:
    """Attach the current terminal to a new shell in the capsule; return its exit code."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    url = urlsplit(base_url)
    if url.scheme != "http":
        raise APIError(0, "unsupported", f"shell needs an http:// URL, got {base_url!r}")
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=30)
    ws = WSConnection(ConnectionType.CLIENT)
    path = f"{url.path.rstrip('/')}/api/v1/capsules/{capsule_id}/pty"
    sock.sendall(
        ws.send(
            Request(host=url.netloc, target=path, extra_headers=[(b"x-api-key", api_key.encode())])
        )
    )
    _handshake(sock, ws)
    cols, rows = _size(stdout)
    start: dict[str, Any] = {"type": "start", "cmd": cmd, "cols": cols, "rows": rows}
    start["envs"] = {"TERM": os.environ.get("TERM", "xterm-256color")}
    sock.sendall(ws.send(TextMessage(json.dumps(start))))
    return _pump(sock, ws, stdin, stdout)


def _handshake(sock: socket.socket, ws: WSConnection) -> None:
    body = b""
    while True:
        data = sock.recv(65536)
        if not data:
            raise APIError(0, "closed", "the server closed the connection during the handshake")
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise APIError(status, "refused", "the server refused the terminal")
            elif isinstance(event, RejectData):
                body += event.data
                if event.body_finished:
                    raise _refusal(status, body)


def _refusal(status: int, body: bytes) -> APIError:
    try:
        error = json.loads(body)["error"]
        return APIError(status, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return APIError(status, "refused", body[:200].decode(errors="replace"))


def _pump(sock: socket.socket, ws: WSConnection, stdin: BinaryIO, stdout: BinaryIO) -> int:
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "socket")
    in_fd = stdin.fileno()
    selector.register(in_fd, selectors.EVENT_READ, "stdin")
    resized = False

    def on_winch(_signum: int, _frame: object) -> None:
        nonlocal resized
        resized = True

    previous = signal.signal(signal.SIGWINCH, on_winch) if stdout.isatty() else None
    saved = termios.tcgetattr(in_fd) if os.isatty(in_fd) else None
    exit_code = -1
    try:
        if saved is not None:
            tty.setraw(in_fd)
        while True:
            if resized:
                resized = False
                cols, rows = _size(stdout)
                _send(
                    sock,
                    ws,
                    TextMessage(json.dumps({"type": "resize", "cols": cols, "rows": rows})),
                )
            for key, _ in selector.select(timeout=0.5):
                if key.data == "stdin":
                    data = os.read(in_fd, 4096)
                    if not data:
                        selector.unregister(in_fd)  # EOF on a pipe: keep reading the shell
                        continue
                    _send(sock, ws, BytesMessage(data))
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    return exit_code
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, BytesMessage):
                        stdout.write(event.data)
                        stdout.flush()
                    elif isinstance(event, TextMessage):
                        message = json.loads(event.data or "{}")
                        kind = message.get("type") or "ping"
                        if kind == "exit":
                            return int(message.get("exit_code", -1))
                        if kind == "ping":
                            _send(sock, ws, TextMessage(json.dumps({"type": "pong"})))
                        elif kind == "error" and message.get("fatal"):
                            raise APIError(0, "pty", str(message.get("data", "")))
                    elif isinstance(event, CloseConnection):
                        return exit_code
    finally:
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)
        with contextlib.suppress(OSError):
            sock.close()


def _send(sock: socket.socket, ws: WSConnection, event: BytesMessage | TextMessage) -> None:
    sock.setblocking(True)
    try:
        sock.sendall(ws.send(event))
    finally:
        sock.setblocking(False)


def _size(stream: BinaryIO) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(stream.fileno())
        return size.columns, size.lines
    except (OSError, ValueError):
        return 80, 24
