"""Readiness after a restore (`vmm.qemu._ready_agent`): an /init attempt we gave up on
may still reach the guest, which then holds the token that attempt carried. The retry
must present that token instead of failing the restore with the guest's 401."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from pywrenn.vmm import qemu
from pywrenn.vmm.errors import BootError
from pywrenn.vmm.qemu import _ready_agent
from pywrenn.vmm.runtime import NetworkSpec, VMHandle
from tests.waiting import until

pytestmark = pytest.mark.anyio

NEW_TOKEN = "t-new-" + "n" * 20


class SlowFirstInit:
    """A guest agent whose first /init is applied but answered too late; from then on
    /init needs the token that first one set (as envd does)."""

    def __init__(self, hold_first_s: float) -> None:
        self.hold_first_s = hold_first_s
        self.token = ""
        self.answers: list[int] = []
        self.server: asyncio.Server | None = None
        self.open_connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        try:
            await self._answer(reader, writer)
        finally:
            writer.close()
            self.open_connections -= 1

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        headers = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:] if line)
        )
        body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
        if self.token and headers.get("x-access-token") != self.token:
            status = 401
        else:
            self.token = body.get("accessToken", self.token)
            status = 204
            if len(self.answers) == 0:
                self.answers.append(0)  # applied, but the answer comes too late
                await asyncio.sleep(self.hold_first_s)
        self.answers.append(status)
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()

    def vm(self) -> VMHandle:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return VMHandle("vm-test", os.getpid(), Path("/nonexistent"), NetworkSpec.user(port), "tcg")


async def test_a_late_first_init_does_not_fail_the_restore(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(qemu, "INIT_ATTEMPT_S", 1.0)  # give up on an attempt after 1 s
    guest = SlowFirstInit(hold_first_s=2.0)
    guest.server = await asyncio.start_server(guest.serve, "127.0.0.1", 0)
    async with guest.server:
        # The first attempt is given up on after 1 s; the guest applied it all the same.
        await _ready_agent(guest.vm(), timeout=20, init_fields={"accessToken": NEW_TOKEN})
        await until(lambda: guest.open_connections == 0, what="the late answer was written")
    assert guest.token == NEW_TOKEN
    assert 401 in guest.answers  # the retry without the token was refused, then repeated


async def test_a_refusal_with_nothing_given_up_is_still_an_error() -> None:
    guest = SlowFirstInit(hold_first_s=0.0)
    guest.token = "someone-elses"
    guest.server = await asyncio.start_server(guest.serve, "127.0.0.1", 0)
    async with guest.server:
        with pytest.raises(BootError, match="refused"):
            await _ready_agent(guest.vm(), timeout=5, init_fields={"accessToken": NEW_TOKEN})
