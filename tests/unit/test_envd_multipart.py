"""The streaming multipart/form-data reader: boundaries split anywhere, headers, bad bodies."""

from __future__ import annotations

import io
import random

import httpx
import pytest

from pywrenn.envd.multipart import (
    MultipartError,
    MultipartReader,
    boundary_from_content_type,
    parse_header_params,
)


class Trickle:
    """A source that hands out at most `step` bytes per read, to split every boundary."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = io.BytesIO(data)
        self._step = step

    def read(self, size: int = -1, /) -> bytes:
        return self._data.read(min(self._step, size if size >= 0 else self._step))


def httpx_form(files: list[tuple[str, tuple[str, bytes, str]]], data: dict[str, str] | None = None):
    request = httpx.Request("POST", "http://x/files", files=files, data=data)
    return request.read(), request.headers["content-type"]


def read_all(reader: MultipartReader) -> list[tuple[str, str | None, bytes]]:
    out = []
    for part in reader:
        chunks = []
        while chunk := part.read(7):
            chunks.append(chunk)
        out.append((part.name, part.filename, b"".join(chunks)))
    return out


@pytest.mark.parametrize("step", [1, 2, 3, 5, 17, 64, 4096, 1 << 20])
def test_parts_survive_any_read_size(step: int) -> None:
    payload = bytes(random.Random(step).randrange(256) for _ in range(3000))
    payload += b"\r\n--almost-a-boundary\r\n"
    body, content_type = httpx_form(
        [
            ("file", ("/home/user/a.bin", payload, "application/octet-stream")),
            ("file", ("b.txt", b"", "text/plain")),
        ],
        data={"note": "ignored"},
    )
    reader = MultipartReader(Trickle(body, step), boundary_from_content_type(content_type))
    parts = read_all(reader)
    assert ("note", None, b"ignored") in parts
    assert ("file", "/home/user/a.bin", payload) in parts
    assert ("file", "b.txt", b"") in parts


def test_unread_parts_are_skipped() -> None:
    body, content_type = httpx_form(
        [("file", ("one", b"1" * 100_000, "text/plain")), ("file", ("two", b"22", "text/plain"))]
    )
    reader = MultipartReader(io.BytesIO(body), boundary_from_content_type(content_type))
    first = reader.next_part()
    assert first is not None and first.filename == "one"
    second = reader.next_part()
    assert second is not None and second.filename == "two"
    assert second.read() == b"22"
    assert first.read() == b""  # a part left behind reads as empty
    assert reader.next_part() is None


def test_hand_written_body_with_preamble_and_padding() -> None:
    body = (
        b"preamble text\r\n"
        b"--XyZ  \r\n"
        b'Content-Disposition: form-data; name="file"; filename="quo\\"te.txt"\r\n'
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"hello\r\n"
        b"--XyZ--\r\n"
        b"epilogue"
    )
    parts = list(MultipartReader(io.BytesIO(body), "XyZ"))
    assert len(parts) == 1
    assert parts[0].filename == 'quo"te.txt'
    assert parts[0].content_type == "text/plain"


def test_header_params() -> None:
    kind, params = parse_header_params(
        'form-data; name="file"; filename="a b.txt"; filename*=UTF-8\'\'%C3%A9t%C3%A9.txt'
    )
    assert kind == "form-data"
    assert params == {"name": "file", "filename": "été.txt"}
    assert boundary_from_content_type('multipart/form-data; boundary="a:b"') == "a:b"
    with pytest.raises(MultipartError):
        boundary_from_content_type("multipart/form-data")


@pytest.mark.parametrize(
    "body",
    [
        b"no boundary here at all",
        b"--B\r\nContent-Disposition: form-data; name=file\r\n\r\ntruncated",
        b"--B\r\nContent-Disposition: form-data; name=file",
        b"--Bjunk\r\n",
        b"--B\r\nnot a header line\r\n\r\nx\r\n--B--",
        b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--",
    ],
)
def test_malformed_bodies_raise(body: bytes) -> None:
    with pytest.raises(MultipartError):
        read_all(MultipartReader(io.BytesIO(body), "B"))


def test_huge_header_block_is_refused() -> None:
    body = b"--B\r\nX-Long: " + b"a" * 40_000 + b"\r\n\r\nx\r\n--B--"
    with pytest.raises(MultipartError):
        read_all(MultipartReader(io.BytesIO(body), "B"))
