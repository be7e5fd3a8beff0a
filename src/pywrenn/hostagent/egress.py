"""Per-capsule egress lists: IPv4 ranges and domain names a capsule may or may not reach.

Owns: `EgressPolicy` (internet on/off plus allow and deny lists, allow winning over deny,
as E2B's `allowOut`/`denyOut`; names only in the allow list), the namespace chain that
enforces the lists, installing it in a fresh namespace, changing it under a running
capsule, and taking it back after an agent restart.
Knows nothing of: VMs, the API, what a capsule is.

Where the chain sits. In the capsule's namespace, FORWARD (`-i tap0`) already lets
replies through and REJECTs the ranges a capsule may never reach (firewall.py); a capsule
with lists gets its network with egress on (so the host forwards and masquerades it) and
one more rule after those: a jump to `WRENN-OUT`, which holds

    -d <allowed range> -j ACCEPT        (each allow entry)
    -j WRENN-DNS                        (only with allowed names: domains.py)
    -d <denied range>  -j REJECT        (each deny entry)
    -j DROP                             (only when internet access is off)

So an allow entry can never open a range firewall.py blocks: the blocks come first. A
capsule without lists has no chain and keeps the plain egress on/off of firewall.py.
`WRENN-DNS` holds the addresses the capsule's allowed names resolved to; the capsule's
resolver fills it (dnsegress.py), and refilling `WRENN-OUT` leaves it alone.

A live change (`update`) refills the chain in one `iptables-restore` (declaring a chain
flushes it), adds the jump if it is missing, drops the namespace's blanket DROP (the chain
now decides) and then switches the host's forwarding for the capsule on or off. Each
step leaves the capsule no more open than the old or the new policy: the chain is filled
before the blanket DROP goes, and the host's forwarding is switched last.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network

from pywrenn.hostagent import domains, firewall, network
from pywrenn.hostagent.domains import Learned
from pywrenn.hostagent.errors import HostError, InvalidRequest
from pywrenn.hostagent.network import SlotNetwork

CHAIN = "WRENN-OUT"
MAX_ENTRIES = 256  # per list: each entry is a rule the kernel walks for every new flow
_REJECT = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]
_EVERYWHERE = IPv4Network("0.0.0.0/0")
_BLANKET_DROP = ["FORWARD", "-i", network.TAP_NAME, "-j", "DROP"]
_JUMP = ["FORWARD", "-i", network.TAP_NAME, "-j", CHAIN]


@dataclass(frozen=True)
class EgressPolicy:
    internet: bool
    allow: tuple[IPv4Network, ...] = ()
    deny: tuple[IPv4Network, ...] = ()
    domains: tuple[str, ...] = ()  # allowed names (domains.py patterns)

    @property
    def forwarded(self) -> bool:
        """Whether the host must forward the capsule's new connections at all."""
        return self.internet or bool(self.allow or self.domains)

    @property
    def needs_chain(self) -> bool:
        """Lists that change what the plain on/off rule would let through."""
        return self.forwarded and bool(self.allow or self.deny or self.domains)

    @property
    def closed(self) -> bool:
        """Nothing is reachable but what is allowed (internet off, or all denied)."""
        return not self.internet or _EVERYWHERE in self.deny


def parse_ranges(entries: Iterable[str]) -> tuple[IPv4Network, ...]:
    """IPv4 ranges from `a.b.c.d` or `a.b.c.d/n` (host bits dropped); InvalidRequest if
    one is not, or if there are more than MAX_ENTRIES."""
    out: list[IPv4Network] = []
    for entry in entries:
        try:
            out.append(IPv4Network(entry, strict=False))
        except ValueError as exc:
            raise InvalidRequest(f"invalid: egress range {entry!r}: {exc}") from exc
    if len(out) > MAX_ENTRIES:
        raise InvalidRequest(f"invalid: {len(out)} egress ranges; at most {MAX_ENTRIES}")
    return tuple(dict.fromkeys(out))


def policy(
    internet: bool, allow: Sequence[str], deny: Sequence[str], names: Sequence[str] = ()
) -> EgressPolicy:
    return EgressPolicy(
        internet, parse_ranges(allow), parse_ranges(deny), domains.parse_patterns(names)
    )


