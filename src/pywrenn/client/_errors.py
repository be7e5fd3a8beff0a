"""The client's one error: the server's `{"error": {"code", "message"}}` envelope."""

from __future__ import annotations

__all__ = ["APIError"]


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
