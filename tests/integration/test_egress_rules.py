"""Per-capsule egress lists (hostagent/egress.py) in real namespaces and host chains:
where the chain sits, live changes in both directions, and that nothing outlives the
network. Rules are read back with `iptables -S`. Domain names are proven with a real
capsule reaching listeners in a namespace this test makes, through names a stub DNS
server on loopback answers; no traffic leaves the machine."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pywrenn.hostagent import dns, dnsegress, egress, network
from pywrenn.hostagent.guest_ops import GuestService
from pywrenn.hostagent.manager import CreateRequest, SandboxManager
from pywrenn.hostagent.network import SlotNetwork
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.wire import ProcessSpec
from pywrenn.images import ImageManifest
from pywrenn.layout import Layout
from pywrenn.vmm import QemuRuntime
from tests.dns_stub import StubDnsServer
from tests.integration.conftest import wrenn_dir_with_cached_image

# High slots, away from test_network.py's and any host agent's.
SLOT_INSTALL = 32011
SLOT_LIVE = 32012
JUMP = "-A FORWARD -i tap0 -j WRENN-OUT"
BLANKET_DROP = "-A FORWARD -i tap0 -j DROP"


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def ns_rules(net: SlotNetwork, chain: str) -> list[str]:
    return sh("ip", "netns", "exec", net.netns, "iptables", "-w", "-S", chain).splitlines()


def host_forwards(net: SlotNetwork) -> bool:
    rule = f"-A WRENN-EGRESS -i {net.veth_host} -j ACCEPT"
    return rule in sh("iptables", "-w", "-S", "WRENN-EGRESS").splitlines()


@pytest.fixture
def made() -> Iterator[list[SlotNetwork]]:
    nets: list[SlotNetwork] = []
    asyncio.run(network.ensure_host_guards())
    yield nets
    for net in nets:
        asyncio.run(network.remove_network(net))
        assert not host_forwards(net)
        assert net.netns not in sh("ip", "netns", "list")


def test_the_chain_comes_after_every_block(made: list[SlotNetwork]) -> None:
    net = SlotNetwork(SLOT_INSTALL)
    policy = egress.policy(False, ["1.1.1.1", "10.0.0.0/8"], ["0.0.0.0/0"])
    asyncio.run(network.create_network(net, egress=policy.forwarded))
    made.append(net)
    asyncio.run(egress.install(net, policy))
    forward = ns_rules(net, "FORWARD")
    jump = forward.index(JUMP)
    rejects = [i for i, rule in enumerate(forward) if "-j REJECT" in rule]
    # An allowed 10.0.0.0/8 cannot open what the namespace blocks: the blocks come first.
    assert rejects and max(rejects) < jump
    assert BLANKET_DROP not in forward
    assert ns_rules(net, "WRENN-OUT")[1:] == [
        "-A WRENN-OUT -d 1.1.1.1/32 -j ACCEPT",
        "-A WRENN-OUT -d 10.0.0.0/8 -j ACCEPT",
        "-A WRENN-OUT -j REJECT --reject-with icmp-admin-prohibited",
        "-A WRENN-OUT -j DROP",
    ]
    assert host_forwards(net)  # the allowed ranges need the host to forward


def test_live_changes_open_and_close_both_layers(made: list[SlotNetwork]) -> None:
    net = SlotNetwork(SLOT_LIVE)
    asyncio.run(network.create_network(net, egress=False))
    made.append(net)
    assert BLANKET_DROP in ns_rules(net, "FORWARD") and not host_forwards(net)

    # Off → an allow list: the chain decides, the host forwards.
    asyncio.run(egress.update(net, egress.policy(False, ["9.9.9.9"], [])))
    forward = ns_rules(net, "FORWARD")
    assert BLANKET_DROP not in forward and forward.count(JUMP) == 1
    assert ns_rules(net, "WRENN-OUT")[1:] == [
        "-A WRENN-OUT -d 9.9.9.9/32 -j ACCEPT",
        "-A WRENN-OUT -j DROP",
    ]
    assert host_forwards(net)

    # Internet on with a deny list; applied twice, nothing is doubled.
    for _ in range(2):
        asyncio.run(egress.update(net, egress.policy(True, [], ["192.0.2.0/24"])))
    assert ns_rules(net, "FORWARD").count(JUMP) == 1
    assert ns_rules(net, "WRENN-OUT")[1:] == [
        "-A WRENN-OUT -d 192.0.2.0/24 -j REJECT --reject-with icmp-admin-prohibited"
    ]
    assert sh("iptables", "-w", "-S", "WRENN-EGRESS").count(f"-i {net.veth_host} ") == 1

    # Everything off again: the chain drops all, the host stops forwarding.
    asyncio.run(egress.update(net, egress.policy(False, [], [])))
    assert ns_rules(net, "WRENN-OUT")[1:] == ["-A WRENN-OUT -j DROP"]
    assert not host_forwards(net)
    assert f"-s {net.veth_ns_ip}/32" not in sh("iptables", "-w", "-t", "nat", "-S")


# -- domain names (hostagent/domains.py, dnsegress.py) in a real capsule ------------------

FAR_NS = "wrenn-egt-far"  # not a slot's name: no agent's reaper takes it for one
FAR_NET = "198.18.0"  # RFC 2544 benchmarking: routed here to the namespace below only
SERVE_MANY = r"""
import socket, sys
s = socket.create_server(("0.0.0.0", 0))
print(s.getsockname()[1], flush=True)
s.settimeout(300)
while True:
    c, _ = s.accept()
    print("accepted", c.getsockname()[0], flush=True)
    c.close()
