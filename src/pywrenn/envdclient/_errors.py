"""Errors of the envd client.

EnvdError               anything the guest agent call could not do
├── EnvdUnavailable     no answer / connection refused / a non-2xx status
├── EnvdTimeout         no (complete) answer within the timeout
└── EnvdProtocolError   an answer that breaks the wire format, or a Connect error
"""

from __future__ import annotations

__all__ = ["EnvdError", "EnvdProtocolError", "EnvdTimeout", "EnvdUnavailable"]


class EnvdError(Exception):
    """Base of the envd client's errors."""


class EnvdUnavailable(EnvdError):
    """The agent did not answer, or answered with a failure status."""


class EnvdTimeout(EnvdError):
    """The agent did not finish answering within the timeout."""


class EnvdProtocolError(EnvdError):
    """The agent's answer broke the Connect framing, or carried a Connect error."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code
