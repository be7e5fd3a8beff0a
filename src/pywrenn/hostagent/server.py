"""Running the host agent: the token file, uvicorn, and signals.

Owns: process start-up for `wrenn agent` / `python -m pywrenn.hostagent`. The first
SIGTERM/SIGINT starts a graceful shutdown (running capsules are paused, within the
budget); a second one exits at once. VMs outlive the process either way, and the next
start re-adopts or restores them.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
from types import FrameType

import uvicorn

from pywrenn.config import parse_listen
from pywrenn.hostagent.app import create_app
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.layout import Layout
from pywrenn.vmm import QemuRuntime

log = logging.getLogger("pywrenn.hostagent")


def host_token(settings: HostAgentSettings) -> str:
    """The configured token, else the one in WRENN_DIR/host-token (created once, 0600)."""
    if settings.host_token:
        return settings.host_token
    path = Layout(settings.dir).host_token_file
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def build(settings: HostAgentSettings) -> tuple[SandboxManager, str]:
    layout = Layout(settings.dir)
    layout.ensure()
    manager = SandboxManager(settings, QemuRuntime(layout.cache_dir))
    return manager, host_token(settings)


def serve(settings: HostAgentSettings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    manager, token = build(settings)
    host, port = parse_listen(settings.agent_listen)
    config = uvicorn.Config(
        create_app(manager, token=token),
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)

    def second_signal(signum: int, _frame: FrameType | None) -> None:
        log.warning("second signal: exiting now; VMs keep running and are re-adopted later")
        os._exit(1)

    original = server.handle_exit

    def first_signal(sig: int, frame: FrameType | None) -> None:
        log.info("shutting down: pausing running capsules (Ctrl-C again to exit now)")
        signal.signal(signal.SIGINT, second_signal)
        signal.signal(signal.SIGTERM, second_signal)
        original(sig, frame)

    server.handle_exit = first_signal  # type: ignore[method-assign]
    log.info("host agent on http://%s:%d (WRENN_DIR=%s)", host, port, settings.dir)
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the signal it caught once shutdown is done
