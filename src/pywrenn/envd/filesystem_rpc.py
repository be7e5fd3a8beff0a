"""The `filesystem.Filesystem` service: Stat, ListDir, MakeDir, Move and Remove.

Owns: those five unary RPCs and reading their requests (paths are resolved against the
calling user's home or /init's workdir). Watching lives in `watch_rpc.py`, which this
module registers too. The agent does the work as itself (root in the guest) and gives
what it creates to the calling user, as envd does.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from typing import Any

from pywrenn.envd import fserrors, ownership, watch_rpc
from pywrenn.envd.entryinfo import entry_info
from pywrenn.envd.errors import Code, ConnectError, invalid_argument
from pywrenn.envd.routing import JSONObject, RequestContext, Router
from pywrenn.envd.state import AgentState
from pywrenn.envd.users import resolve_path

SERVICE = "/filesystem.Filesystem/"


def register(router: Router, state: AgentState) -> None:
    del state  # every handler reads the live state from its request
    router.add_unary(SERVICE + "Stat", stat_entry)
    router.add_unary(SERVICE + "ListDir", list_dir)
    router.add_unary(SERVICE + "MakeDir", make_dir)
    router.add_unary(SERVICE + "Move", move)
    router.add_unary(SERVICE + "Remove", remove)
    watch_rpc.register(router)


def request_path(ctx: RequestContext, message: JSONObject, key: str = "path") -> str:
    """The absolute path named by `message[key]`, for the calling user."""
    raw = message.get(key)
    if raw is None or raw == "":
        raise invalid_argument(f"invalid: {key} is required")
    if not isinstance(raw, str) or "\0" in raw:
        raise invalid_argument(f"invalid: {key} must be a path string, got {raw!r}")
    return resolve_path(raw, ctx.user(), ctx.state.defaults.workdir)


def stat_entry(ctx: RequestContext, message: JSONObject) -> JSONObject:
    path = request_path(ctx, message)
    try:
        return {"entry": entry_info(path)}
    except OSError as exc:
        raise fserrors.to_connect(exc, "stat", path) from exc


def list_dir(ctx: RequestContext, message: JSONObject) -> JSONObject:
    path = request_path(ctx, message)
    depth = _depth(message.get("depth"))
    try:
        # The directory asked for may itself be a link; nothing below it is followed.
        root = os.path.realpath(path)
        if not stat.S_ISDIR(os.stat(root).st_mode):
            raise invalid_argument(f"invalid: {path} is not a directory")
        entries: list[dict[str, Any]] = []
        _walk(root, depth, entries, top=True)
    except OSError as exc:
        raise fserrors.to_connect(exc, "list", path) from exc
    return {"entries": entries}


def _depth(value: object) -> int:
    if value is None:
        return 1
    try:
        depth = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise invalid_argument(f"invalid: depth {value!r} is not a number") from None
    if depth < 0:
        raise invalid_argument(f"invalid: depth {depth} is negative")
    return depth or 1  # envd treats 0 as 1


def _walk(directory: str, depth: int, out: list[dict[str, Any]], *, top: bool) -> None:
    """Pre-order, name-sorted listing down to `depth` levels; unreadable subtrees are skipped."""
    try:
        with os.scandir(directory) as scan:
            children = sorted(scan, key=lambda e: e.name)
    except OSError:
        if top:
            raise
        return
    for child in children:
        try:
            st = child.stat(follow_symlinks=False)
        except OSError:
            continue  # vanished while we looked
        out.append(entry_info(child.path, st))
        if depth > 1 and stat.S_ISDIR(st.st_mode):
            _walk(child.path, depth - 1, out, top=False)


def make_dir(ctx: RequestContext, message: JSONObject) -> JSONObject:
    path = request_path(ctx, message)
    user = ctx.user()
    try:
        if os.path.lexists(path) and not os.path.isdir(path):
            raise invalid_argument(f"invalid: {path} exists and is not a directory")
        if not ownership.makedirs(path, user):
            raise ConnectError(Code.ALREADY_EXISTS, f"directory {path} already exists")
        return {"entry": entry_info(path)}
    except OSError as exc:
        raise fserrors.to_connect(exc, "make directory", path) from exc


def move(ctx: RequestContext, message: JSONObject) -> JSONObject:
    source = request_path(ctx, message, "source")
    destination = request_path(ctx, message, "destination")
    user = ctx.user()
    try:
        os.lstat(source)
    except OSError as exc:
        raise fserrors.to_connect(exc, "move", source) from exc
    try:
        ownership.makedirs(os.path.dirname(destination), user)
        try:
            os.rename(source, destination)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Across filesystems rename cannot work; copy and delete, as `mv` does.
            shutil.move(source, destination)
        return {"entry": entry_info(destination)}
    except OSError as exc:
        raise fserrors.to_connect(exc, "move to", destination) from exc


def remove(ctx: RequestContext, message: JSONObject) -> JSONObject:
    path = request_path(ctx, message)
    if path == "/":
        raise invalid_argument("invalid: refusing to remove /")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {}  # envd's os.RemoveAll: removing what is not there succeeds
    except OSError as exc:
        raise fserrors.to_connect(exc, "remove", path) from exc
    try:
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
            return {}
        # Something else may delete parts of the tree while we do: rmtree stops at the
        # first entry that vanished, so try again until nothing is left.
        for _ in range(5):
            try:
                shutil.rmtree(path)
                return {}
            except FileNotFoundError:
                if not os.path.lexists(path):
                    return {}
        shutil.rmtree(path)
    except FileNotFoundError:
        pass  # removed concurrently: the result is what was asked for
    except OSError as exc:
        raise fserrors.to_connect(exc, "remove", path) from exc
    return {}
