"""An asyncio client for QEMU's QMP control socket (unix socket, JSON lines).

Owns: connecting, capability negotiation, commands with a finite timeout, passing file
descriptors (``getfd``), and collecting asynchronous events. Knows nothing of: what the
commands mean for a VM's lifecycle (that is `vmm/qemu.py`).

We write our own (~200 lines) rather than take `qemu.qmp`: we need SCM_RIGHTS fd passing
for ``migrate fd:…`` on a socket we own, and one error tree of ours at the boundary.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pywrenn.vmm.errors import (
    QMPCommandError,
    QMPConnectError,
    QMPDisconnected,
    QMPError,
    QMPTimeout,
)

__all__ = ["DEFAULT_TIMEOUT", "QMPClient", "map_qmp_errors"]

DEFAULT_TIMEOUT = 10.0  # a QMP command that takes longer than this is a wedged VMM
_MAX_EVENTS = 256  # keep the newest events only: a chatty guest must not grow us without bound


@contextlib.contextmanager
def map_qmp_errors(what: str) -> Iterator[None]:
    """Translate socket/JSON/timeout failures into our `QMPError` tree, ``from exc``."""
    try:
        yield
    except QMPError:
        raise
    except TimeoutError as exc:
        raise QMPTimeout(f"timeout: {what} got no reply") from exc
    except (ConnectionError, EOFError) as exc:
        raise QMPDisconnected(f"disconnected: {what}: {exc}") from exc
    except OSError as exc:
        raise QMPConnectError(f"socket error: {what}: {exc}") from exc
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise QMPError(f"malformed reply: {what}: {exc}") from exc


class QMPClient:
    """One negotiated QMP connection. Create with `await QMPClient.connect(path)`."""

    def __init__(self, sock: socket.socket, path: Path) -> None:
        self._sock = sock
        self._path = path
        self._loop = asyncio.get_running_loop()
        self._next_id = 0
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._event_added = asyncio.Condition()
        self._closed_exc: BaseException | None = None
        self._reader: asyncio.Task[None] | None = None
        self.greeting: dict[str, Any] = {}

    @classmethod
    async def connect(cls, path: Path, *, timeout: float = DEFAULT_TIMEOUT) -> QMPClient:
        """Connect, read the greeting and send ``qmp_capabilities``; waits up to `timeout`."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        client = cls(sock, path)
        try:
            async with asyncio.timeout(timeout):
                with map_qmp_errors(f"connect {path}"):
                    try:
                        await client._loop.sock_connect(sock, str(path))
                    except OSError as exc:
                        raise QMPConnectError(f"cannot connect: {path}: {exc}") from exc
                client._reader = asyncio.create_task(client._read_loop(), name=f"qmp:{path}")
                greeting = await client._greeting
                client.greeting = greeting
                await client.execute("qmp_capabilities", timeout=timeout)
        except TimeoutError as exc:
            await client.close()
            raise QMPConnectError(f"no QMP greeting: {path} within {timeout}s") from exc
        except BaseException:
            await client.close()
            raise
        return client

    @property
    def _greeting(self) -> asyncio.Future[Any]:
        return self._pending.setdefault("__greeting__", self._loop.create_future())

    async def execute(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        fds: tuple[int, ...] = (),
    ) -> Any:
        """Run one command and wait up to `timeout` for its ``return`` value.

        `fds` are passed with the command via SCM_RIGHTS (what ``getfd`` expects).
        """
        if self._closed_exc is not None:
            raise QMPDisconnected(f"disconnected: {command} on closed {self._path}")
        self._next_id += 1
        cmd_id = f"w{self._next_id}"
        message: dict[str, Any] = {"execute": command, "id": cmd_id}
        if arguments:
            message["arguments"] = arguments
        payload = json.dumps(message).encode() + b"\n"
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[cmd_id] = future
        try:
            with map_qmp_errors(command):
                if fds:
                    # One sendmsg carries the ancillary fds; the command is tiny, so a
                    # non-blocking socket takes it whole (we check and fail loudly if not).
                    sent = self._sock.sendmsg(
                        [payload],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
                    )
                    if sent != len(payload):
                        raise QMPError(f"short write: {command} sent {sent}/{len(payload)}")
                else:
                    await self._loop.sock_sendall(self._sock, payload)
                async with asyncio.timeout(timeout):
                    reply = await future
        finally:
            self._pending.pop(cmd_id, None)
        if "error" in reply:
            err = reply["error"]
            raise QMPCommandError(
                f"command failed: {command}: {err.get('desc', err)}",
                error_class=str(err.get("class", "GenericError")),
            )
        return reply.get("return")

    def events_nowait(self, name: str | None = None) -> list[dict[str, Any]]:
        """Events received so far (optionally only `name`), oldest first; does not wait."""
        return [e for e in self._events if name is None or e.get("event") == name]

    async def wait_event(self, name: str, *, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Wait up to `timeout` for the next event called `name` and consume it."""
        try:
            async with asyncio.timeout(timeout), self._event_added:
                while True:
                    for i, event in enumerate(self._events):
                        if event.get("event") == name:
                            return self._events.pop(i)
                    if self._closed_exc is not None:
                        raise QMPDisconnected(f"disconnected: waiting for event {name}")
                    await self._event_added.wait()
        except TimeoutError as exc:
            raise QMPTimeout(f"timeout: event {name} not seen within {timeout}s") from exc

    async def close(self) -> None:
        """Close the socket and reap the reader task (idempotent)."""
        with contextlib.suppress(OSError):
            self._sock.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    async def __aenter__(self) -> QMPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        # The reader is owned by this client and awaited in close(); any failure is
        # delivered to every pending future, so no exception is ever lost.
        buf = b""
        exc: BaseException = QMPDisconnected(f"disconnected: {self._path} closed")
        try:
            while True:
                chunk = await self._loop.sock_recv(self._sock, 65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        await self._dispatch(json.loads(line))
        except (OSError, ValueError) as err:
            exc = QMPDisconnected(f"disconnected: {self._path}: {err}")
        finally:
            self._closed_exc = exc
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(exc)
            async with self._event_added:
                self._event_added.notify_all()

    async def _dispatch(self, message: dict[str, Any]) -> None:
        if "QMP" in message:
            greeting = self._greeting
            if not greeting.done():
                greeting.set_result(message["QMP"])
        elif "event" in message:
            async with self._event_added:
                self._events.append(message)
                del self._events[:-_MAX_EVENTS]
                self._event_added.notify_all()
        elif "id" in message:
            future = self._pending.get(str(message["id"]))
            if future is not None and not future.done():
                future.set_result(message)
