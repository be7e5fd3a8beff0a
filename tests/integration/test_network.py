"""Slot networking on the real host: plumbing, egress rules, teardown, and what a capsule
can never reach (the host itself, link-local, the blocked ranges).

Traffic here goes only between this machine and namespaces these tests create; that
link-local and private ranges are blocked is proven by reading the installed rules.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pywrenn.hostagent import network
from pywrenn.hostagent.guest_ops import GuestService
from pywrenn.hostagent.manager import CreateRequest, SandboxManager
from pywrenn.hostagent.network import SlotNetwork
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.wire import ProcessSpec
from pywrenn.images import ImageManifest
from pywrenn.layout import Layout
from pywrenn.vmm import QemuRuntime
from tests.integration.conftest import wrenn_dir_with_cached_image

# High slots, so these never meet a capsule a host agent test is running.
SLOT_NO_EGRESS = 32001
SLOT_EGRESS = 32002
SLOT_RULES = 32003
SLOT_REACH = 32004
NEVER = ["169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"]


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def in_ns(net: SlotNetwork, *argv: str) -> str:
    return sh("ip", "netns", "exec", net.netns, *argv)


@pytest.fixture
def cleanup() -> object:
    made: list[SlotNetwork] = []
    yield made
    for net in made:
        asyncio.run(network.remove_network(net))


def test_network_without_egress(cleanup: list[SlotNetwork]) -> None:
    net = SlotNetwork(SLOT_NO_EGRESS)
    asyncio.run(network.ensure_host_guards())
    asyncio.run(network.create_network(net, egress=False))
    cleanup.append(net)
    assert net.netns in sh("ip", "netns", "list")
    assert "tap0" in in_ns(net, "ip", "-br", "link")
    assert f"{net.host_ip} via {net.veth_ns_ip}" in sh("ip", "route", "get", net.host_ip)
    rules = in_ns(net, "iptables", "-S", "FORWARD")
    assert "-A FORWARD -i tap0 -j DROP" in rules
    assert f"-d {net.host_ip}/32 -i eth0 -j DNAT --to-destination 10.0.2.15" in in_ns(
        net, "iptables", "-t", "nat", "-S"
    )
    assert f"-s {net.veth_ns_ip}/32" not in sh("iptables", "-t", "nat", "-S")
    # Capsules cannot reach each other through the host.
    assert "-A WRENN-FWD -i wrn-veth-+ -o wrn-veth-+ -j DROP" in sh("iptables", "-S", "WRENN-FWD")


def test_network_with_egress_and_full_teardown(cleanup: list[SlotNetwork]) -> None:
    net = SlotNetwork(SLOT_EGRESS)
    asyncio.run(network.create_network(net, egress=True))
    assert "-A FORWARD -i tap0 -j DROP" not in in_ns(net, "iptables", "-S", "FORWARD")
    assert f"-s {net.veth_ns_ip}/32" in sh("iptables", "-t", "nat", "-S")
    asyncio.run(network.remove_network(net))
    assert net.netns not in sh("ip", "netns", "list")
    assert net.veth_host not in sh("ip", "-br", "link")
    assert f"-s {net.veth_ns_ip}/32" not in sh("iptables", "-t", "nat", "-S")
    assert f"{net.veth_host} " not in sh("iptables", "-S", "FORWARD")
    assert f"{net.veth_host} " not in sh("iptables", "-S", "WRENN-EGRESS")
    # With the namespace gone, the capsule's address fails on the host, never leaves it.
    assert "unreachable" in sh("ip", "route", "get", net.host_ip) or not sh(
        "ip", "route", "get", net.host_ip
    )


def test_create_twice_is_refused_and_rolls_back_nothing_of_the_first(
    cleanup: list[SlotNetwork],
) -> None:
    net = SlotNetwork(SLOT_NO_EGRESS)
    asyncio.run(network.create_network(net, egress=False))
    cleanup.append(net)
    with pytest.raises(network.HostError):
        asyncio.run(network.create_network(net, egress=False))
    assert "tap0" in in_ns(net, "ip", "-br", "link")


def _rules(chain: str, *, netns: str | None = None) -> list[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return sh(*prefix, "iptables", "-w", "-S", chain).splitlines()


def _lets_new_traffic_through(rule: str) -> bool:
    return ("-j ACCEPT" in rule or "-j RETURN" in rule) and "ESTABLISHED" not in rule


def test_installed_rules_block_link_local_private_and_host(cleanup: list[SlotNetwork]) -> None:
    """Egress on, as by default: the rules that block come before any that let through."""
    net = SlotNetwork(SLOT_RULES)
    asyncio.run(network.ensure_host_guards())
    asyncio.run(network.ensure_host_guards())  # idempotent: nothing doubled
    asyncio.run(network.create_network(net, egress=True))
    cleanup.append(net)

    # Host: capsule traffic enters our chains first.
    assert _rules("INPUT")[1] == "-A INPUT -i wrn-veth-+ -j WRENN-INPUT"
    assert set(_rules("FORWARD")[1:3]) == {
        "-A FORWARD -i wrn-veth-+ -j WRENN-FWD",
        "-A FORWARD -o wrn-veth-+ -j WRENN-FWD",
    }
    assert sum("WRENN-INPUT" in r for r in _rules("INPUT")) == 1
    assert _rules("WRENN-INPUT")[1:] == [
        "-A WRENN-INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-A WRENN-INPUT -j DROP",
    ]
    fwd = _rules("WRENN-FWD")
    to_egress = fwd.index("-A WRENN-FWD -j WRENN-EGRESS")
    for cidr in NEVER:
        assert fwd.index(f"-A WRENN-FWD -d {cidr} -j DROP") < to_egress
    assert not any(_lets_new_traffic_through(r) for r in fwd[:to_egress])
    assert f"-A WRENN-EGRESS -i {net.veth_host} -j ACCEPT" in _rules("WRENN-EGRESS")

    # The capsule's namespace: the same ranges, our own and the host's side rejected.
    forward = _rules("FORWARD", netns=net.netns)
    for cidr in [*NEVER, "10.11.0.0/16", "10.12.0.0/16", f"{net.veth_host_ip}/32"]:
        rule = f"-A FORWARD -d {cidr} -i tap0 -j REJECT --reject-with icmp-admin-prohibited"
        assert rule in forward
    assert not any(_lets_new_traffic_through(r) for r in forward)
    # The namespace: nothing the guest starts reaches it but DNS at the resolver address.
    assert _rules("INPUT", netns=net.netns)[1:] == [
        "-A INPUT -i tap0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A INPUT -d 10.0.2.3/32 -i tap0 -p udp -m udp --dport 53 -j ACCEPT",
        "-A INPUT -d 10.0.2.3/32 -i tap0 -p tcp -m tcp --dport 53 -j ACCEPT",
        "-A INPUT -i tap0 -j DROP",
    ]
    assert in_ns(net, "sysctl", "-n", "net.ipv6.conf.all.disable_ipv6").strip() == "1"


def test_operator_ranges_replace_the_private_defaults(cleanup: list[SlotNetwork]) -> None:
    from ipaddress import IPv4Network

    ranges = [IPv4Network("203.0.113.0/24")]
    net = SlotNetwork(SLOT_RULES)
    try:
        asyncio.run(network.ensure_host_guards(ranges))
        asyncio.run(network.create_network(net, egress=True, blocked=ranges))
        cleanup.append(net)
        fwd = _rules("WRENN-FWD")
        assert "-A WRENN-FWD -d 203.0.113.0/24 -j DROP" in fwd
        assert "-A WRENN-FWD -d 169.254.0.0/16 -j DROP" in fwd  # always
        assert "-A WRENN-FWD -d 10.0.0.0/8 -j DROP" not in fwd
        forward = "\n".join(_rules("FORWARD", netns=net.netns))
        assert "-d 203.0.113.0/24 -i tap0 -j REJECT" in forward
        assert "-d 10.12.0.0/16 -i tap0 -j REJECT" in forward  # our own ranges: always
    finally:
        asyncio.run(network.ensure_host_guards())  # the defaults back for everyone else


def test_capsule_side_cannot_reach_the_host_but_the_host_reaches_it(
    cleanup: list[SlotNetwork],
) -> None:
    net = SlotNetwork(SLOT_REACH)
    asyncio.run(network.ensure_host_guards())
    asyncio.run(network.create_network(net, egress=True))
    cleanup.append(net)
    with socket.socket() as listener:
        listener.bind((net.veth_host_ip, 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        # The listener works: the host itself can connect to it.
        with socket.create_connection((net.veth_host_ip, port), timeout=5):
            pass
        listener.accept()[0].close()
        # From the capsule's side of the veth: dropped in the host's INPUT.
        probe = (
            "import socket,sys\n"
            "try:\n"
            f"    socket.create_connection(({net.veth_host_ip!r}, {port}), timeout=2)\n"
            "    print('connected')\n"
            "except OSError as e:\n"
            "    print('blocked', type(e).__name__)\n"
        )
        out = in_ns(net, sys.executable, "-c", probe)
        assert out.startswith("blocked"), out
        with pytest.raises(BlockingIOError):
            listener.accept()

    # The host opening a connection into the capsule's side works (replies pass).
    serve = (
        "import socket\n"
        f"s = socket.create_server(({net.veth_ns_ip!r}, 0))\n"
        "print(s.getsockname()[1], flush=True)\n"
        "s.settimeout(20)\n"
        "c, _ = s.accept()\n"
        "c.sendall(b'hello from the capsule side')\n"
        "c.close()\n"
    )
    server = subprocess.Popen(
        ["ip", "netns", "exec", net.netns, sys.executable, "-c", serve],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        ns_port = int(server.stdout.readline())
        with socket.create_connection((net.veth_ns_ip, ns_port), timeout=5) as conn:
            assert conn.recv(100) == b"hello from the capsule side"
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


def test_guest_cannot_reach_the_host_while_the_agent_reaches_the_guest(
    guest_image: ImageManifest, tmp_path: Path
) -> None:
    """One real capsule with egress on: its guest agent answers the host, and the guest
    cannot open a connection to a listener on its host-side address."""

    async def main() -> None:
        root = wrenn_dir_with_cached_image(tmp_path / "wrenn")
        settings = HostAgentSettings(dir=root, network_pool_size=0, egress_default=True)
        manager = SandboxManager(settings, QemuRuntime(Layout(root).cache_dir))
        capsule_id = ""
        accepted: list[bytes] = []

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(await reader.read(100))
            writer.close()

        try:
            await manager.recover()
            info = await manager.create(CreateRequest(memory_mb=256, egress=True))
            capsule_id = info.capsule_id
            net = manager.capsule(capsule_id).net
            server = await asyncio.start_server(on_connect, net.veth_host_ip, 0)
            port = server.sockets[0].getsockname()[1]
            probe = (
                "import socket\n"
                f"for host in ({net.veth_host_ip!r}, {net.host_ip!r}):\n"
                "    try:\n"
                f"        socket.create_connection((host, {port}), timeout=3).sendall(b'x')\n"
                "        print(host, 'connected')\n"
                "    except OSError as e:\n"
                "        print(host, 'blocked', type(e).__name__)\n"
            )
            spec = ProcessSpec("python3", ["-c", probe])
            out = await GuestService(manager).exec(capsule_id, spec)
            stdout = out.stdout.decode()
            assert out.exit_code == 0, out
            assert stdout.count("blocked") == 2, stdout
            assert accepted == []
            server.close()
            await server.wait_closed()
        finally:
            if capsule_id:
                await manager.destroy(capsule_id)
            await manager.close()

    asyncio.run(main())


# Runs in the guest: resolve a name the stub serves and one it does not (timed), and ask
# the forwarder over TCP by hand; prints one JSON line.
GUEST_LOOKUPS = r"""
import json, socket, struct, subprocess, time
out = {}
t = time.monotonic()
out["resolved"] = socket.getaddrinfo("example.test", 80, socket.AF_INET)[0][4][0]
out["resolve_s"] = time.monotonic() - t
t = time.monotonic()
try:
    socket.getaddrinfo("missing.test", 80, socket.AF_INET)
    out["missing"] = "resolved"
