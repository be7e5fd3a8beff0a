"""The bodies of the process routes: exec, streams, background processes, input."""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, Field

from ._fields import MAX_TIMEOUT_S, Base64Bytes, Command, Strict, Tag, TerminalDim

DEFAULT_EXEC_TIMEOUT_S = 30.0


class _ProcessBody(Strict):
    cmd: Command
    args: list[str] = Field(default_factory=list)
    envs: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None


class ExecRequest(_ProcessBody):
    """`POST …/exec`: run to completion, output collected."""

    timeout_sec: float = Field(default=DEFAULT_EXEC_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S)


class ExecStreamRequest(_ProcessBody):
    """`POST …/exec/stream`: the process's events as NDJSON while it runs."""

    tag: Tag | None = None
    stdin: bool = False
    timeout_sec: float = Field(default=0.0, ge=0, le=MAX_TIMEOUT_S)  # 0: no limit


class BackgroundRequest(_ProcessBody):
    """`POST …/processes`: a process that outlives the call, stdin open, maybe a PTY."""

    tag: Tag | None = None
    pty: bool = False
    cols: TerminalDim = 80
    rows: TerminalDim = 24


class ExecResponse(BaseModel):
    stdout: str
    stderr: str
    encoding: Literal["utf-8", "base64"]
    exit_code: int
    error: str | None
    duration_ms: float
    pid: int

    @classmethod
    def of(cls, stdout: bytes, stderr: bytes, **rest: Any) -> ExecResponse:
        """UTF-8 text when both streams are, else both in base64."""
        encoding: Literal["utf-8", "base64"] = "utf-8"
        try:
            out, err = stdout.decode(), stderr.decode()
        except UnicodeDecodeError:
            out = base64.b64encode(stdout).decode()
            err = base64.b64encode(stderr).decode()
            encoding = "base64"
        return cls(stdout=out, stderr=err, encoding=encoding, **rest)


class Started(BaseModel):
    pid: int
    tag: str | None


class ProcessPublic(BaseModel):
    pid: int
    tag: str | None
    cmd: str
    args: list[str]
    cwd: str | None


class ProcessList(BaseModel):
    processes: list[ProcessPublic]


class InputRequest(Strict):
    data: Base64Bytes
    pty: bool = False


class ResizeRequest(Strict):
    cols: TerminalDim
    rows: TerminalDim
