"""What the unmodified `e2b` SDK speaks to a plain `http://` server with its defaults.

The SDK asks for HTTP/2 by default (`http_version` "2"), through pyqwest (reqwest):
HTTP/2 is then negotiated by ALPN on TLS connections only; on a cleartext connection it
speaks HTTP/1.1, never h2c (no prior-knowledge preface, no `Upgrade: h2c`). So our
uvicorn listener, which speaks HTTP/1.1 only, serves it as it is. This test watches the
bytes of every connection the SDK opens, with default settings (no `http_version`, no
`E2B_HTTP_VERSION`), to the control plane (REST) and to the guest agent's address
(files and an RPC), so an SDK that starts using h2c fails here first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from e2b import Sandbox

from tests.cp_routes import Harness, run
from tests.e2b_harness import E2B, served

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class Sniffer:
    """A loopback TCP relay that keeps the head of each connection's first request; with
    no upstream it answers every request 404 itself."""

    def __init__(self, upstream: tuple[str, int] | None = None) -> None:
        self.upstream = upstream
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            head = exc.partial if isinstance(exc, asyncio.IncompleteReadError) else b""
        self.heads.append(head)
        if self.upstream is None or not head.endswith(b"\r\n\r\n"):
            writer.write(NOT_FOUND)
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        up_writer.write(head)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


def _versions(heads: list[bytes]) -> set[str]:
    return {head.split(b"\r\n", 1)[0].rsplit(b" ", 1)[-1].decode() for head in heads}


def test_the_sdk_with_its_defaults_speaks_http_1_1_over_cleartext(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path
) -> None:
    monkeypatch.delenv("E2B_HTTP_VERSION", raising=False)

    async def body(h: Harness) -> None:
        async with served(h) as url:
            host, port = url.removeprefix("http://").split(":")
            api, envd = Sniffer((host, int(port))), Sniffer()
            async with api.serving() as api_url, envd.serving() as envd_url:
                e = E2B(api_url, h.key)
                sbx = await e.call(Sandbox.create, "base", sandbox_url=envd_url, **e.opts())
                await e.call(sbx.get_info)
                with pytest.raises(Exception):  # noqa: B017 (the stub answers 404 to all)
                    await e.call(sbx.files.read, "/etc/hostname")
                with pytest.raises(Exception):  # noqa: B017
                    await e.call(sbx.commands.run, "true")
                await e.call(sbx.kill)
        for heads in (api.heads, envd.heads):
            assert heads and all(not head.startswith(H2_PREFACE[:14]) for head in heads)
            assert _versions(heads) == {"HTTP/1.1"}, heads
            assert all(b"upgrade:" not in head.lower() for head in heads)
        requests = {head.split(b" ", 2)[1].split(b"?")[0] for head in envd.heads}
        assert b"/files" in requests  # the files API, and an RPC beside it
        assert any(path.startswith(b"/process.Process/") for path in requests), requests

    run(sqlite_url, tmp_path, body)
