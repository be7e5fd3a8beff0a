"""This host's standing with its control plane: registration, the current credentials,
and their refresh.

Owns: `register` (a registration token in, credentials saved), and `HostSession`, which
makes every authenticated call with the current host token: refreshed first when less
than a third of its life is left, and once more after a 401, then the call is retried.
Refreshes run one at a time; a caller whose 401 came from a token another caller has
already replaced just retries with the new one (two refreshes in a row would spend the
rotated refresh token twice, and the second would be refused).

Rotation and crashes: the answer to a refresh is saved (credentials.save: temp file,
fsync, rename, fsync dir) before anything else happens; only then does the session
switch to the new host token. A crash before the save completes leaves the old tokens in
the file: the control plane keeps the spent refresh token good until the new host token
is first used, so the restarted agent refreshes again with it. If the write itself fails
(disk full), the new credentials are kept in memory, used, and the write is retried
before every later call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import shutil
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from pywrenn import __version__
from pywrenn.hostagent import credentials as creds_file
from pywrenn.hostagent.admission import host_memory_mb
from pywrenn.hostagent.cpclient import ControlPlaneClient, ControlPlaneError, Issued, Unauthorized
from pywrenn.hostagent.credentials import Credentials

log = logging.getLogger("pywrenn.hostagent.session")

T = TypeVar("T")

# The protocol's host token life: assumed for tokens read from the file (their issue
# time is not kept); a token received in this process has its own, measured life.
HOST_TOKEN_LIFE = timedelta(days=7)
DEFAULT_HEARTBEAT_INTERVAL_S = 30.0

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def host_specs(wrenn_dir: Path, memory_capacity_mb: int = 0) -> dict[str, object]:
    """What registration tells the control plane about this machine."""
    disk = shutil.disk_usage(wrenn_dir)
    return {
        "arch": platform.machine(),
        "cpus": os.cpu_count() or 1,
        "memory_mb": memory_capacity_mb or host_memory_mb(),
        "disk_mb": (disk.used + disk.free) // (1024 * 1024),
    }


async def register(
    client: ControlPlaneClient,
    path: Path,
    *,
    token: str,
    address: str,
    specs: dict[str, object],
    agent_token: str,
) -> tuple[Credentials, float]:
    """Register with a one-time token; the credentials are saved (replacing any) before
    they are returned, with the heartbeat interval the control plane asked for."""
    issued = await client.register(
        token=token,
        address=address,
        specs=specs,
        agent_token=agent_token,
        agent_version=__version__,
    )
    saved = _credentials(client.base_url, issued, address)
    creds_file.save(path, saved)
    log.info("registered with %s as host %s", client.base_url, issued.host_id)
    return saved, issued.heartbeat_interval_s


class HostSession:
    def __init__(
        self,
        client: ControlPlaneClient,
        credentials: Credentials,
        path: Path,
        *,
        heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
        token_life: timedelta = HOST_TOKEN_LIFE,
        clock: Clock = utc_now,
    ) -> None:
        self.client = client
        self.credentials = credentials
        self.path = path
        self.heartbeat_interval_s = heartbeat_interval_s
        self._token_life = token_life
        self._clock = clock
        self._lock = asyncio.Lock()
        self._unsaved = False
        self.refreshes = 0

    @property
    def host_id(self) -> str:
        return self.credentials.host_id

    @property
    def address(self) -> str:
        return self.credentials.address

    def needs_refresh(self) -> bool:
        left = self.credentials.host_token_expires_at - self._clock()
        return left < self._token_life / 3

    async def call(self, request: Callable[[str, str], Awaitable[T]]) -> T:
        """`request(host_id, host_token)` with a fresh token; after a 401, refresh and
        try once more. Unauthorized, HostGone, ControlPlaneError go to the caller."""
        self._save_if_unsaved()
        if self.needs_refresh():
            try:
                await self.refresh(replacing=self.credentials.host_token)
            except ControlPlaneError as exc:  # the old token may still work: go on
                log.warning("refresh before expiry failed: %s", exc)
        token = self.credentials.host_token
        try:
            return await request(self.host_id, token)
        except Unauthorized:
            await self.refresh(replacing=token)
            return await request(self.host_id, self.credentials.host_token)

    async def refresh(self, *, replacing: str) -> None:
        """Rotate the credentials, unless `replacing` (the host token the caller found
        stale) was already replaced by another caller."""
        async with self._lock:
            if self.credentials.host_token != replacing:
                return
            try:
                issued = await self.client.refresh(self.credentials.refresh_token)
            except Unauthorized:
                log.error(
                    "control plane %s refused this host's refresh token: register again "
                    "(wrenn agent --register TOKEN --control-plane URL)",
                    self.client.base_url,
                )
                raise
            fresh = _credentials(self.credentials.control_plane, issued, self.address)
            # Saved before it is used: see the module doc.
            try:
                creds_file.save(self.path, fresh)
            except OSError as exc:
                self._unsaved = True
                log.error("cannot save rotated credentials to %s (retrying): %s", self.path, exc)
            self.credentials = fresh
            self._token_life = max(
                issued.host_token_expires_at - self._clock(), timedelta(seconds=1)
            )
            self.heartbeat_interval_s = issued.heartbeat_interval_s
            self.refreshes += 1
            log.info("host token refreshed (expires %s)", issued.host_token_expires_at)

    def _save_if_unsaved(self) -> None:
        if not self._unsaved:
            return
        try:
            creds_file.save(self.path, self.credentials)
        except OSError as exc:
            log.error("cannot save rotated credentials to %s (retrying): %s", self.path, exc)
            return
        self._unsaved = False


def _credentials(control_plane: str, issued: Issued, address: str) -> Credentials:
    return Credentials(
        control_plane=control_plane,
        host_id=issued.host_id,
        host_token=issued.host_token,
        host_token_expires_at=issued.host_token_expires_at,
        refresh_token=issued.refresh_token,
        address=address,
    )
