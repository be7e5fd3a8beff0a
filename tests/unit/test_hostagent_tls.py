"""TLS on both hops of a registered agent: the agent serves HTTPS with
WRENN_AGENT_TLS_CERT/KEY, and verifies an https control plane against WRENN_CP_CA.

The certificate is self-signed for 127.0.0.1 (its own CA), made by the `openssl` tool
(the `cryptography` package is not a dependency). The control plane is
`StandInControlPlane` (tests/standin_controlplane.py) over TLS.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from pywrenn.hostagent.cluster import Registration, register_host
from pywrenn.hostagent.cpclient import ControlPlaneError
from pywrenn.hostagent.server import uvicorn_config
from pywrenn.hostagent.settings import HostAgentSettings
from tests.fake_host import FakeHost, fake_image
from tests.serving import self_signed_cert
from tests.standin_controlplane import StandInControlPlane

pytestmark = pytest.mark.anyio
AGENT_TOKEN = "t" * 40


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_cp(cert: tuple[Path, Path]) -> Iterator[StandInControlPlane]:
    with StandInControlPlane(tls=cert) as stand_in:
        yield stand_in


async def test_an_https_control_plane_is_verified_against_wrenn_cp_ca(
    tmp_path: Path, cert: tuple[Path, Path], tls_cp: StandInControlPlane
) -> None:
    assert tls_cp.url.startswith("https://")
    untrusting = HostAgentSettings(dir=tmp_path / "a")
    with pytest.raises(ControlPlaneError, match="CERTIFICATE_VERIFY_FAILED"):
        await register_host(
            untrusting, Registration("wrt_valid", tls_cp.url), agent_token=AGENT_TOKEN
        )
    trusting = HostAgentSettings(dir=tmp_path / "b", cp_ca=cert[0])
    await register_host(trusting, Registration("wrt_valid", tls_cp.url), agent_token=AGENT_TOKEN)
    assert (tmp_path / "b" / "host-credentials.json").exists()
    assert tls_cp.state.registrations[0]["address"].startswith("http://")


async def test_the_agent_serves_https_with_its_cert(
    tmp_path: Path, cert: tuple[Path, Path], tls_cp: StandInControlPlane
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = HostAgentSettings(
        dir=tmp_path,
        agent_listen=f"127.0.0.1:{port}",
        agent_tls_cert=cert[0],
        agent_tls_key=cert[1],
        cp_ca=cert[0],
        memory_capacity_mb=4096,
    )
    # Registration announces the https address by default.
    await register_host(settings, Registration("wrt_valid", tls_cp.url), agent_token=AGENT_TOKEN)
    assert tls_cp.state.registrations[0]["address"] == f"https://127.0.0.1:{port}"
    fake_image(tmp_path)
    host = FakeHost(tmp_path)
    server = uvicorn.Server(uvicorn_config(settings, host.manager, AGENT_TOKEN, None))
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                await asyncio.sleep(0.02)
        trust = ssl.create_default_context(cafile=str(cert[0]))
        async with httpx.AsyncClient(verify=trust) as client:
            answer = await client.get(f"https://127.0.0.1:{port}/health")
        assert answer.status_code == 200
    finally:
        server.should_exit = True
        await serving
