"""The unmodified `e2b` SDK 2.63.0 against a real node (the node of test_wrenn_sdk.py:
host agent process, real VMs, the control plane under uvicorn).

REST calls go to the control plane (`api_url`). The SDK's guest-agent traffic (commands,
files) goes through the control plane's port proxy: `sandbox_url` names the control
plane's root, and the SDK sends the sandbox and port in its `E2b-Sandbox-Id` and
`E2b-Sandbox-Port` headers on every guest-agent call (its default URL,
`https://49983-{id}.{domain}`, needs TLS in front of the control plane). So this proves
the proxy's E2B routing, the token the control plane handed out being the one the guest
agent checks, a private sandbox's guest agent reachable without a traffic token, and
E2B's autoResume waking a paused sandbox on a request.
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
LIFECYCLE: Any = {"on_timeout": "pause", "auto_resume": True}


def _root(node: Node) -> str:  # noqa: F811
    return node.base_url.removesuffix("/api")


def _opts(node: Node, **more: Any) -> dict[str, Any]:  # noqa: F811
    return {"api_key": node.api_key, "api_url": _root(node), "request_timeout": 300, **more}


def _proxied(node: Node) -> dict[str, Any]:  # noqa: F811
    """SDK options whose guest-agent calls go through the port proxy."""
    return _opts(node, sandbox_url=_root(node))


def _at(sid: str, port: int, **more: str) -> dict[str, str]:
    return {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(port), **more}


def _wrenn(node: Node, capsule_id: str) -> dict[str, Any]:  # noqa: F811
    headers = {"X-API-Key": node.api_key}
    url = f"{node.base_url}/v1/capsules/{capsule_id}"
    body: dict[str, Any] = httpx.get(url, headers=headers, timeout=30).json()
    return body


def _out_chain(host_ip: str) -> list[str]:
    slot = int(ipaddress.IPv4Address(host_ip)) - int(HOST_IP_NET.network_address)
    argv = ["ip", "netns", "exec", SlotNetwork(slot).netns, "iptables", "-w", "-S", "WRENN-OUT"]
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.splitlines()


def test_create_run_pause_wake_connect_kill_a_real_capsule(node: Node) -> None:  # noqa: F811
    opts = _opts(node)
    sbx = Sandbox.create(
        "base",
        timeout=600,
        metadata={"suite": "e2e"},
        envs={"GREETING": "hello from e2b"},
        allow_internet_access=False,
        network={"allow_out": [ALLOWED], "allow_public_traffic": False},
        lifecycle=LIFECYCLE,
        **_proxied(node),
    )
    sid = sbx.sandbox_id
    try:
        # The guest agent through the port proxy, with the token the control plane
        # handed out, on a private sandbox: no traffic token needed for the guest agent.
        assert sbx.commands.run("echo hi").stdout == "hi\n"
        # As Wrenn's API: a base template's commands run as wrenn-user, in its home.
        assert sbx.commands.run("whoami; pwd").stdout == "wrenn-user\n/home/wrenn-user\n"
        result = sbx.commands.run("echo $GREETING > note; cat note")
        assert result.stdout == "hello from e2b\n"

        assert sid in [s.sandbox_id for s in Sandbox.list(**opts).next_items()]
        info = sbx.get_info()
        assert (info.state, info.metadata) == (SandboxState.RUNNING, {"suite": "e2e"})
        assert info.lifecycle == LIFECYCLE
        assert info.network == {
            "allow_out": [ALLOWED],
            "deny_out": [],
            "allow_public_traffic": False,
        }
        wrenn = _wrenn(node, sid)
        assert wrenn["status"] == "running"
        host_ip = wrenn["host_ip"]
        # The egress list is in the capsule's namespace, dropping everything else.
        assert _out_chain(host_ip)[1:] == [
            f"-A WRENN-OUT -d {ALLOWED} -j ACCEPT",
            "-A WRENN-OUT -j DROP",
        ]
        # Without the guest agent's token the guest agent refuses, through the proxy too;
        # another port of a private sandbox takes only its traffic token.
        root = _root(node)
        assert (
            httpx.get(f"{root}/envs", headers=_at(sid, AGENT_PORT), timeout=30).status_code == 401
        )
        assert httpx.get(root, headers=_at(sid, 8000), timeout=30).status_code == 403
        token = {"e2b-traffic-access-token": sbx.traffic_access_token or ""}
        assert httpx.get(root, headers=_at(sid, 8000, **token), timeout=30).status_code == 502

        assert sbx.pause() is True
        assert sbx.pause() is False
        assert sbx.get_info().state == SandboxState.PAUSED
        assert _wrenn(node, sid)["status"] == "paused"
        # autoResume: a request through the proxy wakes it.
        assert sbx.commands.run("cat note").stdout == "hello from e2b\n"
        assert sbx.get_info().state == SandboxState.RUNNING

        assert sbx.pause() is True
        resumed = Sandbox.connect(sid, timeout=300, **_proxied(node))
        assert resumed.get_info().state == SandboxState.RUNNING
        assert resumed.commands.run("cat note").stdout == "hello from e2b\n"
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
