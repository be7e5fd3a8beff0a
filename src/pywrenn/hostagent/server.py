"""Running the host agent: the WRENN_DIR lock, the token file, uvicorn, and signals.

Owns: process start-up for `wrenn agent` / `python -m pywrenn.hostagent`. First the
WRENN_DIR lock (`dirlock.py`): a second agent on the same dir exits at once, naming the
first one's pid, before recovery touches anything. The first SIGTERM/SIGINT starts a
graceful shutdown (running capsules are paused, within the budget); a second one exits
at once. VMs outlive the process either way, and the next start re-adopts or restores them.

An agent started by `wrenn up` is handed the read end of a pipe whose write end only its
parent holds (`WRENN_AGENT_PARENT_FD`). When the parent dies, however it dies, the kernel
closes the write end; the agent reads end-of-file and shuts down without pausing: its
only client died with the parent, and the next `wrenn up` re-adopts the running VMs.
A pipe rather than PR_SET_PDEATHSIG, which fires when the parent *thread* that forked
us exits and needs a fork hook in the parent; a pipe needs neither.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn

from pywrenn.config import parse_listen
from pywrenn.hostagent import dirlock
from pywrenn.hostagent.app import create_app
from pywrenn.hostagent.cluster import ClusterLink, Registration, load_link, register_host
from pywrenn.hostagent.cpclient import ControlPlaneError
from pywrenn.hostagent.credentials import CredentialsError
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.settings import MIN_HOST_TOKEN_CHARS, HostAgentSettings
from pywrenn.layout import Layout
from pywrenn.vmm import QemuRuntime, fsync_dir

log = logging.getLogger("pywrenn.hostagent")

# Set by `wrenn up` (node.py): the read end of its lifeline pipe.
PARENT_FD_ENV = "WRENN_AGENT_PARENT_FD"


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
    fsync_dir(path.parent)
    return token


# A VM's control socket lives in its run dir (vmm/qemu.py QMP_SOCK), and a unix socket's
# path stops at 107 bytes. The longest run dir is a builder's or a warm member's staging
# name (`warm.staging-` and 19 digits of a nanosecond stamp).
UNIX_SOCKET_PATH_MAX = 107
LONGEST_VM_SOCKET = "sandboxes/warm.staging-0000000000000000000/qmp.sock"


def check_dir_fits_vm_sockets(root: Path) -> None:
    """Refuse at start a WRENN_DIR too long for its VMs' sockets (otherwise every create
    and pause fails later with "AF_UNIX path too long")."""
    longest = len(os.fsencode(root.absolute() / LONGEST_VM_SOCKET))
    if longest > UNIX_SOCKET_PATH_MAX:
        room = UNIX_SOCKET_PATH_MAX - len(LONGEST_VM_SOCKET) - 1
        raise SystemExit(
            f"host agent: WRENN_DIR {root.absolute()} is too long: VM control sockets under it"
            f" would need {longest} bytes, a unix socket path takes at most"
            f" {UNIX_SOCKET_PATH_MAX}; use a directory of at most {room} characters"
        )


def build(settings: HostAgentSettings) -> tuple[SandboxManager, str]:
    check_dir_fits_vm_sockets(settings.dir)
    layout = Layout(settings.dir)
    layout.ensure()
    try:
        token = host_token(settings)
    except HostTokenError as exc:
        raise SystemExit(f"host agent: {exc}") from None  # one line, no traceback
    return (
        SandboxManager(settings, QemuRuntime(layout.cache_dir, guest_aslr=settings.guest_aslr)),
        token,
    )


def take_dir_lock(settings: HostAgentSettings) -> dirlock.DirLock:
    """The WRENN_DIR lock, or exit (status 1, no traceback) naming the agent that has it."""
    try:
        return dirlock.acquire(Layout(settings.dir).agent_lock_file)
    except dirlock.DirLocked as exc:
        raise SystemExit(f"host agent: {exc}") from None


def parent_fd_from_env() -> int | None:
    """The lifeline pipe's read end, if `wrenn up` gave us one (not for our children)."""
    raw = os.environ.pop(PARENT_FD_ENV, "")
    if not raw.isdigit():
        return None
    fd = int(raw)
    try:
        os.set_inheritable(fd, False)
    except OSError:
        log.warning("%s=%s is not an open fd; not watching a parent", PARENT_FD_ENV, raw)
        return None
    return fd


