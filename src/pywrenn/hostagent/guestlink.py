"""How the host agent opens a client to a guest agent.

Owns: `GuestConnector`, the one way the manager, recovery, base-snapshot bakes and
template builds reach a guest's agent, so a host agent built over `vmm.FakeRuntime`
reaches the fake's guests (`FakeRuntime.connect_guest`) instead of the network.
"""

from __future__ import annotations

from typing import Protocol

from pywrenn.envdclient import EnvdClient

__all__ = ["GuestConnector", "connect_guest"]


class GuestConnector(Protocol):
    def __call__(self, url: str, *, access_token: str | None = None) -> EnvdClient:
        """A client for the guest agent at `url` (plain http); the caller closes it."""
        ...


def connect_guest(url: str, *, access_token: str | None = None) -> EnvdClient:
    """The real connector: an HTTP client to the guest agent at `url`."""
    return EnvdClient(url, access_token=access_token)
