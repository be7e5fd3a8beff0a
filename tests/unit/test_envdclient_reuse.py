"""The guest client keeps its connection: a process stream read to its end returns the
connection to the pool, so back-to-back execs do not each open a TCP connection (a
connect into a TCG guest costs milliseconds). Against a real agent on loopback."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from pywrenn.envd.server import AgentServer
from pywrenn.envdclient import EnvdClient

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