"""
# Runs in the guest: for each [name or address, port], resolve it (a name) and connect.
GUEST_REACH = r"""
import json, socket, sys, time
out = {}
for target, port in json.loads(sys.argv[1]):
    t = time.monotonic()
    try:
        address = socket.getaddrinfo(target, port, socket.AF_INET)[0][4][0]
    except socket.gaierror as e:
        out[target] = "unresolved"
        print(target, "unresolved", round(time.monotonic() - t, 2), file=sys.stderr)
        continue
    try:
        socket.create_connection((address, port), timeout=3).close()
        out[target] = "connected " + address
    except OSError as e:
        out[target] = type(e).__name__
    print(target, out[target], round(time.monotonic() - t, 2), file=sys.stderr)
print(json.dumps(out))
"""


@pytest.fixture
def far_listener() -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """A namespace on this machine holding 198.18.0.10-12, routed from the host, with a
    listener on all of them: a stand-in for the internet that never leaves the machine."""
    steps = [
        ["ip", "netns", "add", FAR_NS],
        ["ip", "link", "add", "wegt-h", "type", "veth", "peer", "name", "wegt-r", "netns", FAR_NS],
        ["ip", "addr", "add", f"{FAR_NET}.1/24", "dev", "wegt-h"],
        ["ip", "link", "set", "wegt-h", "up"],
        *(
            ["ip", "-n", FAR_NS, "addr", "add", f"{FAR_NET}.{i}/24", "dev", "wegt-r"]
            for i in (10, 11, 12)
        ),
        ["ip", "-n", FAR_NS, "link", "set", "wegt-r", "up"],
        ["ip", "-n", FAR_NS, "link", "set", "lo", "up"],
    ]
    server: subprocess.Popen[str] | None = None
    try:
        for argv in steps:
            subprocess.run(argv, check=True, capture_output=True)
        server = subprocess.Popen(
            ["ip", "netns", "exec", FAR_NS, sys.executable, "-c", SERVE_MANY],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        yield int(server.stdout.readline()), server
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.communicate()
        subprocess.run(["ip", "netns", "del", FAR_NS], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", "wegt-h"], check=False, capture_output=True)


def test_allowed_names_open_what_they_resolve_to_live_and_across_restart_and_resume(
    guest_image: ImageManifest,
    tmp_path: Path,
    far_listener: tuple[int, subprocess.Popen[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real capsule, internet off, allowed `*.allowed.test` only, its resolver pointed
    at a stub on loopback whose names point into the far namespace: the allowed name
    resolves and connects, another name is REFUSED, an address nobody resolved stays
    shut. A live change to another name closes the first one's address and opens the
    new one's; an agent restart keeps the learned address (read back from the chain);
    after a pause and resume the names still rule (the learned addresses are not kept)."""
    port, server = far_listener
    far = {"api.allowed.test": f"{FAR_NET}.10", "later.test": f"{FAR_NET}.11"}
    records = {**far, "other.test": f"{FAR_NET}.12"}

    async def reach(manager: SandboxManager, capsule_id: str, *targets: str) -> dict[str, str]:
        pairs = json.dumps([[t, port] for t in targets])
        out = await GuestService(manager).exec(
            capsule_id, ProcessSpec("python3", ["-c", GUEST_REACH, pairs], timeout_sec=120)
        )
        print("guest timings:", out.stderr.decode())
        assert out.exit_code == 0, out
        result: dict[str, str] = json.loads(out.stdout.decode())
        print("guest reach:", result)
        return result

    async def main(stub: StubDnsServer) -> None:
        root = wrenn_dir_with_cached_image(tmp_path / "wrenn")
        settings = HostAgentSettings(
            dir=root,
            network_pool_size=0,
            egress_default=False,
            dns_upstreams=((stub.host, stub.port),),
        )
        manager = SandboxManager(settings, QemuRuntime(Layout(root).cache_dir))
        capsule_id = ""
        try:
            await manager.recover()
            request = CreateRequest(memory_mb=256, egress=False, allow_domains=["*.allowed.test"])
            capsule_id = (await manager.create(request)).capsule_id
            net = manager.capsule(capsule_id).net

            got = await reach(
                manager, capsule_id, "api.allowed.test", "other.test", f"{FAR_NET}.11"
            )
            assert got == {
                "api.allowed.test": f"connected {FAR_NET}.10",
                "other.test": "unresolved",  # REFUSED by the capsule's resolver
                f"{FAR_NET}.11": "TimeoutError",  # dropped: nothing resolved it
            }
            asked = [q.question[0].name.to_text() for q in stub.queries]
            assert "other.test." not in asked  # refused names never go upstream
            learned = ns_rules(net, "WRENN-DNS")[1:]
            assert len(learned) == 1 and f"-d {FAR_NET}.10/32 -m time --datestop" in learned[0]
            assert '--comment "*.allowed.test"' in learned[0]

            # Live: the wildcard goes, another name comes.
            await manager.update_network(
                capsule_id, internet=False, allow=[], deny=[], names=["later.test"]
            )
            assert ns_rules(net, "WRENN-DNS")[1:] == []
            got = await reach(manager, capsule_id, f"{FAR_NET}.10", "later.test")
            assert got == {f"{FAR_NET}.10": "TimeoutError", "later.test": f"connected {FAR_NET}.11"}

            # The agent dies (its forwarder and its tables with it); the VM runs on.
            await manager.close()
            dns.forwarder().close()
            monkeypatch.setattr(dnsegress, "_RULES", None)
            manager = SandboxManager(settings, QemuRuntime(Layout(root).cache_dir))
            assert capsule_id in (await manager.recover()).adopted
            assert [e.address.exploded for e in dnsegress.rules().learned(net.index)] == [
                f"{FAR_NET}.11"
            ]
            got = await reach(manager, capsule_id, f"{FAR_NET}.11", "api.allowed.test")
            assert got == {
                f"{FAR_NET}.11": f"connected {FAR_NET}.11",
                "api.allowed.test": "unresolved",
            }

            # Pause and resume: the names come back with the network, learned addresses not.
            await manager.pause(capsule_id)
            await manager.resume(capsule_id)
            assert ns_rules(net, "WRENN-DNS")[1:] == []
            got = await reach(manager, capsule_id, f"{FAR_NET}.11")
            assert got == {f"{FAR_NET}.11": "TimeoutError"}
            got = await reach(manager, capsule_id, "later.test")
            assert got == {"later.test": f"connected {FAR_NET}.11"}
        finally:
            if capsule_id:
                await manager.destroy(capsule_id)
            await manager.close()

    with StubDnsServer(records) as stub:
        asyncio.run(main(stub))
    server.kill()
    accepted = (server.communicate()[0] or "").split("\n")  # the port line was read
    assert sorted(line for line in accepted if line) == [
        f"accepted {FAR_NET}.10",
        f"accepted {FAR_NET}.11",
        f"accepted {FAR_NET}.11",
        f"accepted {FAR_NET}.11",
    ]
