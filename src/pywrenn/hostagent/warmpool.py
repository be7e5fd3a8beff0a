"""Warm capsules: restored ahead of creates, their guest's first requests run, frozen.

Owns: up to `count` VMs per template and size (`WRENN_WARM_POOL`, poolsizes.py), each
restored from its image's base snapshot into a slot network of its own (built with the
host's default egress), its guest agent's `/init` and one process start run once (so
under TCG those guest paths are already translated when a user's first requests come),
then frozen (QMP `stop`: no CPU, RAM kept). A create of that template and size takes
one (`take`, synchronous: no member is ever handed out twice) and the manager hands it
over (steps.py, `start_warm`): the slot's claim and the run dir become the capsule's,
and the thaw's `/init` carries the capsule's identity (token, hostname, env, user,
workdir) with a fresh clock and 64 fresh bytes of entropy, as a restore's does. The
pool refills in the background, one member at a time, and only while no create or
resume is in flight (`quiet`): a refill's restore would take the cores those creates
need (under TCG, 8 creates at once with a pool of 2 ran slower than with no pool). An
empty pool is a miss and the create restores as before.

Where members live: `sandboxes/warm.staging-{ns}/` (`layout.builder_dir`), a staging
name: nothing lists it as a capsule, and a restarted agent's sweep kills its VM and
removes it, like a bake's builder; its slot claim (owner: that name) is no capsule's,
so recovery frees the claim and the namespace.

Memory: members (and the one being filled) count in admission (`held_mb`); a fill
waits for room, and a create or resume that does not fit evicts the pool first.
Only images' base snapshots are pooled: a user's snapshot template can be deleted,
which would pull the disk from under its members.
Knows nothing of: capsules, their table or their lifecycle (manager.py, steps.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network

from pywrenn.envdclient import EnvdClient, EnvdError
from pywrenn.hostagent.errors import HostAgentError
from pywrenn.hostagent.guestlink import GuestConnector
from pywrenn.hostagent.hostnet import HostNetwork, tap_spec
from pywrenn.hostagent.poolsizes import PoolKey
from pywrenn.hostagent.slots import SlotAllocator, borrowed_slot_network, return_slot_network
from pywrenn.hostagent.sources import Source, resolve_source
from pywrenn.hostagent.spawner import Spawner, SpawnerClosed
from pywrenn.layout import Layout
from pywrenn.vmm import Runtime, VMError, VMHandle

__all__ = ["WARM_KIND", "PoolKey", "WarmMember", "WarmPool"]

log = logging.getLogger("pywrenn.hostagent.warmpool")

WARM_KIND = "warm"  # members' run dirs: layout.builder_dir(WARM_KIND)
FILLER = "warm pool"  # the filler task's name (one at a time)
WARM_COMMAND = "true"  # run through `bash -l -c`, as a first exec would be
# Who runs it: root, and a user every Debian-based image has. A child of another user is
# spawned by another path (CPython forks instead of vforking to switch user; the kernel's
# fork, setgroups and setuid): under TCG a hit's first exec as a non-root user (both
# SDKs' default) cost 36 ms more than as root when only root's path was translated.
WARM_USERS = ((None, None), ("nobody", "/"))  # (user, cwd): nobody's home does not exist
WARM_TIMEOUT_S = 60.0
QUIET_POLL_S = 0.05  # how often a waiting refill looks whether creates are still running
# A refill starts only after this long with no create or resume in flight: a user's first
# commands come right after a create returns, and a restore beside them takes the cores
# they need (under TCG a hit's first exec ran 1.5-2x slower with a refill beside it).
REFILL_GRACE_S = 1.0
# The name members run under until a create names them: their warm-up /init renames the
# guest (hostname, /etc/hosts) so that path is translated too when a hit renames it again
# (the first rename in a fresh QEMU process cost 70-100 ms of a hit's ~90 ms under TCG).
WARM_HOSTNAME = "wrenn-warm"


@dataclass(frozen=True)
class WarmMember:
    key: PoolKey
    slot: int
    vm: VMHandle
    source: Source  # what it was restored from (its versions; a re-bake makes it stale)
    # The client its warm-up ran through, its connection left open (frozen with the VM):
    # a hit's /init and then the capsule's first exec use it instead of connecting (under
    # TCG a guest's accept of a connection costs milliseconds).
    guest: EnvdClient


@dataclass(frozen=True)
class WarmPoolStats:
    hits: int
    misses: int
    ready: int
    size: int
    held_mb: int


class WarmPool:
    """`has_room(memory_mb)`: may one more member of that size hold memory now (the
    manager's admission, capsules and this pool counted); `quiet()`: no create or resume
    is in flight, so a refill takes no core from one."""

    def __init__(
        self,
        *,
        layout: Layout,
        runtime: Runtime,
        slots: SlotAllocator,
        network: HostNetwork,
        connect_guest: GuestConnector,
        spawner: Spawner,
        sizes: Mapping[PoolKey, int],
        egress: bool,
        blocked: Sequence[IPv4Network],
        restore_timeout_s: float,
        has_room: Callable[[int], bool],
        quiet: Callable[[], bool] = lambda: True,
    ) -> None:
        self.layout = layout
        self.runtime = runtime
        self.slots = slots
        self.network = network
        self.connect_guest = connect_guest
        self.spawner = spawner
        self.sizes = {key: count for key, count in sizes.items() if count > 0}
        self.egress = egress
        self.blocked = tuple(blocked)
        self.restore_timeout_s = restore_timeout_s
        self.has_room = has_room
        self.quiet = quiet
        self.hits = 0
        self.misses = 0
        self._ready: dict[PoolKey, list[WarmMember]] = {key: [] for key in self.sizes}
        self._filling: PoolKey | None = None
        # A create or resume was seen in flight since the last fill began (its first
        # commands may still be coming: `_waited_for_quiet` gives them REFILL_GRACE_S).
        self._busy_seen = False
        # Not the spawner's: a drop is never cancelled half way (close waits for it).
        self._dropping: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False

    # -- what the manager and /health ask ----------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def pooled(self, key: PoolKey) -> bool:
        return key in self.sizes

    def ready(self, key: PoolKey | None = None) -> int:
        if key is not None:
            return len(self._ready.get(key, ()))
        return sum(len(members) for members in self._ready.values())

    def held_mb(self) -> int:
        """Memory the members hold (and the one being made): admission counts it."""
        held = sum(m.key.memory_mb for members in self._ready.values() for m in members)
        return held + (self._filling.memory_mb if self._filling is not None else 0)

    def stats(self) -> WarmPoolStats:
        return WarmPoolStats(
            hits=self.hits,
            misses=self.misses,
            ready=self.ready(),
            size=sum(self.sizes.values()),
            held_mb=self.held_mb(),
        )

    # -- taking ----------------------------------------------------------------------------
    def take(self, key: PoolKey, *, egress: bool) -> WarmMember | None:
        """A frozen member for a create of `key`, now the caller's; None (a miss) if
        there is none, or none whose network has the egress it wants. Synchronous: two
        creates racing can never get the same member."""
        if not self.pooled(key):
            return None
        self._busy_seen = True  # a create: its first commands come once it returns
        members = self._ready[key]
        member = members.pop(0) if members and egress == self.egress else None
        if member is None:
            self.misses += 1
        else:
            self.hits += 1
        self.refill()
        return member

    def confirm(self, member: WarmMember | None, source: Source) -> WarmMember | None:
        """`member` if it was restored from `source` (what the create resolved); a
        member of a base snapshot baked anew since is dropped (a miss), with the rest of
        its kind."""
        if member is None or member.source.template_dir == source.template_dir:
            return member
        self.hits -= 1
        self.misses += 1
        self.drop(member)
        members = self._ready[member.key]
        for stale in [m for m in members if m.source.template_dir != source.template_dir]:
            members.remove(stale)
            self.drop(stale)
        return None

    def give_back(self, member: WarmMember) -> None:
        """A member taken by a create refused before it used it (admission)."""
        self.hits -= 1
        self.misses += 1
        self._ready[member.key].insert(0, member)

    def evict(self) -> int:
        """Drop every frozen member (they are killed in the background) so their
        memory goes to a create or resume; the MiB that frees."""
        freed = 0
        for members in self._ready.values():
            while members:
                member = members.pop()
                freed += member.key.memory_mb
                self.drop(member)
        if freed:
            log.info("warm pool: evicted %d MiB for a capsule", freed)
        return freed

    # -- filling ---------------------------------------------------------------------------
    def start(self) -> None:
        """Begin filling (the agent serves: recovery and the base bake are done)."""
        self._started = True
        self.refill()

    def refill(self) -> None:
        """Top the pool up in the background, one member at a time."""
        if not self._started or self._closed or self.spawner.running(FILLER) is not None:
            return
        if self._next_key() is None:
            return
        with contextlib.suppress(SpawnerClosed):
            self.spawner.spawn(self._fill(), name=FILLER)

    def _next_key(self) -> PoolKey | None:
        for key, count in self.sizes.items():
            if len(self._ready[key]) < count:
                return key
        return None

    async def _fill(self) -> None:
        skipped: set[PoolKey] = set()
        while not self._closed:
            key = next(
                (k for k, n in self.sizes.items() if len(self._ready[k]) < n and k not in skipped),
                None,
            )
            if key is None:
                return
            if not await self._waited_for_quiet():
                return  # closed meanwhile
            if not self.has_room(key.memory_mb):
                log.info("warm pool: no memory for a %s member; not filling", key)
                return
            source = self._base_source(key)
            if source is None:
                skipped.add(key)  # no base snapshot of that size yet: the next refill
                continue
            try:
                member = await self._make(key, source)
            except (HostAgentError, VMError, EnvdError, OSError) as exc:
                log.warning("warm pool: cannot make a %s member: %s", key, exc)
                return  # the next take or create tries again
            if self.closed:  # close() ran while it was made: nobody else will drop it
                await self._discard(member)
                return
            self._ready[key].append(member)
            log.info("warm pool: %s ready (%d of %d)", key, self.ready(key), self.sizes[key])

    async def _waited_for_quiet(self) -> bool:
        """Wait until no create or resume has been in flight for `REFILL_GRACE_S`; False
        if the pool closed first."""
        loop = asyncio.get_running_loop()
        quiet_since: float | None = None
        while not self._closed:
            if not self.quiet():
                quiet_since = None
                self._busy_seen = True
            elif not self._busy_seen:
                return True  # nothing ran since the last fill: no first commands to spare
            elif quiet_since is None:
                quiet_since = loop.time()
            elif loop.time() - quiet_since >= REFILL_GRACE_S:
                self._busy_seen = False
                return True
            await asyncio.sleep(QUIET_POLL_S)
        return False

    def _base_source(self, key: PoolKey) -> Source | None:
        try:
            source = resolve_source(self.layout, key.template, key.vcpus, key.memory_mb)
        except HostAgentError as exc:
            log.warning("warm pool: %s: %s", key, exc)
            return None
        if source.template_dir is None or source.manifest is None:
            return None  # booted, or a user's snapshot template (never pooled)
        return source

    async def _make(self, key: PoolKey, source: Source) -> WarmMember:
        assert source.template_dir is not None
        run_dir = self.layout.builder_dir(WARM_KIND)
        self._filling = key
        try:
            async with borrowed_slot_network(
                self.slots, self.network, run_dir.name, egress=self.egress, blocked=self.blocked
            ) as borrowed:
                vm: VMHandle | None = None
                try:
                    vm = await self.runtime.restore(
                        source.template_dir,
                        run_dir,
                        tap_spec(borrowed.net),
                        timeout=self.restore_timeout_s,
                        init_fields={"hostname": WARM_HOSTNAME},
                    )
                    guest = await self._warm(vm)
                    try:
                        await self.runtime.freeze(vm)
                    except BaseException:
                        await guest.aclose()
                        raise
                except BaseException:
                    if vm is not None:
                        with contextlib.suppress(VMError):
                            await self.runtime.kill(vm)
                    await asyncio.to_thread(shutil.rmtree, run_dir, True)
                    raise
                borrowed.keep()
                return WarmMember(key, borrowed.net.index, vm, source, guest)
        finally:
            self._filling = None

    async def _warm(self, vm: VMHandle) -> EnvdClient:
        """Run a process in the guest as root and as another user, so both spawn paths are
        translated before a user's first exec needs one. Best effort: a guest that cannot
        still serves. The client (its connection open) is the member's."""
        guest = self.connect_guest(vm.network.agent_url())
        try:
            for user, cwd in WARM_USERS:
                try:
                    await guest.run(WARM_COMMAND, timeout=WARM_TIMEOUT_S, user=user, cwd=cwd)
                except EnvdError as exc:
                    log.debug("warm pool: warm-up command as %s failed: %s", user, exc)
        except BaseException:
            await guest.aclose()
            raise
        return guest

    # -- dropping --------------------------------------------------------------------------
    def drop(self, member: WarmMember) -> None:
        """Kill a member nobody will use, in the background (`close` waits for it)."""
        task = asyncio.create_task(self._discard(member), name=f"warm drop {member.vm.vm_id}")
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    async def _discard(self, member: WarmMember) -> None:
        """Kill a member's VM, remove its dir, tear its network down, free its slot."""
        await member.guest.aclose()
        with contextlib.suppress(VMError):
            await self.runtime.kill(member.vm)
        await asyncio.to_thread(shutil.rmtree, member.vm.run_dir, True)
        await return_slot_network(self.slots, self.network, member.slot)

    async def close(self) -> None:
        """Stop filling and drop every member (an agent that stops leaves none)."""
        self._closed = True
        filler = self.spawner.running(FILLER)
        if filler is not None:
            filler.cancel()
            await asyncio.wait({filler})  # its own cleanup kills the member it was making
        members = [m for ms in self._ready.values() for m in ms]
        for ms in self._ready.values():
            ms.clear()
        for member in members:
            await self._discard(member)
        if self._dropping:
            await asyncio.wait(set(self._dropping))
