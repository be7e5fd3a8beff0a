"""The packet filter that keeps capsules off the host, its LAN and link-local addresses.

Owns: the iptables rules of a capsule's namespace and of the host's `WRENN-*` chains, as
`iptables-restore` text built by pure functions (so tests can read them), and installing
and removing them. Knows nothing of: VMs, slots beyond their names and addresses.

Two layers, each enough on its own for what it guards (defense in depth):

1. In the capsule's namespace (FORWARD, `-i tap0`; INPUT, `-i tap0`). Replies to
   connections the host opened (conntrack ESTABLISHED,RELATED) pass first; then new guest
   connections to link-local 169.254.0.0/16 (cloud metadata), to our own capsule ranges
   (10.11/16, 10.12/16: the host's side of every veth), to the operator's blocked ranges
   and to the host's side of this veth are REJECTed (the guest sees "unreachable" at
   once rather than a timeout); with egress off every other new connection is DROPped.
   The guest cannot open a connection to the namespace itself, except to the capsule's
   DNS forwarder (udp and tcp port 53 at the resolver address, dns.py), whatever egress
   says: name resolution only, answered from the host agent's side.
   IPv6 is switched off in the namespace, so none of this can be walked around over v6.
2. On the host, for packets that arrive on a capsule's veth (`wrn-veth-+`):
   - INPUT -> `WRENN-INPUT`: only replies (ESTABLISHED,RELATED) go on to the host's own
     rules; anything a capsule starts toward any host address is DROPped. The host agent
     reaching a guest agent is host-initiated, so its replies pass.
   - FORWARD -> `WRENN-FWD`: capsule to capsule DROP; nothing new from elsewhere into a
     capsule; link-local and the blocked ranges DROP; then `WRENN-EGRESS`, where a capsule
     with egress on has its one ACCEPT (`-i wrn-veth-{i}`); everything else DROP.
   The host chains are (re)built at agent start (`ensure_host_guards`, idempotent);
   `WRENN-EGRESS` is never flushed, as capsules re-adopted after a restart keep theirs.

A capsule's host rules are added after its namespace exists and removed before the
namespace goes (see network.py), so a rule never outlives its namespace and the reaper,
which finds leftovers by namespace name, always removes both.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from pywrenn.hostagent.errors import HostError

IPv4Network = ipaddress.IPv4Network

LINK_LOCAL = IPv4Network("169.254.0.0/16")
# What a capsule may not reach unless the operator says otherwise (WRENN_BLOCKED_RANGES).
DEFAULT_BLOCKED_RANGES: tuple[IPv4Network, ...] = (
    IPv4Network("10.0.0.0/8"),
    IPv4Network("172.16.0.0/12"),
    IPv4Network("192.168.0.0/16"),
    IPv4Network("100.64.0.0/10"),  # carrier-grade NAT, also used by some clouds inside
)

DNS_PORT = 53
CHAIN_INPUT = "WRENN-INPUT"
CHAIN_FORWARD = "WRENN-FWD"
CHAIN_EGRESS = "WRENN-EGRESS"
# A file in /run/lock (host-wide, whatever WRENN_DIR): held while the host chains change.
HOST_GUARDS_LOCK = "pywrenn-host-guards.lock"
REJECT = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]
REPLIES = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"]


def namespace_rules(
    *,
    tap: str,
    guest_ip: str,
    host_ip: str,
    veth_ns_ip: str,
    veth_host_ip: str,
    internal: Sequence[IPv4Network],
    blocked: Sequence[IPv4Network],
    egress: bool,
    resolver: str | None = None,
) -> str:
    """The whole ruleset of a fresh capsule namespace (nat and filter tables).

    `resolver`: the address where the guest may reach the DNS forwarder (port 53)."""
    never = _unique([LINK_LOCAL, *internal, *blocked, IPv4Network(f"{veth_host_ip}/32")])
    lines = [
        "*nat",
        f"-A PREROUTING -i eth0 -d {host_ip}/32 -j DNAT --to-destination {guest_ip}",
        f"-A POSTROUTING -o eth0 -s {guest_ip}/32 -j SNAT --to-source {veth_ns_ip}",
        "COMMIT",
        "*filter",
        _line("INPUT", "-i", tap, *REPLIES, "-j", "ACCEPT"),
        *(_line("INPUT", *rule) for rule in resolver_rules(tap=tap, resolver=resolver)),
        _line("INPUT", "-i", tap, "-j", "DROP"),
        _line("FORWARD", "-i", tap, *REPLIES, "-j", "ACCEPT"),
        *(_line("FORWARD", "-i", tap, "-d", str(n), *REJECT) for n in never),
    ]
    if not egress:
        lines.append(_line("FORWARD", "-i", tap, "-j", "DROP"))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def resolver_rules(*, tap: str, resolver: str | None) -> list[list[str]]:
    """INPUT rules (without the chain) letting the guest ask the forwarder: DNS only."""
    if resolver is None:
        return []
    to_resolver = ["-i", tap, "-d", f"{resolver}/32"]
    return [
        [*to_resolver, "-p", proto, "-m", proto, "--dport", str(DNS_PORT), "-j", "ACCEPT"]
        for proto in ("udp", "tcp")
    ]


def ensure_resolver_rules(netns: str, *, tap: str, resolver: str) -> None:
    """Add the resolver rules to a namespace made before they existed (idempotent); they
    go first in INPUT, before its DROP."""
    prefix = ["ip", "netns", "exec", netns, "iptables", "-w"]
    for rule in resolver_rules(tap=tap, resolver=resolver):
        try:
            run([*prefix, "-C", "INPUT", *rule])
        except HostError:
            run([*prefix, "-I", "INPUT", "1", *rule])


def host_guard_rules(*, veth_glob: str, blocked: Sequence[IPv4Network]) -> str:
    """`WRENN-INPUT` and `WRENN-FWD` in full; `--noflush` leaves every other chain alone."""
    never = _unique([LINK_LOCAL, *blocked])
    lines = [
        "*filter",
        f":{CHAIN_INPUT} - [0:0]",
        f":{CHAIN_FORWARD} - [0:0]",
        _line(CHAIN_INPUT, *REPLIES, "-j", "RETURN"),
        _line(CHAIN_INPUT, "-j", "DROP"),
        _line(CHAIN_FORWARD, "-i", veth_glob, "-o", veth_glob, "-j", "DROP"),
        _line(CHAIN_FORWARD, "-o", veth_glob, *REPLIES, "-j", "ACCEPT"),
        _line(CHAIN_FORWARD, "-o", veth_glob, "-j", "DROP"),
        *(_line(CHAIN_FORWARD, "-d", str(n), "-j", "DROP") for n in never),
        _line(CHAIN_FORWARD, "-j", CHAIN_EGRESS),
        _line(CHAIN_FORWARD, "-j", "DROP"),
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def host_jumps(veth_glob: str) -> list[list[str]]:
    """The rules that send capsule traffic into our chains: first in INPUT and FORWARD."""
    return [
        ["INPUT", "-i", veth_glob, "-j", CHAIN_INPUT],
        ["FORWARD", "-i", veth_glob, "-j", CHAIN_FORWARD],
        ["FORWARD", "-o", veth_glob, "-j", CHAIN_FORWARD],
    ]


def egress_rules(*, veth: str, source: str, internal: IPv4Network) -> list[list[str]]:
    """One capsule's host rules with egress on: (table, chain, rule...) each."""
    return [
        ["nat", "POSTROUTING", "-s", f"{source}/32", "!", "-d", str(internal), "-j", "MASQUERADE"],
        ["filter", CHAIN_EGRESS, "-i", veth, "-j", "ACCEPT"],
    ]


