"""Signed file URLs of the unmodified `e2b` SDK (`upload_url`, `download_url`) against a
real node (the node of test_wrenn_sdk.py), through the control plane's port proxy.

The URL under test is the one the SDK builds with its default sandbox URL:
`https://49983-{id}.{domain}/files?path=…&signature=…[&signature_expiration=…]`, with
`domain` from the create answer. There is no TLS front end here, so the request goes
to the control plane's listener over plain HTTP with that URL's host as its `Host`
(what a TLS front end would pass on); nothing else of the URL is changed, and no
`X-Access-Token` or `E2b-Sandbox-Id` header is sent: the signature alone authorises it.
The guest agent answers 401 to a URL without a signature, with a wrong one, for the
other operation, or past its expiration.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
from e2b import Sandbox

from tests.e2e.test_e2b_sdk import _opts, _proxied
from tests.e2e.test_wrenn_sdk import Node, node  # noqa: F401
from tests.integration.conftest import guest_image  # noqa: F401

PATH = "/home/wrenn-user/signed.txt"


def _send(node: Node, method: str, url: str, **more: Any) -> httpx.Response:  # noqa: F811
    """`url` (as the SDK built it) sent to the control plane's listener with its host."""
    parts = urlsplit(url)
    root = node.base_url.removesuffix("/api")
    target = f"{root}{parts.path}?{parts.query}"
    return httpx.request(method, target, headers={"Host": parts.netloc}, timeout=60, **more)


def _with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return parts._replace(query=urlencode(query)).geturl()


def test_signed_urls_work_through_the_proxy_and_nothing_else_does(node: Node) -> None:  # noqa: F811
    sbx = Sandbox.create("base", timeout=300, **_proxied(node))
    try:
        # The same sandbox as a caller with the SDK's default sandbox URL sees it.
        direct = Sandbox.connect(sbx.sandbox_id, **_opts(node))
        upload = direct.upload_url(PATH)
        assert upload.startswith(f"https://49983-{sbx.sandbox_id}.")
        assert "signature=v1_" in upload

        r = _send(node, "POST", upload, files={"file": ("signed.txt", b"signed upload\n")})
        assert r.status_code == 200, r.text
        assert sbx.files.read(PATH) == "signed upload\n"

        download = direct.download_url(PATH, use_signature_expiration=120)
        assert "signature_expiration=" in download
        r = _send(node, "GET", download)
        assert r.status_code == 200, r.text
        assert r.content == b"signed upload\n"

        # No signature, a wrong one, the other operation's, an expired one: 401.
        unsigned = _with_query(download, signature=None, signature_expiration=None)
        wrong = _with_query(download, signature="v1_" + "A" * 43)
        read_for_write = direct.download_url(PATH)
        expired = direct.download_url(PATH, use_signature_expiration=-60)
        for method, url in (
            ("GET", unsigned),
            ("GET", wrong),
            ("GET", expired),
            ("GET", _with_query(download, path="/etc/hostname")),  # signed for another path
        ):
            r = _send(node, method, url)
            assert r.status_code == 401, (url, r.status_code, r.text)
        r = _send(node, "POST", read_for_write, files={"file": ("x", b"overwrite\n")})
        assert r.status_code == 401, r.text
        assert sbx.files.read(PATH) == "signed upload\n"
    finally:
        sbx.kill()
