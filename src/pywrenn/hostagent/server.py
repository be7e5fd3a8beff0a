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
import tempfile
from pathlib import Path
from types import FrameType

import uvicorn

from pywrenn.config import parse_listen
from pywrenn.hostagent.app import create_app
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.settings import MIN_HOST_TOKEN_CHARS, HostAgentSettings
from pywrenn.layout import Layout
from pywrenn.vmm import QemuRuntime

log = logging.getLogger("pywrenn.hostagent")


class HostTokenError(Exception):
    """The host token is missing, too short or unreadable; the agent must not start."""


def host_token(settings: HostAgentSettings) -> str:
    """The configured token, else the one in WRENN_DIR/host-token (created once, 0600).

    A token file that exists but holds an empty or short token is refused, not replaced:
    it is an operator's mistake (or a truncated write), and a new token would silently
    lock out every control plane that has the old one.
    """
    if settings.host_token:  # the settings refuse a short one
        return settings.host_token
    path = Layout(settings.dir).host_token_file
    return _read_token_file(path) or _write_new_token(path)


def _read_token_file(path: Path) -> str | None:
    """The token in `path`, None if there is no file; refused if short or unreadable."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise HostTokenError(f"unreadable: host token file {path}: {exc}") from exc
    if len(token) < MIN_HOST_TOKEN_CHARS:
        raise HostTokenError(
            f"too short: host token file {path} holds {len(token)} characters, at least "
            f"{MIN_HOST_TOKEN_CHARS} are required; delete it to have a new one generated, "
            "or set WRENN_HOST_TOKEN"
        )
    return token


def _write_new_token(path: Path) -> str:
    """A new token, published atomically: readers see no file or the whole token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)  # 43 characters
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        # link, not rename: it fails if another start published a token first, and the
        # token a control plane may already have read is never replaced.
        os.link(temp, path)
    except FileExistsError:
        published = _read_token_file(path)
        if published is None:
            raise HostTokenError(f"vanished: host token file {path} was removed") from None
        return published
    finally:
        os.unlink(temp)
    _fsync_dir(path.parent)
    return token


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