def install_host_guards(*, veth_glob: str, blocked: Sequence[IPv4Network]) -> None:
    """Create or rebuild the host chains and put their jumps first (idempotent).

    Host-wide, shared by every agent on the machine: `WRENN-INPUT` and `WRENN-FWD` are
    replaced in one atomic restore (never seen empty, so another agent's capsules are
    never unguarded), `WRENN-EGRESS` is only created, never flushed (it holds every
    agent's per-capsule ACCEPTs), and the check-then-insert of each jump runs under a
    host-wide lock so two agents starting together add it once."""
    with _host_guards_lock():
        _install_host_guards(veth_glob=veth_glob, blocked=blocked)


@contextlib.contextmanager
def _host_guards_lock() -> Iterator[None]:
    directory = Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())
    fd = os.open(directory / HOST_GUARDS_LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _install_host_guards(*, veth_glob: str, blocked: Sequence[IPv4Network]) -> None:
    try:
        run(["iptables", "-w", "-N", CHAIN_EGRESS])
    except HostError:
        run(["iptables", "-w", "-S", CHAIN_EGRESS])  # it exists; anything else is an error
    restore(None, host_guard_rules(veth_glob=veth_glob, blocked=blocked))
    for jump in host_jumps(veth_glob):
        try:
            run(["iptables", "-w", "-C", *jump])
        except HostError:
            run(["iptables", "-w", "-I", jump[0], "1", *jump[1:]])
    # Older agents dropped capsule-to-capsule traffic with a bare FORWARD rule.
    legacy = ["FORWARD", "-i", veth_glob, "-o", veth_glob, "-j", "DROP"]
    try:
        run(["iptables", "-w", "-D", *legacy])
    except HostError:
        pass


def add_egress(*, veth: str, source: str, internal: IPv4Network) -> None:
    """Let one capsule's new connections out (all in one atomic restore)."""
    set_ipv4_forwarding()
    text = ""
    for table, chain, *rule in egress_rules(veth=veth, source=source, internal=internal):
        text += f"*{table}\n{_line(chain, *rule)}\nCOMMIT\n"
    restore(None, text)


def remove_egress(*, veth: str, source: str, internal: IPv4Network) -> None:
    """Undo `add_egress`; missing rules are fine (each is removed on its own)."""
    for table, chain, *rule in egress_rules(veth=veth, source=source, internal=internal):
        try:
            run(["iptables", "-w", "-t", table, "-D", chain, *rule])
        except HostError:
            pass


def set_ipv4_forwarding() -> None:
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


def disable_ipv6(interface: str) -> None:
    """No IPv6 on the host's side of a veth (a no-op where the host has no IPv6)."""
    knob = Path("/proc/sys/net/ipv6/conf") / interface / "disable_ipv6"
    if knob.exists():
        knob.write_text("1\n")


def restore(netns: str | None, text: str) -> None:
    """Apply `text` with `iptables-restore --noflush` (atomic per table), in `netns`."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    run([*prefix, "iptables-restore", "-w", "--noflush"], stdin=text)


def run(argv: list[str], *, stdin: str | None = None) -> None:
    try:
        subprocess.run(
            argv,
            check=True,
            capture_output=True,
            timeout=30,
            input=stdin.encode() if stdin is not None else None,
        )
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or b"").decode(errors="replace").strip()[-300:]
        raise HostError(f"command failed: {' '.join(argv)}: {tail}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostError(f"command failed: {' '.join(argv)}: {exc}") from exc


def _line(chain: str, *rule: str) -> str:
    return " ".join(["-A", chain, *rule])


def _unique(networks: Sequence[IPv4Network]) -> list[IPv4Network]:
    seen: list[IPv4Network] = []
    for network in networks:
        if network not in seen:
            seen.append(network)
    return seen
