"""The host agent's exception tree. Domain errors carry no HTTP status; `app.py` maps them.

HostAgentError
 ├── CapsuleNotFound        no capsule with that id on this host
 ├── CapsuleStateConflict   the operation is not allowed in the capsule's state
 ├── InvalidRequest         bad input (path, size, template, ...)
 ├── NoCapacity             no free slot, memory or CPU for another capsule
 ├── HostError              a host command or resource failed (ip, qemu-img, ...)
 └── GuestError             the guest agent failed or did not answer
"""

from __future__ import annotations


class HostAgentError(Exception):
    """Base of every error the host agent reports."""


class CapsuleNotFound(HostAgentError):
    def __init__(self, capsule_id: str) -> None:
        super().__init__(f"not found: capsule {capsule_id!r}")
        self.capsule_id = capsule_id


class CapsuleStateConflict(HostAgentError):
    def __init__(self, capsule_id: str, state: str, wanted: str) -> None:
        super().__init__(f"conflict: capsule {capsule_id!r} is {state}, cannot {wanted}")
        self.capsule_id = capsule_id
        self.state = state


class InvalidRequest(HostAgentError):
    pass


class NoCapacity(HostAgentError):
    pass


class HostError(HostAgentError):
    pass


class GuestError(HostAgentError):
    pass
