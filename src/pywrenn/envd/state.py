"""What `/init` sets and every request reads: defaults, global env vars, the access token.

Owns: the agent's mutable configuration, guarded by one lock, and the barrier that holds
requests back while `/init`'s naming of the machine finishes after its answer. Services
keep their own tables (processes, watchers); this holds only what the host pushes in.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from pywrenn.envd.config import AgentConfig
from pywrenn.envd.users import User, lookup_user

FALLBACK_USER = "root"
# How long a request waits for /init's naming of the machine before it goes on anyway
# (a stalled disk must not hang every request).
MACHINE_SETTLE_WAIT_S = 30.0

log = logging.getLogger("pywrenn.envd")


@dataclass(frozen=True)
class Defaults:
    user: str = FALLBACK_USER
    workdir: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)


class AgentState:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._defaults = Defaults()
        self._access_token: str | None = None
        self._settled = threading.Event()
        self._settled.set()
        self._machine_work = threading.Lock()

    @property
    def defaults(self) -> Defaults:
        with self._lock:
            return self._defaults

    @property
    def access_token(self) -> str | None:
        with self._lock:
            return self._access_token

    def update(
        self,
        *,
        user: str | None = None,
        workdir: str | None = None,
        env_vars: dict[str, str] | None = None,
        access_token: str | None = None,
    ) -> None:
        with self._lock:
            current = self._defaults
            self._defaults = Defaults(
                user=user if user else current.user,
                workdir=workdir if workdir else current.workdir,
                env_vars=dict(env_vars) if env_vars is not None else current.env_vars,
            )
            if access_token is not None:
                # An empty string turns the gate off again (as the host may after a restore).
                self._access_token = access_token or None

    def token_matches(self, presented: str | None) -> bool:
        token = self.access_token
        if token is None:
            return True
        return presented is not None and hmac.compare_digest(presented, token)

    def user_or_default(self, name: str | None) -> User:
        return lookup_user(name or self.defaults.user)

    @contextlib.contextmanager
    def unsettled(self) -> Iterator[None]:
        """Changes to the machine in progress: `wait_settled` holds requests back until
        they are done. One at a time (two /inits never write the same file together)."""
        with self._machine_work:
            self._settled.clear()
            try:
                yield
            finally:
                self._settled.set()

    def wait_settled(self, timeout: float = MACHINE_SETTLE_WAIT_S) -> None:
        if not self._settled.is_set() and not self._settled.wait(timeout):
            log.warning("machine still being set up after %.0fs; serving anyway", timeout)
