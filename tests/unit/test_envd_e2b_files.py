"""The unmodified `e2b` SDK (2.63.0) driving the agent's filesystem and /files endpoints.

Debug mode points the SDK straight at the agent with no control plane; the explicit
constructor adds an access token and a real envd version, as a production capsule would.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    FilesystemEventType,
    FileType,
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
)
from e2b.connection_config import ConnectionConfig
from packaging.version import Version

from pywrenn.envd.server import AgentServer

TOKEN = "e2b-test-token"


@pytest.fixture
def sbx(envd_server: AgentServer) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(debug=True, sandbox_url=f"http://127.0.0.1:{envd_server.port}")
    yield sandbox


@pytest.fixture
def secured(envd_server: AgentServer) -> Sandbox:
    envd_server.state.update(access_token=TOKEN)
    config = ConnectionConfig(
        sandbox_url=f"http://127.0.0.1:{envd_server.port}",
        extra_sandbox_headers={"X-Access-Token": TOKEN},
        api_key="e2b_unused",
    )
    return Sandbox(
        sandbox_id="wrenn-test",
        sandbox_domain="localhost",
        envd_version=Version("0.6.4"),
        envd_access_token=TOKEN,
        connection_config=config,
    )


def test_write_read_in_every_format(sbx: Sandbox, tmp_path: Path) -> None:
    path = str(tmp_path / "dir" / "hello.txt")
    info = sbx.files.write(path, "héllo")
    assert (info.name, info.type, info.path) == ("hello.txt", FileType.FILE, path)
    assert sbx.files.read(path) == "héllo"
    assert bytes(sbx.files.read(path, format="bytes")) == "héllo".encode()
    assert b"".join(sbx.files.read(path, format="stream")) == "héllo".encode()
    sbx.files.write(path, b"\x00\x01binary")
    assert bytes(sbx.files.read(path, format="bytes")) == b"\x00\x01binary"


def test_octet_stream_and_gzip_uploads(sbx: Sandbox, tmp_path: Path) -> None:
    sbx.files.write(str(tmp_path / "fileobj.bin"), io.BytesIO(b"from a file object"))
    assert (tmp_path / "fileobj.bin").read_bytes() == b"from a file object"
    sbx.files.write(str(tmp_path / "gz.txt"), "zipped " * 1000, gzip=True)
    assert (tmp_path / "gz.txt").read_text() == "zipped " * 1000
    sbx.files.write(str(tmp_path / "iter.bin"), iter([b"a" * 70_000, b"b" * 5]))
    assert (tmp_path / "iter.bin").read_bytes() == b"a" * 70_000 + b"b" * 5
    assert sbx.files.read(str(tmp_path / "gz.txt"), gzip=True) == "zipped " * 1000


def test_write_files_and_metadata(sbx: Sandbox, tmp_path: Path) -> None:
    infos = sbx.files.write_files(
        [
            {"path": str(tmp_path / "a.txt"), "data": "A"},
            {"path": str(tmp_path / "sub" / "b.txt"), "data": b"B"},
        ],
        metadata={"Team": "blue"},
    )
    assert [i.path for i in infos] == [str(tmp_path / "a.txt"), str(tmp_path / "sub" / "b.txt")]
    assert sbx.files.get_info(str(tmp_path / "sub" / "b.txt")).metadata == {"team": "blue"}
    with pytest.raises(InvalidArgumentException):
        sbx.files.write(str(tmp_path / "c.txt"), "C", metadata={"bad key": "v"})


def test_list_make_dir_rename_remove_exists(sbx: Sandbox, tmp_path: Path) -> None:
    root = str(tmp_path / "work")
    assert sbx.files.make_dir(root + "/x/y") is True
    assert sbx.files.make_dir(root + "/x/y") is False
    sbx.files.write(root + "/x/y/deep.txt", "d")
    sbx.files.write(root + "/top.txt", "t")
    (tmp_path / "work" / "link").symlink_to(tmp_path / "work" / "top.txt")

    names = {e.name: e for e in sbx.files.list(root)}
    assert set(names) == {"x", "top.txt", "link"}
    assert names["x"].type == FileType.DIR
    assert names["link"].type == FileType.SYMLINK
    assert names["link"].symlink_target == root + "/top.txt"
    assert names["top.txt"].symlink_target is None
    deep = [e.path for e in sbx.files.list(root, depth=3)]
    assert root + "/x/y/deep.txt" in deep

    moved = sbx.files.rename(root + "/top.txt", root + "/moved.txt")
    assert moved.path == root + "/moved.txt"
    assert sbx.files.exists(root + "/moved.txt") is True
    assert sbx.files.exists(root + "/top.txt") is False
    info = sbx.files.get_info(root + "/moved.txt")
    assert (info.size, info.permissions, info.owner) == (1, "-rw-r--r--", "root")
    assert info.modified_time.tzinfo is not None
    assert abs(info.modified_time.timestamp() - time.time()) < 60

    sbx.files.remove(root + "/x")
    assert sbx.files.exists(root + "/x") is False
    sbx.files.remove(root + "/x")  # already gone: still fine


def test_missing_paths_raise_not_found(sbx: Sandbox, tmp_path: Path) -> None:
    with pytest.raises(NotFoundException):
        sbx.files.read(str(tmp_path / "missing"))
    with pytest.raises(NotFoundException):
        sbx.files.get_info(str(tmp_path / "missing"))
    with pytest.raises(NotFoundException):
        sbx.files.list(str(tmp_path / "missing"))
    with pytest.raises(InvalidArgumentException):
        sbx.files.read(str(tmp_path))


def test_as_another_user(sbx: Sandbox, tmp_path: Path) -> None:
    info = sbx.files.write(str(tmp_path / "mine" / "n.txt"), "n", user="nobody")
    assert sbx.files.get_info(info.path).owner == "nobody"
    assert sbx.files.make_dir(str(tmp_path / "nd"), user="nobody") is True
    assert (tmp_path / "nd").stat().st_uid == 65534
    with pytest.raises(AuthenticationException):
        sbx.files.list(str(tmp_path), user="no-such-user-x")


def test_watch_dir_poll(sbx: Sandbox, tmp_path: Path) -> None:
    handle = sbx.files.watch_dir(str(tmp_path), recursive=True, include_entry=True)
    sbx.files.write(str(tmp_path / "w.txt"), "1")
    sbx.files.make_dir(str(tmp_path / "d"))
    sbx.files.write(str(tmp_path / "d" / "inner.txt"), "2")
    sbx.files.remove(str(tmp_path / "w.txt"))
    seen: list[tuple[str, FilesystemEventType]] = []
    deadline = time.monotonic() + 5
    wanted = {
        ("w.txt", FilesystemEventType.WRITE),
        ("d/inner.txt", FilesystemEventType.CREATE),
        ("w.txt", FilesystemEventType.REMOVE),
    }
    entries = {}
    while not wanted <= set(seen) and time.monotonic() < deadline:
        for event in handle.get_new_events():
            seen.append((event.name, event.type))
            if event.entry is not None:
                entries[event.name] = event.entry
        time.sleep(0.05)
    handle.stop()
    assert wanted <= set(seen), seen
    assert entries["d/inner.txt"].path == str(tmp_path / "d" / "inner.txt")


def test_watch_dir_stream_with_the_async_sdk(envd_server: AgentServer, tmp_path: Path) -> None:
    async def scenario() -> list[tuple[str, FilesystemEventType]]:
        url = f"http://127.0.0.1:{envd_server.port}"
        sandbox = await AsyncSandbox.create(debug=True, sandbox_url=url)
        seen: list[tuple[str, FilesystemEventType]] = []
        handle = await sandbox.files.watch_dir(
            str(tmp_path), on_event=lambda e: seen.append((e.name, e.type)), timeout=20
        )
        await sandbox.files.write(str(tmp_path / "s.txt"), "stream")
        for _ in range(100):
            if ("s.txt", FilesystemEventType.WRITE) in seen:
                break
            await asyncio.sleep(0.05)
        await handle.stop()
        return seen

    seen = asyncio.run(scenario())
    assert ("s.txt", FilesystemEventType.CREATE) in seen
    assert ("s.txt", FilesystemEventType.WRITE) in seen


def test_secured_sandbox_with_token_and_signed_urls(secured: Sandbox, tmp_path: Path) -> None:
    path = str(tmp_path / "secure.txt")
    secured.files.write(path, "guarded", metadata={"k": "v"})
    assert secured.files.read(path) == "guarded"
    assert secured.files.get_info(path).metadata == {"k": "v"}

    with httpx.Client(timeout=10) as plain:  # no token header: the signature must carry it
        assert plain.get(secured.download_url(path)).text == "guarded"
        url = secured.upload_url(str(tmp_path / "up.txt"), use_signature_expiration=60)
        assert plain.post(url, files={"file": ("up.txt", b"signed upload")}).status_code == 200
        assert (tmp_path / "up.txt").read_bytes() == b"signed upload"
        unsigned = secured.download_url(path).split("&signature=")[0]
        assert plain.get(unsigned).status_code == 401