def watch_parent(fd: int, on_gone: Callable[[], None]) -> threading.Thread:
    """Call `on_gone` (in a thread) once the pipe `fd` reads end-of-file: the parent died."""

    def run() -> None:
        while True:
            try:
                if not os.read(fd, 4096):
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        on_gone()

    thread = threading.Thread(target=run, name="parent-watch", daemon=True)
    thread.start()
    return thread


def join_cluster(
    settings: HostAgentSettings,
    token: str,
    *,
    registration: Registration | None,
    address: str | None,
) -> ClusterLink | None:
    """Register if asked, then the link to the control plane from the credentials file;
    None (a standalone agent) without either. Exits (status 1, one line) on a refused
    token or an unusable file."""
    try:
        interval = None
        if registration is not None:
            interval = asyncio.run(
                register_host(settings, registration, agent_token=token, address=address)
            )
        if interval is None:
            return load_link(settings, address=address)
        return load_link(settings, address=address, heartbeat_interval_s=interval)
    except (ControlPlaneError, CredentialsError, ValueError) as exc:
        raise SystemExit(f"host agent: {exc}") from None


# How long an idle kept-alive connection stays open. Longer than any client of ours keeps
# one idle (the control plane's host client: 30 s), so a client never writes a request
# onto a connection the server is closing at that moment ("Can not write request body",
# seen under bursts of creates with uvicorn's 5 s against aiohttp's 15 s).
SERVER_KEEP_ALIVE_S = 75


def uvicorn_config(
    settings: HostAgentSettings, manager: SandboxManager, token: str, cluster: ClusterLink | None
) -> uvicorn.Config:
    """The agent's server: HTTPS when WRENN_AGENT_TLS_CERT and _KEY are set."""
    host, port = parse_listen(settings.agent_listen)
    cert, key = settings.agent_tls_cert, settings.agent_tls_key
    return uvicorn.Config(
        create_app(manager, token=token, cluster=cluster),
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=SERVER_KEEP_ALIVE_S,
        ssl_certfile=str(cert) if cert is not None else None,
        ssl_keyfile=str(key) if key is not None else None,
    )


def stop_when_host_deleted(
    server: uvicorn.Server, manager: SandboxManager, cluster: ClusterLink | None
) -> None:
    """A deleted host's capsules are destroyed by the heartbeat; then the server stops
    (nothing left to pause) and the process exits with status 0. Heartbeats start once
    the server listens (`ClusterLink.serving`)."""
    if cluster is None:
        return

    def deleted() -> None:
        manager.pause_on_shutdown = False
        server.should_exit = True  # uvicorn's main loop polls it

    cluster.on_host_deleted = deleted
    cluster.serving = lambda: bool(server.started)


def serve(
    settings: HostAgentSettings,
    *,
    registration: Registration | None = None,
    address: str | None = None,
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Before anything reads or changes WRENN_DIR; held until the process ends.
    lock = take_dir_lock(settings)
    manager, token = build(settings)
    cluster = join_cluster(settings, token, registration=registration, address=address)
    config = uvicorn_config(settings, manager, token, cluster)
    host, port = config.host, config.port
    server = uvicorn.Server(config)
    stop_when_host_deleted(server, manager, cluster)

    def second_signal(signum: int, _frame: FrameType | None) -> None:
        log.warning("second signal: exiting now; VMs keep running and are re-adopted later")
        os._exit(1)

    original = server.handle_exit
    agent_pid = os.getpid()

    def first_signal(sig: int, frame: FrameType | None) -> None:
        if os.getpid() != agent_pid:
            # A forked helper (pyroute2 forks one per namespace) inherits this handler:
            # when it is told to end, it ends, instead of logging a shutdown of the agent.
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        log.info("shutting down: pausing running capsules (Ctrl-C again to exit now)")
        signal.signal(signal.SIGINT, second_signal)
        signal.signal(signal.SIGTERM, second_signal)
        original(sig, frame)

    server.handle_exit = first_signal  # type: ignore[method-assign]

    def parent_gone() -> None:
        log.warning("parent process is gone: stopping; running VMs are left for the next agent")
        manager.pause_on_shutdown = False
        server.should_exit = True  # uvicorn's main loop polls it

    parent_fd = parent_fd_from_env()
    if parent_fd is not None:
        watch_parent(parent_fd, parent_gone)
    scheme = "https" if settings.agent_tls_cert is not None else "http"
    log.info(
        "host agent on %s://%s:%d (WRENN_DIR=%s, pid %d)",
        scheme,
        host,
        port,
        settings.dir,
        os.getpid(),
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the signal it caught once shutdown is done
    finally:
        lock.release()
