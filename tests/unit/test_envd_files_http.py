"""GET/POST /files against a real agent on loopback: both upload forms, gzip, metadata,
ownership, limits, errors, signed URLs, and a 50 MB round trip that must not grow RSS."""

from __future__ import annotations

import dataclasses
import errno
import gzip
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pywrenn.envd import fserrors, signatures, upload
from pywrenn.envd.server import AgentServer


@pytest.fixture
def http(envd_server: AgentServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{envd_server.port}", timeout=60) as client:
        yield client


def octet(http: httpx.Client, path: str, data: object, **kw: object) -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream", **kw.pop("headers", {})}  # type: ignore[dict-item]
    params = {"path": path, **kw.pop("params", {})}  # type: ignore[dict-item]
    return http.post("/files", content=data, headers=headers, params=params)  # type: ignore[arg-type]


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(upload.TEMP_PREFIX)]


# -- download ---------------------------------------------------------------------------
def test_download_bytes(http: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"\x00\x01hello\xff")
    resp = http.get("/files", params={"path": str(tmp_path / "f.bin")})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/octet-stream"
    assert resp.content == b"\x00\x01hello\xff"


def test_download_empty_and_proc_files(http: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    assert http.get("/files", params={"path": str(tmp_path / "empty")}).content == b""
    # procfs reports size 0 but has content: it is sent chunked.
    assert b"VmRSS" in http.get("/files", params={"path": "/proc/self/status"}).content


def test_download_relative_to_workdir(
    envd_server: AgentServer, http: httpx.Client, tmp_path: Path
) -> None:
    (tmp_path / "rel.txt").write_text("relative")
    envd_server.state.update(workdir=str(tmp_path))
    assert http.get("/files", params={"path": "rel.txt"}).text == "relative"


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"path": "/definitely/not/here"}, 404),
        ({"path": "/"}, 400),
        ({"path": "/dev/null"}, 400),
        ({}, 400),
        ({"path": "/etc/hostname", "username": "no-such-user-x"}, 401),
    ],
)
def test_download_errors(http: httpx.Client, params: dict[str, str], status: int) -> None:
    resp = http.get("/files", params=params)
    assert resp.status_code == status
    body = resp.json()
    assert body["code"] == status
    assert body["message"]


