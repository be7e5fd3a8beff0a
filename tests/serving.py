"""Serving in tests: an ASGI app on a real loopback port, and a certificate for https.

`serve_app(app)` runs the app under uvicorn in the test's own event loop (lifespan off:
the caller already runs it) and yields its base URL, for clients that need a real socket
(the CLI's synchronous client, the SDKs). `self_signed_cert(dir)` makes a certificate for
127.0.0.1 that is its own CA, with the `openssl` tool (the `cryptography` package is not a
dependency).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp


@asynccontextmanager
async def serve_app(app: ASGIApp, **options: Any) -> AsyncIterator[str]:
    """`app` under uvicorn on 127.0.0.1 (a free port), in this loop; yields its base URL.
    Lifespan is off: the caller runs it. `options`: more uvicorn settings (ws, access_log)."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", **options
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def self_signed_cert(where: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, self-signed, valid one day, under `where`."""
    where.mkdir(parents=True, exist_ok=True)
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
            "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
