"""The `process.Process` Connect service: Start, Connect, List, input, signals, resize.

Owns: translating envd's process messages to `ProcessTable` operations and streaming a
process's events (`start`, `data`, `keepalive`, `end`) to a client.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

from pywrenn.envd.errors import Code, ConnectError, invalid_argument
from pywrenn.envd.process import ManagedProcess, ProcessSpec, ProcessTable, PtySize, spawn
from pywrenn.envd.routing import JSONObject, RequestContext, Router, StreamSender
from pywrenn.envd.state import AgentState
from pywrenn.envd.users import child_environment, resolve_path

SERVICE = "/process.Process/"
# A process tag's one shape; a copy of `pywrenn.ids.TAG_PATTERN` (envd imports nothing
# outside itself; a unit test keeps the two equal). Tags travel in host-agent URLs.
TAG_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_TAG = re.compile(TAG_PATTERN)
# How often a waiting stream wakes to notice a departed client or a passed deadline.
_TICK_S = 0.5
# How long a Start stream waits for the end event after its deadline killed the process.
_KILL_GRACE_S = 5.0

_SIGNALS = {
    "SIGNAL_SIGKILL": signal.SIGKILL,
    "SIGNAL_SIGTERM": signal.SIGTERM,
    9: signal.SIGKILL,
    15: signal.SIGTERM,
}


class ProcessService:
    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.table = ProcessTable(state.config.finished_retention_s)

    # -- streams -------------------------------------------------------------------------
    def start(self, ctx: RequestContext, msg: JSONObject, sender: StreamSender) -> None:
        config = _obj(msg, "process")
        if not config.get("cmd"):
            raise invalid_argument("invalid: process.cmd is required")
        spec = ProcessSpec(
            cmd=_str(config, "cmd"),
            args=tuple(_str_list(config, "args")),
            envs=_str_map(config, "envs"),
            cwd=config.get("cwd") if isinstance(config.get("cwd"), str) else None,
        )
        tag = _tag(msg.get("tag"))
        pty = _pty_size(msg.get("pty"))
        stdin = msg.get("stdin", True) is not False
        user = ctx.user()
        defaults = self.state.defaults
        if spec.cwd:
            cwd = resolve_path(spec.cwd, user, defaults.workdir)
        else:
            # An implicit cwd that is gone (e.g. nobody's /nonexistent home) is not the
            # caller's mistake: fall back to / rather than refuse the command.
            cwd = defaults.workdir or user.home
            if not os.path.isdir(cwd):
                cwd = "/"
        if tag:
            self.table.ensure_tag_free(tag)
        proc = spawn(
            spec,
            user=user,
            env=child_environment(user, defaults.env_vars, spec.envs),
            cwd=cwd,
            pty_size=pty,
            stdin=stdin,
            tag=tag or None,
            backlog_bytes=self.state.config.output_backlog_bytes,
        )
        self.table.add(proc)
        remaining = ctx.remaining()
        if remaining is not None:
            proc.kill_at(remaining)
        sender.send({"event": {"start": {"pid": proc.pid}}})
        self._follow(ctx, proc, sender, cursor=0, kills_at_deadline=True)

    def connect(self, ctx: RequestContext, msg: JSONObject, sender: StreamSender) -> None:
        proc = self._select(msg, finished=True)
        sender.send({"event": {"start": {"pid": proc.pid}}})
        # Replay what nobody has received yet, then follow live output.
        self._follow(ctx, proc, sender, cursor=proc.log.delivered)

    def _follow(
        self,
        ctx: RequestContext,
        proc: ManagedProcess,
        sender: StreamSender,
        *,
        cursor: int,
        kills_at_deadline: bool = False,
    ) -> None:
        reader = proc.log.attach(cursor)
        try:
            self._pump_events(ctx, proc, sender, reader, cursor, kills_at_deadline)
        finally:
            proc.log.detach(reader)

    def _pump_events(
        self,
        ctx: RequestContext,
        proc: ManagedProcess,
        sender: StreamSender,
        reader: int,
        cursor: int,
        kills_at_deadline: bool,
    ) -> None:
        interval = ctx.keepalive_interval
        last_sent = time.monotonic()
        while True:
            wait = min(_TICK_S, max(interval - (time.monotonic() - last_sent), 0.0))
            remaining = ctx.remaining()
            # A Start stream's deadline kills the process: wait (briefly) for its end
            # event, so the client learns how it ended. Other streams just stop.
            grace = _KILL_GRACE_S if kills_at_deadline else 0.0
            if remaining is not None:
                if remaining + grace <= 0 and proc.running:
                    raise ConnectError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
                if remaining > 0:
                    wait = min(wait, remaining)
            result = proc.log.read(cursor, wait)
            if result.chunks and sender.client_gone():
                return  # detached: keep the output for whoever attaches next
            for chunk in result.chunks:
                data = base64.b64encode(chunk.data).decode()
                sender.send({"event": {"data": {chunk.stream: data}}})
            if result.chunks:
                cursor = result.cursor
                proc.log.advance(reader, cursor)
                last_sent = time.monotonic()
            if result.closed and not result.chunks:
                info = proc.exit_info
                if info is not None:
                    sender.send({"event": {"end": info.to_json()}})
                    return
            if not result.chunks:
                if time.monotonic() - last_sent >= interval:
                    sender.send({"event": {"keepalive": {}}})
                    last_sent = time.monotonic()
                elif sender.client_gone():
                    return  # detached: the process runs on, its output is kept

    # -- unary ---------------------------------------------------------------------------
    def list(self, ctx: RequestContext, msg: JSONObject) -> JSONObject:
        processes = []
        for proc in sorted(self.table.running(), key=lambda p: p.pid):
            info: dict[str, Any] = {"config": proc.spec.to_json(), "pid": proc.pid}
            if proc.tag is not None:
                info["tag"] = proc.tag
            processes.append(info)
        return {"processes": processes}

    def send_input(self, ctx: RequestContext, msg: JSONObject) -> JSONObject:
        proc = self._select(msg)
        self._write_input(proc, _obj(msg, "input"))
        return {}

    def stream_input(self, ctx: RequestContext, messages: Iterator[JSONObject]) -> JSONObject:
        proc: ManagedProcess | None = None
        for msg in messages:
            if "start" in msg:
                proc = self._select(_obj(msg, "start"))
            elif "data" in msg:
                if proc is None:
                    raise invalid_argument("invalid: StreamInput must begin with start")
                self._write_input(proc, _obj(_obj(msg, "data"), "input"))
            # keepalive messages need no answer
        return {}

    def send_signal(self, ctx: RequestContext, msg: JSONObject) -> JSONObject:
        proc = self._select(msg)
        raw = msg.get("signal")
        signum = _SIGNALS.get(raw) if isinstance(raw, str | int) else None
        if signum is None:
            raise invalid_argument(f"invalid: signal {raw!r}; use SIGNAL_SIGKILL or SIGNAL_SIGTERM")
        proc.send_signal(signum)
        return {}

    def close_stdin(self, ctx: RequestContext, msg: JSONObject) -> JSONObject:
        self._select(msg).close_stdin()
        return {}

    def update(self, ctx: RequestContext, msg: JSONObject) -> JSONObject:
        proc = self._select(msg)
        size = _pty_size(msg.get("pty"))
        if size is not None:
            proc.resize(size)
        return {}

    # -- helpers -------------------------------------------------------------------------
    def _select(self, msg: JSONObject, *, finished: bool = False) -> ManagedProcess:
        selector = _obj(msg, "process")
        pid = selector.get("pid")
        tag = selector.get("tag")
        if pid not in (None, "", 0):
            try:
                return self.table.find(pid=int(pid), tag=None, finished=finished)
            except (TypeError, ValueError):
                raise invalid_argument(f"invalid: pid {pid!r}") from None
        if tag not in (None, ""):
            return self.table.find(pid=None, tag=_tag(tag), finished=finished)
        raise invalid_argument("invalid: process selector needs a pid or a tag")

    @staticmethod
    def _write_input(proc: ManagedProcess, data: JSONObject) -> None:
        if "stdin" in data:
            proc.write_stdin(_b64(data["stdin"]))
        elif "pty" in data:
            proc.write_pty(_b64(data["pty"]))
        else:
            raise invalid_argument("invalid: input needs stdin or pty bytes")


def register(router: Router, state: AgentState) -> None:
    service = ProcessService(state)
    router.add_server_stream(SERVICE + "Start", service.start)
    router.add_server_stream(SERVICE + "Connect", service.connect)
    router.add_unary(SERVICE + "List", service.list)
    router.add_unary(SERVICE + "SendInput", service.send_input)
    router.add_client_stream(SERVICE + "StreamInput", service.stream_input)
    router.add_unary(SERVICE + "SendSignal", service.send_signal)
    router.add_unary(SERVICE + "CloseStdin", service.close_stdin)
    router.add_unary(SERVICE + "Update", service.update)


# -- proto3 JSON field readers: missing means default, wrong type means invalid_argument --
def _obj(msg: JSONObject, key: str) -> JSONObject:
    value = msg.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid_argument(f"invalid: {key} must be an object")
    return value


def _str(msg: JSONObject, key: str) -> str:
    value = msg.get(key, "")
    if not isinstance(value, str):
        raise invalid_argument(f"invalid: {key} must be a string")
    return value


def _str_list(msg: JSONObject, key: str) -> list[str]:
    value = msg.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid_argument(f"invalid: {key} must be a list of strings")
    return value


def _str_map(msg: JSONObject, key: str) -> dict[str, str]:
    value = msg.get(key) or {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise invalid_argument(f"invalid: {key} must map strings to strings")
    return value


def _tag(value: object) -> str | None:
    """A process tag, or None for none; anything but a well-formed tag is invalid."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or _TAG.fullmatch(value) is None:
        shown = repr(value)[:80]
        raise invalid_argument(f"invalid: tag {shown}: use 1..128 of A-Z a-z 0-9 . _ -")
    return value


def _pty_size(value: object) -> PtySize | None:
    if not isinstance(value, dict):
        return None
    size = value.get("size") or {}
    if not isinstance(size, dict):
        raise invalid_argument("invalid: pty.size must be an object")
    try:
        cols, rows = int(size.get("cols") or 80), int(size.get("rows") or 24)
    except (TypeError, ValueError):
        raise invalid_argument(f"invalid: pty size {size!r}") from None
    if not (0 < cols <= 4096 and 0 < rows <= 4096):
        raise invalid_argument(f"invalid: pty size {cols}x{rows} is outside 1..4096")
    return PtySize(cols=cols, rows=rows)


def _b64(value: object) -> bytes:
    if not isinstance(value, str):
        raise invalid_argument("invalid: bytes must be a base64 string")
    try:
        text = value.replace("-", "+").replace("_", "/")  # accept URL-safe too
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("invalid: bytes are not base64") from None
