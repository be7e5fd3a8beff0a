"""A small async client for the guest agent (E2B's envd protocol, Connect + JSON).

Owns: talking to one guest agent over HTTP. Knows nothing of: VMs, QEMU, the host agent.
"""

from pywrenn.envdclient._client import EnvdClient, ExecResult
from pywrenn.envdclient._errors import EnvdError, EnvdProtocolError, EnvdTimeout, EnvdUnavailable
from pywrenn.envdclient._ops import EntryInfo, ProcessEvent, ProcessInfo, Selector

__all__ = [
    "EntryInfo",
    "EnvdClient",
    "EnvdError",
    "EnvdProtocolError",
    "EnvdTimeout",
    "EnvdUnavailable",
    "ExecResult",
    "ProcessEvent",
    "ProcessInfo",
    "Selector",
]