# -- upload: octet-stream ---------------------------------------------------------------
def test_octet_upload_creates_parents_owned_by_user(http: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "a.txt"
    resp = octet(http, str(target), b"payload", params={"username": "nobody"})
    assert resp.status_code == 200
    assert resp.json() == [{"name": "a.txt", "type": "file", "path": str(target)}]
    assert target.read_bytes() == b"payload"
    assert target.stat().st_uid == 65534
    assert stat_mode(target) == 0o644
    assert (tmp_path / "new").stat().st_uid == 65534
    assert tmp_path.stat().st_uid == 0
    assert leftovers(target.parent) == []


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_octet_upload_overwrites_keeping_mode(http: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "script.sh"
    target.write_text("old contents that are longer")
    target.chmod(0o755)
    assert octet(http, str(target), b"new").status_code == 200
    assert target.read_bytes() == b"new"
    assert stat_mode(target) == 0o755


def test_octet_upload_through_symlink_writes_target(http: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("old")
    (tmp_path / "link.txt").symlink_to("real.txt")
    assert octet(http, str(tmp_path / "link.txt"), b"new").status_code == 200
    assert (tmp_path / "link.txt").is_symlink()
    assert (tmp_path / "real.txt").read_text() == "new"


def test_octet_upload_chunked_gzip(http: httpx.Client, tmp_path: Path) -> None:
    data = os.urandom(300_000) + b"tail" * 100_000
    packed = gzip.compress(data)
    # Two gzip members back to back, sent in awkward chunks: both must be unpacked.
    packed += gzip.compress(b"second member")
    chunks = (packed[i : i + 7777] for i in range(0, len(packed), 7777))
    resp = octet(http, str(tmp_path / "g.bin"), chunks, headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 200, resp.text
    assert (tmp_path / "g.bin").read_bytes() == data + b"second member"


def test_bad_gzip_is_400_and_leaves_nothing(http: httpx.Client, tmp_path: Path) -> None:
    for body in (b"not gzip at all", gzip.compress(b"x" * 10000)[:-20]):
        resp = octet(http, str(tmp_path / "bad"), body, headers={"Content-Encoding": "gzip"})
        assert resp.status_code == 400, resp.text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("headers", "params", "status"),
    [
        ({"Content-Type": "text/plain"}, {"path": "x"}, 400),
        ({"Content-Type": "application/octet-stream"}, {}, 400),
        (
            {"Content-Type": "application/octet-stream", "Content-Encoding": "br"},
            {"path": "x"},
            400,
        ),
        ({"Content-Type": "multipart/form-data"}, {"path": "x"}, 400),
        ({"Content-Type": "application/octet-stream"}, {"path": "x", "username": "nope-x"}, 401),
    ],
)
def test_upload_request_errors(
    http: httpx.Client,
    tmp_path: Path,
    headers: dict[str, str],
    params: dict[str, str],
    status: int,
) -> None:
    if "path" in params:
        params = {**params, "path": str(tmp_path / params["path"])}
    resp = http.post("/files", content=b"data", headers=headers, params=params)
    assert resp.status_code == status, resp.text
    assert resp.json()["code"] == status
    assert list(tmp_path.iterdir()) == []


def test_upload_onto_directory_is_400(http: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    resp = octet(http, str(tmp_path / "d"), b"x")
    assert resp.status_code == 400
    assert (tmp_path / "d").is_dir()
    assert octet(http, str(tmp_path / "d" / "f"), b"x").status_code == 200


def test_upload_under_a_file_is_400(http: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert octet(http, str(tmp_path / "f" / "g"), b"x").status_code == 400


def test_upload_permission_denied_is_403(http: httpx.Client) -> None:
    resp = octet(http, "/sys/kernel/wrenn-test-upload", b"x")
    assert resp.status_code == 403
    assert "permission denied" in resp.json()["message"]


def test_enospc_is_507(http: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(upload, "_copy", full)
    resp = octet(http, str(tmp_path / "big"), b"x")
    assert resp.status_code == 507
    assert leftovers(tmp_path) == []
    assert fserrors.to_http(OSError(errno.EDQUOT, "quota"), "write", "/x").status == 507


def test_upload_limit_is_413(envd_server: AgentServer, http: httpx.Client, tmp_path: Path) -> None:
    state = envd_server.state
    state.config = dataclasses.replace(state.config, max_upload_bytes=1000)
    assert octet(http, str(tmp_path / "ok"), b"x" * 1000).status_code == 200
    assert octet(http, str(tmp_path / "big"), b"x" * 1001).status_code == 413
    chunked = (b"x" * 300 for _ in range(4))
    assert octet(http, str(tmp_path / "big"), chunked).status_code == 413
    bomb = gzip.compress(b"\0" * 1_000_000)
    resp = octet(http, str(tmp_path / "big"), bomb, headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 413
    files = [("file", ("a", b"x" * 600, "text/plain")), ("file", ("b", b"x" * 600, "text/plain"))]
    envd_server.state.update(workdir=str(tmp_path))
    assert http.post("/files", files=files).status_code == 413
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]


def test_cut_off_upload_leaves_no_file(envd_server: AgentServer, tmp_path: Path) -> None:
    target = tmp_path / "partial.bin"
    target.write_bytes(b"previous")
    with socket.create_connection(("127.0.0.1", envd_server.port)) as sock:
        sock.sendall(
            f"POST /files?path={target} HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n".encode()
            + b"only a little"
        )
        sock.shutdown(socket.SHUT_WR)
        sock.recv(4096)
    deadline = time.monotonic() + 5
    while leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert leftovers(tmp_path) == []
    assert target.read_bytes() == b"previous"


# -- upload: multipart ------------------------------------------------------------------
def test_multipart_single_file_path_param_wins(http: httpx.Client, tmp_path: Path) -> None:
    files = [("file", ("ignored-name.txt", b"hello", "text/plain"))]
    resp = http.post("/files", files=files, params={"path": str(tmp_path / "chosen.txt")})
    assert resp.status_code == 200
    assert resp.json() == [
        {"name": "chosen.txt", "type": "file", "path": str(tmp_path / "chosen.txt")}
    ]
    assert (tmp_path / "chosen.txt").read_text() == "hello"


def test_multipart_many_files_by_filename(http: httpx.Client, tmp_path: Path) -> None:
    files = [
        ("file", (str(tmp_path / "one.txt"), b"1", "text/plain")),
        ("other", ("ignored", b"nope", "text/plain")),
        ("file", (str(tmp_path / "sub" / "two.bin"), b"\x00\x02", "application/octet-stream")),
    ]
    resp = http.post(
        "/files", files=files, data={"field": "ignored"}, params={"username": "nobody"}
    )
    assert resp.status_code == 200
    assert [e["path"] for e in resp.json()] == [
        str(tmp_path / "one.txt"),
        str(tmp_path / "sub" / "two.bin"),
    ]
    assert (tmp_path / "sub" / "two.bin").read_bytes() == b"\x00\x02"
    assert (tmp_path / "sub" / "two.bin").stat().st_uid == 65534
    assert not (tmp_path / "ignored").exists()


def test_multipart_duplicate_path_is_400(http: httpx.Client, tmp_path: Path) -> None:
    path = str(tmp_path / "dup.txt")
    files = [("file", (path, b"1", "text/plain")), ("file", (path, b"2", "text/plain"))]
    resp = http.post("/files", files=files)
    assert resp.status_code == 400
    assert "twice" in resp.json()["message"]


def test_multipart_without_file_part_is_400(http: httpx.Client, tmp_path: Path) -> None:
    resp = http.post(
        "/files",
        files=[("upload", ("x", b"1", "text/plain"))],
        params={"path": str(tmp_path / "x")},
    )
    assert resp.status_code == 400


# -- metadata ---------------------------------------------------------------------------
def test_metadata_headers_become_xattrs_and_replace(http: httpx.Client, tmp_path: Path) -> None:
    target = tmp_path / "m.txt"
    resp = octet(
        http, str(target), b"1", headers={"X-Metadata-Team": "blue", "X-Metadata-Run": "7"}
    )
    assert resp.status_code == 200
    assert os.getxattr(target, "user.e2b.team") == b"blue"
    assert os.getxattr(target, "user.e2b.run") == b"7"
    # Without metadata headers an overwrite keeps what was there ...
    assert octet(http, str(target), b"2").status_code == 200
    assert os.getxattr(target, "user.e2b.team") == b"blue"
    # ... and with them, the new set replaces the old one whole.
    files = [("file", ("m.txt", b"3", "text/plain"))]
    resp = http.post(
        "/files", files=files, params={"path": str(target)}, headers={"X-Metadata-Owner": "me"}
    )
    assert resp.status_code == 200
    names = [n for n in os.listxattr(target) if n.startswith("user.e2b.")]
    assert names == ["user.e2b.owner"]


def test_non_printable_metadata_is_400(envd_server: AgentServer, tmp_path: Path) -> None:
    with socket.create_connection(("127.0.0.1", envd_server.port)) as sock:
        sock.sendall(
            f"POST /files?path={tmp_path / 'm'} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 1\r\n".encode()
            + b"X-Metadata-Bad: caf\xc3\xa9\r\n\r\nx"
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    assert not (tmp_path / "m").exists()


# -- the token gate and signed URLs -----------------------------------------------------
def test_token_gate_and_signatures(
    envd_server: AgentServer, http: httpx.Client, tmp_path: Path
) -> None:
    from e2b.sandbox.signature import get_signature

    envd_server.state.update(access_token="s3cret")
    path = str(tmp_path / "signed.txt")
    assert octet(http, path, b"x").status_code == 401
    assert octet(http, path, b"x", headers={"X-Access-Token": "wrong"}).status_code == 401
    assert octet(http, path, b"x", headers={"X-Access-Token": "s3cret"}).status_code == 200

    sdk = get_signature(path, "read", None, "s3cret")
    assert sdk["signature"] == signatures.sign(path, "read", "", "s3cret")
    assert http.get("/files", params={"path": path, "signature": sdk["signature"]}).text == "x"

    write_sig = signatures.sign(path, "write", "", "s3cret")
    # A write signature does not read, and a read signature does not write.
    assert http.get("/files", params={"path": path, "signature": write_sig}).status_code == 401
    read_params = {"signature": sdk["signature"]}
    assert octet(http, path, b"y", params=read_params).status_code == 401
    assert octet(http, path, b"y", params={"signature": write_sig}).status_code == 200

    as_nobody = get_signature(path, "read", "nobody", "s3cret", 60)
    params = {
        "path": path,
        "username": "nobody",
        "signature": as_nobody["signature"],
        "signature_expiration": str(as_nobody["expiration"]),
    }
    assert http.get("/files", params=params).text == "y"
    assert http.get("/files", params={**params, "username": ""}).status_code == 401
    assert http.get("/files", params={**params, "signature_expiration": "1"}).status_code == 401

    past = int(time.time()) - 10
    expired = signatures.sign(path, "read", "", "s3cret", past)
    params = {"path": path, "signature": expired, "signature_expiration": str(past)}
    resp = http.get("/files", params=params)
    assert resp.status_code == 401
    assert "expired" in resp.json()["message"]


# -- large files stay out of memory -----------------------------------------------------
def vm_rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


SIZE = 50 * 1024 * 1024


def blocks() -> Iterator[bytes]:
    block = hashlib.sha256(b"seed").digest() * (65536 // 32)
    for i in range(SIZE // len(block)):
        yield block[i % 64 :] + block[: i % 64]


def test_fifty_megabytes_up_and_down_without_growing_rss(
    http: httpx.Client, tmp_path: Path
) -> None:
    expected = hashlib.sha256()
    for block in blocks():
        expected.update(block)
    target = tmp_path / "big.bin"
    octet(http, str(tmp_path / "warmup"), b"w" * 1_000_000)  # first-use allocations
    before = vm_rss_kb()

    resp = octet(http, str(target), blocks())
    assert resp.status_code == 200
    files = [("file", ("big2.bin", open(target, "rb"), "application/octet-stream"))]  # noqa: SIM115
    resp = http.post("/files", files=files, params={"path": str(tmp_path / "big2.bin")})
    files[0][1][1].close()
    assert resp.status_code == 200
    got = hashlib.sha256()
    with http.stream("GET", "/files", params={"path": str(tmp_path / "big2.bin")}) as stream:
        assert stream.headers["content-length"] == str(SIZE)
        for chunk in stream.iter_raw(1 << 20):
            got.update(chunk)

    grown_mb = (vm_rss_kb() - before) / 1024
    assert got.hexdigest() == expected.hexdigest()
    assert target.stat().st_size == SIZE
    assert grown_mb < 8, f"RSS grew by {grown_mb:.1f} MB moving 3 x 50 MB"
