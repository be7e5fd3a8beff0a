"""Plain-HTTP endpoints for the host: /health, /init, /envs, /metrics, /snapshot/prepare.

Owns: the handshake the host agent performs after every boot or restore (`/init`: access
token, default user and workdir, global env vars, the host's clock, fresh entropy,
address-space randomisation, the hostname and its /etc/hosts line) and the guest's
resource figures.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import threading
import time
from calendar import timegm
from dataclasses import dataclass
from typing import Protocol

from pywrenn.envd import guest
from pywrenn.envd.errors import ConnectError, HTTPError
from pywrenn.envd.routing import RequestContext, Router
from pywrenn.envd.state import AgentState
from pywrenn.envd.users import lookup_user

log = logging.getLogger("pywrenn.envd")

_MAX_INIT_BODY = 1024 * 1024
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:\d{2})\Z"
)


class MachineControl(Protocol):
    """What /init may change on the machine (clock, entropy, address-space
    randomisation, hostname); present only inside a capsule, a recorder in tests."""

    def set_clock(self, epoch_seconds: float) -> bool: ...

    def add_entropy(self, seed: bytes) -> None: ...

    def set_address_randomization(self, enabled: bool) -> None: ...

    def set_hostname(self, name: str) -> None: ...


class _RealMachineControl:
    set_clock = staticmethod(guest.set_clock)
    add_entropy = staticmethod(guest.add_entropy)
    set_address_randomization = staticmethod(guest.set_address_randomization)
    set_hostname = staticmethod(guest.set_hostname)


@dataclass
class _CPUSample:
    busy: int
    total: int


class SystemService:
    def __init__(self, state: AgentState, ops: MachineControl | None) -> None:
        self.state = state
        self.ops = ops
        self._cpu_lock = threading.Lock()
        self._last_cpu: _CPUSample | None = None
        # What the last /init set (None: not set since this agent started). It lives in
        # the agent's memory, so it survives a snapshot with the machine it describes,
        # and a restore that asks for the same again writes nothing.
        self._aslr: bool | None = None

    def health(self, ctx: RequestContext) -> None:
        ctx.response.send_empty(204)

    def init(self, ctx: RequestContext) -> None:
        # Once a token is set, only its holder may change the agent's configuration.
        if not self.state.token_matches(ctx.header("x-access-token")):
            raise HTTPError(401, "unauthorized: /init needs the current access token")
        body = _json_object(ctx.body.read_all(_MAX_INIT_BODY))
        env_vars = body.get("envVars")
        if env_vars is not None and not (
            isinstance(env_vars, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items())
        ):
            raise HTTPError(400, "invalid: envVars must map strings to strings")
        user = _optional_str(body, "defaultUser")
        if user:
            try:
                lookup_user(user)
            except ConnectError:
                raise HTTPError(400, f"invalid: defaultUser {user!r} does not exist") from None
        workdir = _optional_str(body, "defaultWorkdir")
        token = _optional_str(body, "accessToken")
        timestamp = _optional_str(body, "timestamp")
        entropy = _optional_str(body, "entropy")
        hostname = _optional_str(body, "hostname")
        aslr = body.get("aslr")
        if aslr is not None and not isinstance(aslr, bool):
            raise HTTPError(400, "invalid: aslr must be true or false")
        if hostname and not guest.valid_hostname(hostname):
            raise HTTPError(400, f"invalid: hostname {hostname!r} is not an RFC 1123 host name")
        epoch = parse_rfc3339(timestamp) if timestamp else None
        seed = _decode_b64(entropy, "entropy") if entropy else b""
        self._apply_to_machine(epoch, seed, aslr)
        self.state.update(user=user, workdir=workdir, env_vars=env_vars, access_token=token)
        if not hostname or self.ops is None:
            ctx.response.send_empty(204)
            return
        # The name is given after the answer, behind a barrier every later request but
        # /health waits at (`AgentState.wait_settled`): no request sees the old name, and
        # a create does not wait for the guest's write of /etc/hosts (~30 ms of a first
        # /init in a new QEMU process under TCG) while the host finishes its own steps.
        with self.state.unsettled():
            ctx.response.send_empty(204)
            self._name_machine(hostname)

    def _apply_to_machine(self, epoch: float | None, seed: bytes, aslr: bool | None) -> None:
        """What must hold before /init answers: fresh randomness, the host's time, the
        address-space layout the next process starts with."""
        if self.ops is None:
            if epoch is not None or seed or aslr is not None:
                log.debug("not in a capsule: clock, entropy and aslr left alone")
            return
        try:
            if seed:
                self.ops.add_entropy(seed)
            if aslr is not None and aslr != self._aslr:
                self._set_address_randomization(aslr)
            # Not logged above debug: a line on the serial console cost ~9 ms of a
            # create's first /init under TCG, and every create sets the clock.
            if epoch is not None and self.ops.set_clock(epoch):
                log.debug("clock set from host")
        except OSError as exc:
            raise HTTPError(500, f"init: could not apply to the guest: {exc}") from exc

    def _set_address_randomization(self, enabled: bool) -> None:
        """A preference for speed, not a guarantee: a guest that cannot take it (a
        read-only /proc/sys) still serves, and the next /init tries again."""
        assert self.ops is not None
        try:
            self.ops.set_address_randomization(enabled)
        except OSError as exc:
            log.warning("init: could not set address-space randomisation: %s", exc)
            return
        self._aslr = enabled

    def _name_machine(self, hostname: str) -> None:
        """After the answer, so a failure is the log's: the capsule works on unnamed."""
        assert self.ops is not None
        try:
            self.ops.set_hostname(hostname)
        except OSError as exc:
            log.error("init: could not name the machine %r: %s", hostname, exc)

    def envs(self, ctx: RequestContext) -> None:
        ctx.response.send_json(200, self.state.defaults.env_vars)

    def metrics(self, ctx: RequestContext) -> None:
        mem = _meminfo()
        disk = os.statvfs("/")
        total_mem = mem.get("MemTotal", 0)
        ctx.response.send_json(
            200,
            {
                "ts": int(time.time()),
                "cpu_count": os.cpu_count() or 1,
                "cpu_used_pct": round(self._cpu_used_pct(), 2),
                "mem_total": total_mem,
                "mem_used": max(total_mem - mem.get("MemAvailable", total_mem), 0),
                "mem_cache": mem.get("Cached", 0),
                "disk_total": disk.f_blocks * disk.f_frsize,
                "disk_used": (disk.f_blocks - disk.f_bfree) * disk.f_frsize,
            },
        )

    def snapshot_prepare(self, ctx: RequestContext) -> None:
        # Flush dirty pages so the disk overlay is consistent with the memory snapshot
        # even if the VM is later restored from the disk alone.
        os.sync()
        ctx.response.send_empty(204)

    def _cpu_used_pct(self) -> float:
        with self._cpu_lock:
            previous = self._last_cpu
            if previous is None:
                previous = _cpu_sample()
                time.sleep(0.05)
            current = _cpu_sample()
            self._last_cpu = current
        total = current.total - previous.total
        return 100.0 * (current.busy - previous.busy) / total if total > 0 else 0.0


