"""The host agent's API on the wire: the one package both of its sides import.

Owns: every request and response body of the API in docs/hostagent.md (pydantic), with
the checks on a request that need no host state (sizes, names, ids, base64);
`ProcessSpec`, what to run in a guest, as it travels from the control plane down to the
guest agent's client (`processes.py`); and the NDJSON lines of a process stream
(`events.py`: `encode_event`, the host agent's, and `decode_event`, the control plane's).
Knows nothing of: capsules as the host agent holds them, VMs, or the guest agent's
client. It imports pydantic, the standard library and `pywrenn.ids` only, so the control
plane loads none of the rest of the host agent with it (a unit test holds this). Turning
the host agent's own records into these bodies is `hostagent/routes/_convert.py`'s.
"""

from pywrenn.ids import Selector

from ._fields import MAX_TIMEOUT_S
from .capsules import (
    MAX_FORK,
    AgentHealth,
    CapsuleCreate,
    CapsuleList,
    CapsuleResume,
    ForkRequest,
    HostCapsule,
    MetricPointPublic,
    MetricRange,
    MetricsResponse,
    NetworkPoolStatus,
    NetworkUpdate,
    SnapshotRequest,
    TemplateList,
    TemplatePublic,
    WarmPoolStatus,
)
from .events import NDJSON, AgentEvent, MalformedEvent, StreamEvent, decode_event, encode_event
from .files import DirMade, EntryList, EntryPublic, FileWritten
from .processes import (
    DEFAULT_EXEC_TIMEOUT_S,
    BackgroundRequest,
    ExecRequest,
    ExecResponse,
    ExecStreamRequest,
    InputRequest,
    ProcessList,
    ProcessPublic,
    ProcessSpec,
    ResizeRequest,
    Started,
    TerminalSize,
)

__all__ = [
    "DEFAULT_EXEC_TIMEOUT_S",
    "MAX_FORK",
    "MAX_TIMEOUT_S",
    "NDJSON",
    "AgentEvent",
    "AgentHealth",
    "BackgroundRequest",
    "CapsuleCreate",
    "CapsuleList",
    "CapsuleResume",
    "DirMade",
    "EntryList",
    "EntryPublic",
    "ExecRequest",
    "ExecResponse",
    "ExecStreamRequest",
    "FileWritten",
    "ForkRequest",
    "HostCapsule",
    "InputRequest",
    "MalformedEvent",
    "MetricPointPublic",
    "MetricRange",
    "MetricsResponse",
    "NetworkPoolStatus",
    "NetworkUpdate",
    "ProcessList",
    "ProcessPublic",
    "ProcessSpec",
    "ResizeRequest",
    "Selector",
    "SnapshotRequest",
    "Started",
    "StreamEvent",
    "TemplateList",
    "TemplatePublic",
    "TerminalSize",
    "WarmPoolStatus",
    "decode_event",
    "encode_event",
]