except socket.gaierror as e:
    out["missing"] = e.errno
out["missing_s"] = time.monotonic() - t
out["getent"] = subprocess.run(["getent", "hosts", "example.test"], capture_output=True,
                               text=True).stdout.split()
name = b"".join(bytes([len(p)]) + p for p in b"example.test".split(b".")) + b"\0"
query = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)
with socket.create_connection(("10.0.2.3", 53), timeout=5) as s:
    s.sendall(struct.pack("!H", len(query)) + query)
    data = b""
    while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
out["tcp_id"] = struct.unpack("!H", data[2:4])[0]
out["tcp_has_address"] = bytes([192, 0, 2, 10]) in data
print(json.dumps(out))
"""

# Runs in the guest: try to open a connection to each (host, port); prints one JSON line.
GUEST_CONNECTS = r"""
import json, socket, sys
result = {}
for target in json.loads(sys.argv[1]):
    host, port = target
    try:
        socket.create_connection((host, port), timeout=2).close()
        result[f"{host}:{port}"] = "connected"
    except OSError as e:
        result[f"{host}:{port}"] = type(e).__name__
print(json.dumps(result))
"""


def test_a_guest_without_egress_resolves_names_and_reaches_nothing_else_of_the_host(
    guest_image: ImageManifest, tmp_path: Path
) -> None:
    """One real capsule, egress off, its forwarder pointed at a stub DNS server on
    loopback: a name resolves at once, a missing one fails at once, over UDP and TCP;
    every host address but the resolver's port 53 stays closed; and after the agent
    "dies" (its forwarder with it), the next agent's recovery serves DNS again."""
    import json

    from pywrenn.hostagent import dns
    from tests.dns_stub import StubDnsServer

    async def run(manager: SandboxManager, capsule_id: str, script: str, *args: str) -> str:
        out = await GuestService(manager).exec(
            capsule_id, ProcessSpec("python3", ["-c", script, *args])
        )
        assert out.exit_code == 0, out
        return out.stdout.decode()

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
        listener: subprocess.Popen[str] | None = None
        try:
            await manager.recover()
            info = await manager.create(CreateRequest(memory_mb=256, egress=False))
            capsule_id = info.capsule_id
            net = manager.capsule(capsule_id).net

            lookups = json.loads(await run(manager, capsule_id, GUEST_LOOKUPS))
            print("guest lookups:", lookups)
            assert lookups["resolved"] == "192.0.2.10"
            assert lookups["getent"] == ["192.0.2.10", "example.test"]
            assert lookups["missing"] == socket.EAI_NONAME
            assert lookups["tcp_id"] == 0x4242 and lookups["tcp_has_address"]
            # Before: ~12 s per lookup (nothing answered 10.0.2.3). Generous for TCG.
            assert lookups["resolve_s"] < 3 and lookups["missing_s"] < 3
            asked = {q.question[0].name.to_text() for q in stub.queries}
            assert {"example.test.", "missing.test."} <= asked

            # A listener on every address of the namespace (10.0.2.2, 10.0.2.3 among them)
            # and one on the host's side of the veth: the guest reaches neither.
            serve = (
                "import socket\n"
                "s = socket.create_server(('0.0.0.0', 0))\n"
                "print(s.getsockname()[1], flush=True)\n"
                "s.settimeout(30)\n"
                "c, a = s.accept()\n"
                "print('accepted', a, flush=True)\n"
            )
            listener = subprocess.Popen(
                ["ip", "netns", "exec", net.netns, sys.executable, "-c", serve],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert listener.stdout is not None
            ns_port = int(listener.stdout.readline())
            host_server = await asyncio.start_server(lambda r, w: w.close(), net.veth_host_ip, 0)
            host_port = host_server.sockets[0].getsockname()[1]
            targets = [
                ("10.0.2.2", ns_port),
                ("10.0.2.3", ns_port),
                (net.veth_host_ip, host_port),
                (net.host_ip, host_port),
                ("10.0.2.3", 53),
            ]
            reached = json.loads(
                await run(manager, capsule_id, GUEST_CONNECTS, json.dumps(targets))
            )
            print("guest connects:", reached)
            host_server.close()
            await host_server.wait_closed()
            assert reached.pop("10.0.2.3:53") == "connected"
            assert all(outcome != "connected" for outcome in reached.values()), reached
            listener.kill()
            assert "accepted" not in (listener.communicate()[0] or "")

            # The agent dies: its forwarder (and every socket of it) with it. The VM runs on.
            await manager.close()
            dns.forwarder().close()
            manager = SandboxManager(settings, QemuRuntime(Layout(root).cache_dir))
            report = await manager.recover()
            assert capsule_id in report.adopted
            getent = await GuestService(manager).exec(
                capsule_id, ProcessSpec("getent", ["hosts", "example.test"])
            )
            assert getent.stdout.decode().split() == ["192.0.2.10", "example.test"]
        finally:
            if listener is not None and listener.poll() is None:
                listener.kill()
                listener.communicate()
            if capsule_id:
                await manager.destroy(capsule_id)
            await manager.close()
        assert dns.forwarder().serving() == []  # the namespace took its resolver with it

    with StubDnsServer({"example.test": "192.0.2.10"}) as stub:
        asyncio.run(main(stub))