def register(router: Router, state: AgentState, ops: MachineControl | None = None) -> None:
    if ops is None and guest.running_in_guest():
        ops = _RealMachineControl()
    service = SystemService(state, ops)
    router.add_http("GET", "/health", service.health, token_gate=False)
    router.add_http("POST", "/init", service.init, token_gate=False)
    router.add_http("GET", "/envs", service.envs)
    router.add_http("GET", "/metrics", service.metrics)
    router.add_http("POST", "/snapshot/prepare", service.snapshot_prepare)


def parse_rfc3339(text: str) -> float:
    """RFC 3339 to epoch seconds; Go writes up to nine fractional digits."""
    match = _RFC3339.match(text.strip())
    if match is None:
        raise HTTPError(400, f"invalid: timestamp {text!r} is not RFC 3339")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        fields = (int(year), int(month), int(day), int(hour), int(minute), int(second))
        epoch: float = timegm(fields)
    except (ValueError, OverflowError):
        raise HTTPError(400, f"invalid: timestamp {text!r}") from None
    if fraction:
        epoch += int(fraction[:9].ljust(9, "0")) / 1e9
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        epoch -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return float(epoch)


def _json_object(payload: bytes) -> dict[str, object]:
    if not payload.strip():
        return {}
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"invalid: body is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise HTTPError(400, "invalid: body is not a JSON object")
    return value


def _optional_str(body: dict[str, object], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise HTTPError(400, f"invalid: {key} must be a string")
    return value


def _decode_b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPError(400, f"invalid: {field} is not base64") from None


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[name] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    except OSError:
        pass
    return out


def _cpu_sample() -> _CPUSample:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return _CPUSample(busy=total - idle, total=total)
