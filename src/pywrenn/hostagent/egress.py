"""Per-capsule egress lists: IPv4 ranges a capsule may or may not reach.

Owns: `EgressPolicy` (internet on/off plus allow and deny lists, allow winning over deny,
as E2B's `allowOut`/`denyOut`), the namespace chain that enforces the lists, installing it
in a fresh namespace and changing it under a running capsule.
Knows nothing of: VMs, the API, what a capsule is.

Where the chain sits. In the capsule's namespace, FORWARD (`-i tap0`) already lets
replies through and REJECTs the ranges a capsule may never reach (firewall.py); a capsule
with lists gets its network with egress on (so the host forwards and masquerades it) and
one more rule after those: a jump to `WRENN-OUT`, which holds

    -d <allowed range> -j ACCEPT        (each allow entry)
    -d <denied range>  -j REJECT        (each deny entry)
    -j DROP                             (only when internet access is off)

So an allow entry can never open a range firewall.py blocks: the blocks come first. A
capsule without lists has no chain and keeps the plain egress on/off of firewall.py.

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

from pywrenn.hostagent import firewall, network
from pywrenn.hostagent.errors import HostError, InvalidRequest
from pywrenn.hostagent.network import SlotNetwork

CHAIN = "WRENN-OUT"
MAX_ENTRIES = 256  # per list: each entry is a rule the kernel walks for every new flow
_REJECT = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]
_BLANKET_DROP = ["FORWARD", "-i", network.TAP_NAME, "-j", "DROP"]
_JUMP = ["FORWARD", "-i", network.TAP_NAME, "-j", CHAIN]


@dataclass(frozen=True)
class EgressPolicy:
    internet: bool
    allow: tuple[IPv4Network, ...] = ()
    deny: tuple[IPv4Network, ...] = ()

    @property
    def forwarded(self) -> bool:
        """Whether the host must forward the capsule's new connections at all."""
        return self.internet or bool(self.allow)

    @property
    def needs_chain(self) -> bool:
        """Lists that change what the plain on/off rule would let through."""
        return self.forwarded and bool(self.allow or self.deny)


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


def policy(internet: bool, allow: Sequence[str], deny: Sequence[str]) -> EgressPolicy:
    return EgressPolicy(internet, parse_ranges(allow), parse_ranges(deny))


def chain_text(p: EgressPolicy) -> str:
    """`iptables-restore` input that (re)fills `WRENN-OUT` with the policy's rules."""
    lines = ["*filter", f":{CHAIN} - [0:0]"]
    lines += [f"-A {CHAIN} -d {r} -j ACCEPT" for r in p.allow]
    lines += [" ".join(["-A", CHAIN, "-d", str(r), *_REJECT]) for r in p.deny]
    if not p.internet:
        lines.append(f"-A {CHAIN} -j DROP")
    return "\n".join([*lines, "COMMIT"]) + "\n"


def install_text(p: EgressPolicy) -> str:
    """The chain and its jump, for a namespace that has neither yet (one restore)."""
    return chain_text(p).replace("COMMIT\n", " ".join(["-A", *_JUMP]) + "\nCOMMIT\n")


async def install(net: SlotNetwork, p: EgressPolicy) -> None:
    """Put the chain into a fresh namespace built with egress `p.forwarded`."""
    if p.needs_chain:
        await asyncio.to_thread(firewall.restore, net.netns, install_text(p))


async def update(net: SlotNetwork, new: EgressPolicy) -> None:
    """Change a running capsule's policy in place (see the module docstring)."""
    await asyncio.to_thread(_update_sync, net, new)


def _update_sync(net: SlotNetwork, new: EgressPolicy) -> None:
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


def _ns(net: SlotNetwork, argv: list[str]) -> None:
    firewall.run(["ip", "netns", "exec", net.netns, *argv])
