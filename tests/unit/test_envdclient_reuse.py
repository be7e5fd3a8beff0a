"""The guest client keeps its connection: a process stream read to its end returns the
connection to the pool, so back-to-back execs do not each open a TCP connection (a
connect into a TCG guest costs milliseconds). Against a real agent on loopback."""

from __future__ import annotations

import socket
from typing import Any

import anyio
import pytest

from pywrenn.envd.server import AgentServer
from pywrenn.envdclient import EnvdClient, EnvdError

pytestmark = pytest.mark.anyio


def count_connections(server: AgentServer) -> list[Any]:
    """The peer address of every connection the agent accepts from now on."""
    accepted: list[Any] = []
    serve_one = server.process_request

    def counted(request: socket.socket, client_address: Any) -> None:
        accepted.append(client_address)
        serve_one(request, client_address)

    server.process_request = counted  # type: ignore[method-assign]
    return accepted


async def test_back_to_back_execs_share_one_connection(envd_server: AgentServer) -> None:
    accepted = count_connections(envd_server)
    async with EnvdClient(f"http://127.0.0.1:{envd_server.port}") as agent:
        for _ in range(5):
            kinds = [event.kind async for event in agent.start("/bin/true", [])]
            assert kinds[0] == "start" and kinds[-1] == "end"
    assert len(accepted) == 1, accepted


async def test_a_preconnected_connection_serves_the_first_exec(envd_server: AgentServer) -> None:
    """`preconnect` opens the first exec's connection ahead of it: that exec connects
    no more, whether the connection is open by then or still being opened."""
    for settle in (True, False):
        accepted = count_connections(envd_server)
        async with EnvdClient(f"http://127.0.0.1:{envd_server.port}") as agent:
            agent.preconnect()
            agent.preconnect()  # a second ask while one is opening opens no other
            if settle:
                await anyio.sleep(0.2)
            kinds = [event.kind async for event in agent.start("/bin/true", [])]
            assert kinds[0] == "start" and kinds[-1] == "end"
        assert len(accepted) == 1, (settle, accepted)


async def test_a_failed_preconnect_leaves_the_first_exec_its_own_connect() -> None:
    """Nothing listening when the connection is opened ahead: the exec connects itself
    (and here fails as any exec to a closed port does), with nothing left over."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with EnvdClient(f"http://127.0.0.1:{port}") as agent:
        agent.preconnect()
        await anyio.sleep(0.1)
        with pytest.raises(EnvdError):
            [event async for event in agent.start("/bin/true", [])]
        assert agent._h1 is not None and not agent._h1._idle


async def test_closing_the_client_while_it_preconnects_leaks_nothing(
    envd_server: AgentServer,
) -> None:
    agent = EnvdClient(f"http://127.0.0.1:{envd_server.port}")
    agent.preconnect()
    await agent.aclose()
    await anyio.sleep(0.1)  # the connect's end, if it won the race, closes what it opened
    assert agent._h1 is not None and agent._h1._opening is None and not agent._h1._idle


async def test_init_shares_the_process_calls_connection(envd_server: AgentServer) -> None:
    """A warm-pool member's warm-up leaves a connection open; a hit's /init and then the
    capsule's first exec ride it instead of connecting again."""
    accepted = count_connections(envd_server)
    async with EnvdClient(f"http://127.0.0.1:{envd_server.port}") as agent:
        assert [e.kind async for e in agent.start("/bin/true", [])][-1] == "end"
        await agent.init(timestamp="2026-01-01T00:00:00Z", entropy=b"\x01" * 64)
        await agent.init_defaults(envVars={"A": "1"})
        assert [e.kind async for e in agent.start("/bin/true", [])][-1] == "end"
    assert len(accepted) == 1, accepted
