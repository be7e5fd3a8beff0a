"""Fixtures for the guest agent: a real server on loopback, in this process."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from pywrenn.envd.config import AgentConfig
from pywrenn.envd.server import AgentServer, make_server
from tests.connect_client import ConnectClient


@pytest.fixture
def envd_server() -> Iterator[AgentServer]:
    server = make_server(AgentConfig(host="127.0.0.1", port=0))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def client(envd_server: AgentServer) -> ConnectClient:
    return ConnectClient("127.0.0.1", envd_server.port)
