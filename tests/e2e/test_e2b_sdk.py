"""The unmodified `e2b` SDK 2.63.0 against a real node (the node of test_wrenn_sdk.py:
host agent process, real VMs, the control plane under uvicorn).

REST calls go to the control plane (`api_url`). The port proxy that carries the SDK's
guest-agent traffic is not part of this test, so the guest agent is reached directly at
the capsule's host address (`sandbox_url`, the SDK's documented override): that proves
the token the control plane handed out is the one the guest agent checks.
"""

from __future__ import annotations

import ipaddress
import subprocess
from typing import Any

import httpx
from e2b import NotFoundException, Sandbox, SandboxState

from pywrenn.hostagent.network import HOST_IP_NET, SlotNetwork
from pywrenn.vmm import AGENT_PORT
from tests.e2e.test_wrenn_sdk import Node, node  # noqa: F401
from tests.integration.conftest import guest_image  # noqa: F401

ALLOWED = "192.0.2.1/32"  # TEST-NET-1: documentation only, never routed


def _opts(node: Node, **more: Any) -> dict[str, Any]:  # noqa: F811
    api_url = node.base_url.removesuffix("/api")
    return {"api_key": node.api_key, "api_url": api_url, "request_timeout": 300, **more}


def _wrenn(node: Node, capsule_id: str) -> dict[str, Any]:  # noqa: F811
    headers = {"X-API-Key": node.api_key}
    url = f"{node.base_url}/v1/capsules/{capsule_id}"
    body: dict[str, Any] = httpx.get(url, headers=headers, timeout=30).json()
    return body


def _out_chain(host_ip: str) -> list[str]:
    slot = int(ipaddress.IPv4Address(host_ip)) - int(HOST_IP_NET.network_address)
    argv = ["ip", "netns", "exec", SlotNetwork(slot).netns, "iptables", "-w", "-S", "WRENN-OUT"]
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.splitlines()


def test_create_list_pause_connect_kill_a_real_capsule(node: Node) -> None:  # noqa: F811
    opts = _opts(node)
    sbx = Sandbox.create(
        "base",
        timeout=600,
        metadata={"suite": "e2e"},
        envs={"GREETING": "hello from e2b"},
        allow_internet_access=False,
        network={"allow_out": [ALLOWED]},
        **opts,
    )
    sid = sbx.sandbox_id
    try:
        assert sid in [s.sandbox_id for s in Sandbox.list(**opts).next_items()]
        info = sbx.get_info()
        assert (info.state, info.metadata) == (SandboxState.RUNNING, {"suite": "e2e"})
        assert info.network == {"allow_out": [ALLOWED], "deny_out": []}
        wrenn = _wrenn(node, sid)
        assert wrenn["status"] == "running"
        host_ip = wrenn["host_ip"]
        # The egress list is in the capsule's namespace, dropping everything else.
        assert _out_chain(host_ip)[1:] == [
            f"-A WRENN-OUT -d {ALLOWED} -j ACCEPT",
            "-A WRENN-OUT -j DROP",
        ]

        # The guest agent, with the token the control plane handed out.
        envd = f"http://{host_ip}:{AGENT_PORT}"
        direct = Sandbox.connect(sid, **_opts(node, sandbox_url=envd))
        result = direct.commands.run("echo $GREETING > /root/note; cat /root/note")
        assert result.stdout == "hello from e2b\n"
        assert httpx.get(f"{envd}/envs", timeout=10).status_code == 401  # no token: refused

        assert sbx.pause() is True
        assert sbx.pause() is False
        assert sbx.get_info().state == SandboxState.PAUSED
        assert _wrenn(node, sid)["status"] == "paused"
        resumed = Sandbox.connect(sid, timeout=300, **_opts(node, sandbox_url=envd))
        assert resumed.get_info().state == SandboxState.RUNNING
        assert resumed.commands.run("cat /root/note").stdout == "hello from e2b\n"
        # The list came back with the network at resume; a live change replaces it.
        assert _out_chain(host_ip)[1] == f"-A WRENN-OUT -d {ALLOWED} -j ACCEPT"
        sbx.update_network({"deny_out": ["198.51.100.0/24"]})
        assert _out_chain(host_ip)[1:] == [
            "-A WRENN-OUT -d 198.51.100.0/24 -j REJECT --reject-with icmp-admin-prohibited",
            "-A WRENN-OUT -j DROP",  # internet stays as the node's default: off
        ]
    finally:
        assert Sandbox.kill(sid, **opts) is True
    assert Sandbox.kill(sid, **opts) is False
    assert sid not in [s.sandbox_id for s in Sandbox.list(**opts).next_items()]
    assert _wrenn(node, sid)["status"] == "stopped"
    try:
        sbx.get_info()
        raise AssertionError("a killed sandbox is still found")
    except NotFoundException:
        pass