def chain_text(p: EgressPolicy) -> str:
    """`iptables-restore` input that (re)fills `WRENN-OUT` with the policy's rules."""
    lines = ["*filter", f":{CHAIN} - [0:0]"]
    lines += [f"-A {CHAIN} -d {r} -j ACCEPT" for r in p.allow]
    if p.domains:
        lines.append(f"-A {CHAIN} -j {domains.CHAIN}")
    lines += [" ".join(["-A", CHAIN, "-d", str(r), *_REJECT]) for r in p.deny]
    if not p.internet:
        lines.append(f"-A {CHAIN} -j DROP")
    return "\n".join([*lines, "COMMIT"]) + "\n"


def install_text(p: EgressPolicy) -> str:
    """The chains and the jump, for a namespace that has none yet (one restore)."""
    text = chain_text(p).replace("COMMIT\n", " ".join(["-A", *_JUMP]) + "\nCOMMIT\n")
    return text.replace("*filter\n", f"*filter\n:{domains.CHAIN} - [0:0]\n", 1)


async def install(net: SlotNetwork, p: EgressPolicy) -> None:
    """Put the chain into a fresh namespace built with egress `p.forwarded`."""
    if p.needs_chain:
        await asyncio.to_thread(firewall.restore, net.netns, install_text(p))
    await asyncio.to_thread(_resolver_rules, net, p)


async def update(net: SlotNetwork, new: EgressPolicy) -> None:
    """Change a running capsule's policy in place (see the module docstring)."""
    await asyncio.to_thread(_update_sync, net, new)


async def reattach(net: SlotNetwork, p: EgressPolicy) -> None:
    """A restarted agent takes back a running capsule's names and what they resolved
    to (read from its `WRENN-DNS`: the kernel kept the chain, the agent lost its table)."""
    from pywrenn.hostagent import dnsegress

    learned = await asyncio.to_thread(dnsegress.read_chain, net.netns)
    await asyncio.to_thread(_resolver_rules, net, p, learned)


def _resolver_rules(net: SlotNetwork, p: EgressPolicy, learned: Sequence[Learned] = ()) -> None:
    # dnsegress (and dnspython) is imported where used, as in network.py.
    from pywrenn.hostagent import dnsegress

    dnsegress.rules().set(net.index, net.netns, p.domains, closed=p.closed, learned=learned)


def _update_sync(net: SlotNetwork, new: EgressPolicy) -> None:
    # The names first: addresses a dropped name opened are closed before anything opens.
    _resolver_rules(net, new)
    if new.domains and not _has_chain(net.netns, domains.CHAIN):
        _ns(net, ["iptables", "-w", "-N", domains.CHAIN])
    firewall.restore(net.netns, chain_text(new))
    if not _present(net.netns, _JUMP):
        _ns(net, ["iptables", "-w", "-A", *_JUMP])
    while _present(net.netns, _BLANKET_DROP):
        _ns(net, ["iptables", "-w", "-D", *_BLANKET_DROP])
    forwarding = _present(None, [firewall.CHAIN_EGRESS, "-i", net.veth_host, "-j", "ACCEPT"])
    if new.forwarded and not forwarding:
        firewall.add_egress(veth=net.veth_host, source=net.veth_ns_ip, internal=network.VETH_NET)
    elif forwarding and not new.forwarded:
        firewall.remove_egress(veth=net.veth_host, source=net.veth_ns_ip, internal=network.VETH_NET)


def _present(netns: str | None, rule: list[str]) -> bool:
    """Whether filter-table `rule` (chain first) is installed, in `netns` or on the host."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    try:
        firewall.run([*prefix, "iptables", "-w", "-C", *rule])
    except HostError:
        return False
    return True


def _has_chain(netns: str, chain: str) -> bool:
    try:
        firewall.run(["ip", "netns", "exec", netns, "iptables", "-w", "-S", chain])
    except HostError:
        return False
    return True


def _ns(net: SlotNetwork, argv: list[str]) -> None:
    firewall.run(["ip", "netns", "exec", net.netns, *argv])
