"""What to run in a guest (`ProcessSpec`), and the bodies of the process routes.

A spec travels from the control plane to the guest agent's client unchanged; each of the
three routes that start a process writes it as its own body (`of`) and reads it back
(`spec`), so no layer forwards a process's fields by hand.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from ._fields import MAX_TIMEOUT_S, Base64Bytes, Command, Strict, Tag, TerminalDim

DEFAULT_EXEC_TIMEOUT_S = 30.0


class TerminalSize(NamedTuple):
    cols: TerminalDim
    rows: TerminalDim


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """What to run in a guest: made once by the control plane, read by every layer below.

    Not validated itself: the body of the route that runs it is, once on each side
    (`ExecRequest.of(spec)` in the HTTP client; the route's body in the host agent, which
    `.spec()` turns back into one). `args` and `envs` are the body's own list and dict,
    shared rather than copied, so the exec path copies nothing: treat them as read-only.
    Each route carries some fields and refuses a spec that sets the others: exec
    (collected) has no tag, stdin or pty; exec/stream no pty; a background process no
    timeout, and always keeps stdin open (input may come later).
    """

    cmd: str
    args: list[str] = field(default_factory=list)
    envs: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    tag: str | None = None
    stdin: bool = False
    timeout_sec: float | None = None  # None: no limit (a collected exec: its default)
    pty: TerminalSize | None = None


class _ProcessBody(Strict):
    cmd: Command
    args: list[str] = Field(default_factory=list)
    envs: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None


class ExecRequest(_ProcessBody):
    """`POST …/exec`: run to completion, output collected."""

    timeout_sec: float = Field(default=DEFAULT_EXEC_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S)

    @classmethod
    def of(cls, spec: ProcessSpec) -> ExecRequest:
        if spec.tag is not None or spec.stdin or spec.pty is not None:
            raise ValueError("exec runs to completion: no tag, stdin or pty (use a stream)")
        timeout = DEFAULT_EXEC_TIMEOUT_S if spec.timeout_sec is None else spec.timeout_sec
        return cls(
            cmd=spec.cmd,
            args=spec.args,
            envs=spec.envs,
            cwd=spec.cwd,
            user=spec.user,
            timeout_sec=timeout,
        )

    def spec(self) -> ProcessSpec:
        return ProcessSpec(
            self.cmd,
            self.args,
            envs=self.envs,
            cwd=self.cwd,
            user=self.user,
            timeout_sec=self.timeout_sec,
        )


class ExecStreamRequest(_ProcessBody):
    """`POST …/exec/stream`: the process's events as NDJSON while it runs."""

    tag: Tag | None = None
    stdin: bool = False
    timeout_sec: float = Field(default=0.0, ge=0, le=MAX_TIMEOUT_S)  # 0: no limit

    @classmethod
    def of(cls, spec: ProcessSpec) -> ExecStreamRequest:
        if spec.pty is not None:
            raise ValueError("exec/stream has no terminal: start a background process")
        return cls(
            cmd=spec.cmd,
            args=spec.args,
            envs=spec.envs,
            cwd=spec.cwd,
            user=spec.user,
            tag=spec.tag,
            stdin=spec.stdin,
            timeout_sec=spec.timeout_sec or 0.0,
        )

    def spec(self) -> ProcessSpec:
        return ProcessSpec(
            self.cmd,
            self.args,
            envs=self.envs,
            cwd=self.cwd,
            user=self.user,
            tag=self.tag,
            stdin=self.stdin,
            timeout_sec=self.timeout_sec or None,
        )


class BackgroundRequest(_ProcessBody):
    """`POST …/processes`: a process that outlives the call, stdin open, maybe a PTY."""

    tag: Tag | None = None
    pty: bool = False
    cols: TerminalDim = 80
    rows: TerminalDim = 24

    @classmethod
    def of(cls, spec: ProcessSpec) -> BackgroundRequest:
        if spec.timeout_sec is not None or not spec.stdin:
            raise ValueError("a background process has no timeout and keeps stdin open")
        size = spec.pty or TerminalSize(80, 24)
        return cls(
            cmd=spec.cmd,
            args=spec.args,
            envs=spec.envs,
            cwd=spec.cwd,
            user=spec.user,
            tag=spec.tag,
            pty=spec.pty is not None,
            cols=size.cols,
            rows=size.rows,
        )

    def spec(self) -> ProcessSpec:
        pty = TerminalSize(self.cols, self.rows) if self.pty else None
        return ProcessSpec(
            self.cmd,
            self.args,
            envs=self.envs,
            cwd=self.cwd,
            user=self.user,
            tag=self.tag,
            stdin=True,
            pty=pty,
        )


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
