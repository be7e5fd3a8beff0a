"""The sandbox manager: every capsule on this host and its lifecycle.

Owns: the capsule table; create, destroy, pause, resume, list, get and ping: when each
may run (the capsule's own lock, its state in the table of `states.py`, memory
admission, draining at shutdown) and what a failure leaves. How each step happens on
the host is `steps.py`; what a create starts from, `sources.py`; startup recovery,
`recovery.py`; guest ops, `guest_ops.py`; background loops, `loops.py`; templates
and forks, `templates.py`; capsules kept warm for creates, `warmpool.py`.
Length: every operation's guard (lock, state, admission, drain, undo) lives here, beside
the others, with the hooks that report what the agent did on its own (`report_event`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from pywrenn.envdclient import EnvdError
from pywrenn.hostagent import egress, guestlink
from pywrenn.hostagent.admission import Admission
from pywrenn.hostagent.basesnapshot import BaseSnapshots
from pywrenn.hostagent.capsule import Capsule, CapsuleInfo
from pywrenn.hostagent.createrequest import DEFAULT_TEMPLATE, CreateRequest, new_meta
from pywrenn.hostagent.egress import EgressPolicy
from pywrenn.hostagent.errors import (
    CapsuleNotFound,
    CapsuleStateConflict,
    HostAgentError,
    HostError,
    InvalidRequest,
    NoCapacity,
)
from pywrenn.hostagent.faults import crash_hook, crash_point
from pywrenn.hostagent.guestlink import GuestConnector
from pywrenn.hostagent.hostnet import HostNetwork, LinuxHostNetwork
from pywrenn.hostagent.netpool import NetworkPool
from pywrenn.hostagent.poolsizes import PoolKey
from pywrenn.hostagent.recovery import Recovery, RecoveryReport
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.slots import SlotAllocator, allocate_slot
from pywrenn.hostagent.sources import resolve_source
from pywrenn.hostagent.spawner import Spawner
from pywrenn.hostagent.states import CapsuleState, EventHook, ignore_event
from pywrenn.hostagent.steps import LifecycleSteps
from pywrenn.hostagent.warmpool import WarmMember, WarmPool
from pywrenn.ids import IdKind, is_valid_id, new_id
from pywrenn.layout import Layout
from pywrenn.vmm import Runtime, VMError

log = logging.getLogger("pywrenn.hostagent")


class SandboxManager:
    """Every capsule on this host. `network` and `connect_guest` default to the real
    host's; a manager over `vmm.FakeRuntime`, `fakenet.FakeHostNetwork` and the fake's
    `connect_guest` needs no root, no QEMU and no namespaces."""

    def __init__(
        self,
        settings: HostAgentSettings,
        runtime: Runtime,
        *,
        network: HostNetwork | None = None,
        connect_guest: GuestConnector = guestlink.connect_guest,
    ) -> None:
        self.settings = settings
        self.layout = Layout(settings.dir)
        self.layout.ensure()
        self.runtime = runtime
        if network is None:
            network = LinuxHostNetwork(dns_upstreams=settings.dns_upstreams)
        self.network: HostNetwork = network
        self.connect_guest = connect_guest
        first_slot, last_slot = settings.slots
        self.slots = SlotAllocator(self.layout, first=first_slot, last=last_slot)
        self._capsules: dict[str, Capsule] = {}
        self._auto_paused: list[str] = []
        self._draining = False
        # False when the agent stops because its parent (`wrenn up`) died: VMs are left
        # running for the next agent to re-adopt, instead of paused (see server.py).
        self.pause_on_shutdown = True
        # Told of state changes the agent makes on its own (events.EventQueue.report when
        # the host is registered with a control plane); must not block or raise.
        self.report_event: EventHook = ignore_event
        self.spawner = Spawner()
        self.base = BaseSnapshots(
            layout=self.layout,
            runtime=runtime,
            slots=self.slots,
            network=self.network,
            connect_guest=connect_guest,
            spawner=self.spawner,
            boot_timeout_s=settings.boot_timeout_s,
        )
        self.netpool = NetworkPool(
            slots=self.slots,
            network=self.network,
            spawner=self.spawner,
            size=settings.network_pool_size,
            egress=settings.egress_default,
            blocked=settings.blocked_ranges,
        )
        self.admission = Admission.from_settings(
            settings, also_held=lambda: self.warmpool.held_mb()
        )
        self.warmpool = WarmPool(
            layout=self.layout,
            runtime=runtime,
            slots=self.slots,
            network=self.network,
            connect_guest=connect_guest,
            spawner=self.spawner,
            sizes={
                size.key(settings.default_vcpus, settings.default_memory_mb): size.count
                for size in settings.warm_pool
            },
            egress=settings.egress_default,
            blocked=settings.blocked_ranges,
            restore_timeout_s=settings.restore_timeout_s,
            has_room=lambda memory_mb: self.admission.fits(memory_mb, self._capsules.values()),
            quiet=self._no_boot_in_flight,
        )
        self.steps = LifecycleSteps(
            settings=settings,
            layout=self.layout,
            runtime=runtime,
            slots=self.slots,
            network=self.network,
            connect_guest=connect_guest,
        )

    # -- queries ---------------------------------------------------------------------------
    def list_infos(self) -> list[CapsuleInfo]:
        return [c.info() for c in sorted(self._capsules.values(), key=lambda c: c.capsule_id)]

    def get(self, capsule_id: str) -> CapsuleInfo:
        return self.capsule(capsule_id).info()

    def capsule(self, capsule_id: str) -> Capsule:
        try:
            return self._capsules[capsule_id]
        except KeyError:
            raise CapsuleNotFound(capsule_id) from None

    def running(self, capsule_id: str) -> Capsule:
        """The capsule, if it is running; a conflict naming its state otherwise."""
        capsule = self.capsule(capsule_id)
        if capsule.state is not CapsuleState.RUNNING or capsule.envd is None:
            raise CapsuleStateConflict(capsule_id, capsule.state.value, "use it")
        capsule.touch()
        return capsule

    def capsules(self) -> Iterable[Capsule]:
        return list(self._capsules.values())

    def drain_auto_paused(self) -> list[str]:
        drained, self._auto_paused = self._auto_paused, []
        return drained

    def ping(self, capsule_id: str) -> CapsuleInfo:
        capsule = self.capsule(capsule_id)
        capsule.touch()
        return capsule.info()

    # -- create / destroy ----------------------------------------------------------------
    async def create(self, request: CreateRequest) -> CapsuleInfo:
        if self._draining:
            raise CapsuleStateConflict("-", "draining", "create capsules")
        capsule_id = request.capsule_id or new_id(IdKind.CAPSULE)
        if not is_valid_id(capsule_id, IdKind.CAPSULE):
            raise InvalidRequest(f"invalid: capsule id {capsule_id!r}")
        if capsule_id in self._capsules or self.layout.sandbox_dir(capsule_id).exists():
            raise CapsuleStateConflict(capsule_id, "existing", "create it again")
        vcpus = request.vcpus or self.settings.default_vcpus
        memory_mb = request.memory_mb or self.settings.default_memory_mb
        if not 1 <= vcpus <= self.settings.max_vcpus:
            raise InvalidRequest(f"invalid: vcpus {vcpus} is outside 1..{self.settings.max_vcpus}")
        if not 128 <= memory_mb <= self.settings.max_memory_mb:
            raise InvalidRequest(
                f"invalid: memory_mb {memory_mb} is outside 128..{self.settings.max_memory_mb}"
            )
        # The ttl is checked by the API model (`wire.CapsuleCreate`).
        policy = self._egress_policy(
            request.egress, request.allow_out, request.deny_out, request.allow_domains
        )
        key = PoolKey(request.template, vcpus, memory_mb)
        warm = self._take_warm_and_admit(capsule_id, key, policy.forwarded)
        try:
            source = resolve_source(self.layout, request.template, vcpus, memory_mb)
        except BaseException:
            if warm is not None:
                self.warmpool.give_back(warm)
            raise
        warm = self.warmpool.confirm(warm, source)
        started = time.monotonic()
        slot, built = await self._slot_for(capsule_id, warm, policy.forwarded)
        meta = new_meta(self.layout, capsule_id, request, source, slot, (vcpus, memory_mb), policy)
        capsule = Capsule(capsule_id=capsule_id, state=CapsuleState.CREATING, meta=meta)
        self._capsules[capsule_id] = capsule
        async with capsule.lifecycle:
            try:
                if not built:
                    await self.network.create(
                        capsule.net, egress=policy.forwarded, blocked=self.settings.blocked_ranges
                    )
                await self.network.install_egress_lists(capsule.net, policy)
                crash_point("create.after_network")
                networked = time.monotonic()
                if warm is not None:
                    await self.steps.start_warm(capsule, warm)
                elif await self.steps.start(capsule, source):
                    # Booted: no snapshot of this image and size yet; the next restores.
                    meta = capsule.meta
                    self.base.bake_later(meta.template_name, meta.vcpus, meta.memory_mb)
                crash_point("create.after_state")
                capsule.move_to(CapsuleState.RUNNING)
            except BaseException as exc:
                log.warning("create %s failed: %s", capsule_id, exc)
                await self.steps.release(capsule)
                self._capsules.pop(capsule_id, None)
                if isinstance(exc, VMError | EnvdError):
                    raise HostError(f"create failed: {exc}") from exc
                raise
        done = time.monotonic()
        log.info(
            "created %s slot=%d template=%s in %.3fs (network %.3fs%s, vm %.3fs%s)",
            capsule_id,
            slot,
            request.template,
            done - started,
            networked - started,
            " pooled" if built and warm is None else "",
            done - networked,
            " warm" if warm is not None else "",
        )
        return capsule.info()

    def _no_boot_in_flight(self) -> bool:
        """No capsule is being created or resumed (the warm pool refills only then)."""
        busy = (CapsuleState.CREATING, CapsuleState.RESUMING)
        return not any(c.state in busy for c in self._capsules.values())

    def _take_warm_and_admit(
        self, capsule_id: str, key: PoolKey, egress: bool
    ) -> WarmMember | None:
        """A warm member for this create (or None), and its admission, in one
        synchronous step: the member's memory becomes the capsule's instead of the
        pool's (never counted twice), and no other create can take it."""
        warm = self.warmpool.take(key, egress=egress)
        try:
            self._admit(capsule_id, key.memory_mb)
        except NoCapacity:
            if warm is not None:
                self.warmpool.give_back(warm)
            raise
        return warm

    async def _slot_for(
        self, capsule_id: str, warm: WarmMember | None, egress: bool
    ) -> tuple[int, bool]:
        """The new capsule's slot, and whether its network is built already (a warm
        member's, or one from the network pool)."""
        if warm is not None:
            try:
                self.slots.relabel(warm.slot, capsule_id)
            except OSError as exc:
                self.warmpool.drop(warm)
                raise HostError(f"create failed: cannot claim slot {warm.slot}: {exc}") from exc
            return warm.slot, True
        pooled = self.netpool.take(capsule_id, egress=egress)
        if pooled is not None:
            return pooled, True
        return await allocate_slot(self.slots, self.network, capsule_id), False

    def _admit(self, capsule_id: str, memory_mb: int) -> None:
        """Admission; a capsule that does not fit evicts the warm pool and asks again
        (users' capsules come before capsules kept warm for them)."""
        try:
            self.admission.admit(capsule_id, memory_mb, self._capsules.values())
        except NoCapacity:
            if not self.warmpool.evict():
                raise
            self.admission.admit(capsule_id, memory_mb, self._capsules.values())

    def _egress_policy(
        self, internet: bool | None, allow: list[str], deny: list[str], names: list[str]
    ) -> EgressPolicy:
        """What a capsule may reach (InvalidRequest naming a bad range or name);
        `internet` None is the host's default."""
        on = self.settings.egress_default if internet is None else internet
        return egress.policy(on, allow, deny, names)

    async def destroy(self, capsule_id: str) -> None:
        capsule = self.capsule(capsule_id)
        async with capsule.lifecycle:
            if capsule.state is CapsuleState.STOPPED:
                return
            capsule.move_to(CapsuleState.STOPPING)
            await self.steps.release(capsule, on_step=crash_hook("destroy"))
            capsule.move_to(CapsuleState.STOPPED)
            self._capsules.pop(capsule_id, None)
        log.info("destroyed %s", capsule_id)

    # -- pause / resume ------------------------------------------------------------------
    async def pause(self, capsule_id: str, *, auto: bool = False) -> CapsuleInfo:
        capsule = self.capsule(capsule_id)
        async with capsule.lifecycle:
            if capsule.state is CapsuleState.PAUSED:
                return capsule.info()  # pausing a paused capsule is a no-op
            if capsule.state is not CapsuleState.RUNNING or capsule.vm is None:
                raise CapsuleStateConflict(capsule_id, capsule.state.value, "pause")
            capsule.move_to(CapsuleState.PAUSING)
            try:
                await self.steps.pause_to_disk(capsule)
            finally:
                if _never_left_pausing(capsule):
                    self.report_event(capsule_id, CapsuleState.FAILED, "pause_failed")
            if auto:
                self._auto_paused.append(capsule_id)
                self.report_event(capsule_id, CapsuleState.PAUSED, "ttl_expired")
        log.info("paused %s%s", capsule_id, " (idle)" if auto else "")
        return capsule.info()

    async def resume(self, capsule_id: str, *, timeout_sec: int | None = None) -> CapsuleInfo:
        if self._draining:
            raise CapsuleStateConflict(capsule_id, "draining", "resume")
        capsule = self.capsule(capsule_id)
        async with capsule.lifecycle:
            # Resuming a running capsule is a caller's mistake worth hearing about (unlike
            # pausing a paused one, which a reaper race makes routine).
            if capsule.state is not CapsuleState.PAUSED:
                raise CapsuleStateConflict(capsule_id, capsule.state.value, "resume")
            self._admit(capsule_id, capsule.meta.memory_mb)
            capsule.move_to(CapsuleState.RESUMING)
            await self.steps.resume(capsule, timeout_sec=timeout_sec)
        log.info("resumed %s", capsule_id)
        return capsule.info()

    # -- network ---------------------------------------------------------------------------
    async def update_network(
        self,
        capsule_id: str,
        *,
        internet: bool | None,
        allow: list[str],
        deny: list[str],
        names: list[str] | None = None,
    ) -> CapsuleInfo:
        """Replace a capsule's egress policy: live if it runs, at its resume if paused."""
        capsule = self.capsule(capsule_id)
        policy = self._egress_policy(internet, allow, deny, names or [])
        async with capsule.lifecycle:
            if capsule.state is CapsuleState.RUNNING and capsule.vm is not None:
                await self.steps.change_live_egress(capsule, policy)
            elif capsule.state is CapsuleState.PAUSED:
                self.steps.change_paused_egress(capsule, policy)
            else:
                raise CapsuleStateConflict(capsule_id, capsule.state.value, "change its network")
        log.info(
            "egress of %s: internet=%s allow=%d deny=%d names=%d",
            capsule_id,
            policy.internet,
            len(policy.allow),
            len(policy.deny),
            len(policy.domains),
        )
        return capsule.info()

    # -- startup and shutdown -------------------------------------------------------------
    async def recover(self) -> RecoveryReport:
        """Bring back what a previous agent left, in order, before the API serves."""
        await self.network.ensure_host_guards(self.settings.blocked_ranges)
        recovery = Recovery(
            layout=self.layout,
            runtime=self.runtime,
            slots=self.slots,
            network=self.network,
            connect_guest=self.connect_guest,
        )
        return await recovery.run(self._capsules)

    async def ensure_base_snapshot(self) -> None:
        """Bake the base template's snapshot at the default size if there is none, so
        creates restore instead of booting, and every other image's in the background
        (the code runner's waits for its Jupyter kernel: minutes under TCG, which must
        not hold up serving). A failure is logged: creates then boot."""
        settings = self.settings
        vcpus, memory_mb = settings.default_vcpus, settings.default_memory_mb
        await self.base.ensure_logged(DEFAULT_TEMPLATE, vcpus, memory_mb)
        for template in self.layout.image_templates():
            if template != DEFAULT_TEMPLATE:
                self.base.bake_later(template, vcpus, memory_mb)

    async def pause_all(self, *, budget_s: float) -> None:
        """Pause every running capsule, two at a time, within `budget_s` seconds."""
        self._draining = True
        if not self.pause_on_shutdown:
            log.info("shutdown: running capsules keep running; the next agent re-adopts them")
            return
        running = [c.capsule_id for c in self._capsules.values() if c.state is CapsuleState.RUNNING]
        gate = asyncio.Semaphore(2)

        async def one(capsule_id: str) -> None:
            async with gate:
                try:
                    await self.pause(capsule_id)
                    self.report_event(capsule_id, CapsuleState.PAUSED, "host_shutdown")
                except HostAgentError as exc:
                    log.warning("shutdown pause of %s failed: %s", capsule_id, exc)

        try:
            async with asyncio.timeout(budget_s):
                async with asyncio.TaskGroup() as group:
                    for capsule_id in running:
                        group.create_task(one(capsule_id))
        except TimeoutError:
            log.warning("shutdown: pause budget of %.0fs spent; VMs left running", budget_s)

    async def close(self) -> None:
        await self.warmpool.close()
        await self.netpool.close()
        # Every background task (bakes): a cancelled bake cleans up its VM, slot and
        # namespace before it ends.
        await self.spawner.close()
        for capsule in self._capsules.values():
            await self.steps.close_guest(capsule)


def _never_left_pausing(capsule: Capsule) -> bool:
    # `steps.pause_to_disk` ends in running, paused or failed; anything it did not foresee
    # (a cancellation between steps) must not leave the capsule pausing forever.
    if capsule.state is CapsuleState.PAUSING:
        capsule.move_to(CapsuleState.FAILED)
    return capsule.state is CapsuleState.FAILED  # the pause ended it: worth an event
