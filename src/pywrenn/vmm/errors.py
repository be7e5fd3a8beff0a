"""The one exception tree of `pywrenn.vmm`.

    VMError                    anything the VM runtime could not do
    ├── BootError              a VM did not start, or its agent never answered
    ├── AccelProbeError        the accelerator probe itself could not run (not "KVM said no")
    ├── HostCommandError       a host tool (disk image tool, ip) failed; carries its stderr tail
    ├── SnapshotError          taking, verifying or loading a snapshot failed
    │   └── SnapshotIncompatible  this runtime cannot load it (format, VMM rejected the stream)
    ├── VMGoneError            the VM's process is not running (killed, crashed, never adopted)
    └── QMPError               the control socket misbehaved
        ├── QMPConnectError    could not connect or negotiate capabilities
        ├── QMPTimeout         no reply (or no awaited event) within the timeout
        ├── QMPCommandError    the VMM answered a command with an error (`error_class`)
        └── QMPDisconnected    the socket closed while a reply was pending

Messages start with what was wrong and the value, e.g. ``"invalid: vcpus 40 is outside 1..32"``.
Nothing here carries an HTTP status: the control plane maps these in one place.
"""

from __future__ import annotations

__all__ = [
    "AccelProbeError",
    "BootError",
    "HostCommandError",
    "QMPCommandError",
    "QMPConnectError",
    "QMPDisconnected",
    "QMPError",
    "QMPTimeout",
    "SnapshotError",
    "SnapshotIncompatible",
    "VMError",
    "VMGoneError",
]


class VMError(Exception):
    """Base of every error raised by `pywrenn.vmm`."""


class BootError(VMError):
    """A VM did not start, or its guest agent never became healthy."""


class AccelProbeError(VMError):
    """The accelerator probe could not be run at all (missing binary, unreadable image)."""


class HostCommandError(VMError):
    """A host command failed; the message names the command and the tail of its stderr."""


class SnapshotError(VMError):
    """A snapshot could not be taken, verified or loaded."""


class SnapshotIncompatible(SnapshotError):
    """This runtime cannot load the snapshot: its format is unknown, or the VMM rejected
    the saved state. Unlike a timeout or a guest that did not answer, retrying will not
    help: the only ways on are a new snapshot or an older VMM."""


class VMGoneError(VMError):
    """The VM's process is gone."""


class QMPError(VMError):
    """The QMP control socket misbehaved."""


class QMPConnectError(QMPError):
    """Could not connect to the QMP socket or negotiate capabilities."""


class QMPTimeout(QMPError):
    """A QMP reply or awaited event did not arrive within its timeout."""


class QMPCommandError(QMPError):
    """The VMM rejected a command; `error_class` is QMP's class (e.g. ``GenericError``)."""

    def __init__(self, message: str, *, error_class: str = "GenericError") -> None:
        super().__init__(message)
        self.error_class = error_class


class QMPDisconnected(QMPError):
    """The QMP socket closed while a reply was still pending."""
