"""routes/files.py and multipart.py against a FakeHostAgent: write, read, list, mkdir, remove."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pywrenn.controlplane.multipart import MultipartError, MultipartStream
from tests.cp_routes import Harness, run

# The database fixtures, and `sqlite_url` for tests where the database does not matter.
pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


def test_write_read_list_mkdir_remove(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        base = f"/api/v1/capsules/{cid}/files"
        r = await h.client.post(
            f"{base}/write",
            data={"path": "/tmp/d/a.txt"},
            files={"file": ("upload", b"hello", "application/octet-stream")},
        )
        assert r.status_code == 200
        assert h.fake.capsules[cid].files["/tmp/d/a.txt"] == b"hello"
        assert (await h.client.post(f"{base}/read", json={"path": "/tmp/d/a.txt"})).content == (
            b"hello"
        )
        stream = await h.client.post(f"{base}/stream/read", json={"path": "/tmp/d/a.txt"})
        assert stream.content == b"hello"
        missing = await h.client.post(f"{base}/read", json={"path": "/nope"})
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")

        listed = (await h.client.post(f"{base}/list", json={"path": "/tmp", "depth": 1})).json()
        assert [(e["name"], e["type"]) for e in listed["entries"]] == [("d", "directory")]
        deep = (await h.client.post(f"{base}/list", json={"path": "/tmp", "depth": 2})).json()
        entry = {e["name"]: e for e in deep["entries"]}["a.txt"]
        assert entry["path"] == "/tmp/d/a.txt" and entry["type"] == "file"
        assert entry["size"] == 5 and entry["modified_at"] == 1767225600
        gone = await h.client.post(f"{base}/list", json={"path": "/absent", "depth": 1})
        assert gone.status_code == 404

        for _ in range(2):  # mkdir -p: an existing directory is success too
            made = await h.client.post(f"{base}/mkdir", json={"path": "/tmp/new"})
            assert made.status_code == 200 and made.json()["entry"]["type"] == "directory"
        assert (
            await h.client.post(f"{base}/remove", json={"path": "/tmp/d/a.txt"})
        ).status_code == 204
        again = await h.client.post(f"{base}/remove", json={"path": "/tmp/d/a.txt"})
        assert again.status_code == 404

    run(sqlite_url, tmp_path, body)


def test_streamed_upload_in_small_chunks(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        boundary = "0123456789abcdef0123456789abcdef"
        payload = bytes(range(256)) * 1000 + b"\r\n--" + boundary.encode()[:10]

        async def chunks() -> AsyncIterator[bytes]:
            whole = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\n'
                    "/big.bin\r\n"
                    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                    'filename="upload.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
                ).encode()
                + payload
                + f"\r\n--{boundary}--\r\n".encode()
            )
            for i in range(0, len(whole), 7919):  # odd sizes: boundaries straddle chunks
                yield whole[i : i + 7919]

        r = await h.client.post(
            f"/api/v1/capsules/{cid}/files/stream/write",
            content=chunks(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert r.status_code == 200, r.text
        assert h.fake.capsules[cid].files["/big.bin"] == payload

    run(sqlite_url, tmp_path, body)


def test_upload_refusals(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        url = f"/api/v1/capsules/{cid}/files/write"
        file_first = await h.client.post(
            url, files={"file": ("upload", b"x"), "path": (None, "/a")}
        )
        assert file_first.status_code == 400
        no_boundary = await h.client.post(url, content=b"x", headers={"Content-Type": "text/plain"})
        assert no_boundary.status_code == 400
        other = {"X-API-Key": await h.other_team_key()}
        foreign = await h.client.post(
            url, data={"path": "/a"}, files={"file": ("upload", b"x")}, headers=other
        )
        assert foreign.status_code == 404

    run(sqlite_url, tmp_path, body)


async def _parts(body: bytes, boundary: str) -> list[tuple[str, bytes]]:
    async def one() -> AsyncIterator[bytes]:
        yield body

    reader = MultipartStream(one(), boundary)
    out = []
    while (part := await reader.next_part()) is not None:
        out.append((part.name, await part.read_small(1 << 20)))
    return out


def test_multipart_reader_edges() -> None:
    body = b'preamble\r\n--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--b--\r\n'
    assert asyncio.run(_parts(body, "b")) == [("a", b"1")]
    skipped = (
        b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\nskip\r\n'
        b"--b\r\n\r\nno headers\r\n--b--"
    )
    assert asyncio.run(_parts(skipped, "b")) == [("x", b"skip"), ("", b"no headers")]
    for broken in (b"no boundary at all", b"--b\r\nContent-Disposition: x\r\n\r\nunterminated"):
        with pytest.raises(MultipartError):
            asyncio.run(_parts(broken, "b"))
