"""`wrenn up`: a whole node on one machine, the embedded default; `wrenn serve`: a
cluster's control plane alone.

Owns: the start-up order of a single-machine node: the guest images (the minimal one and
the code runner's, built if missing, with progress), the host agent (a child process, so
its VMs and its shutdown are its own), the database and the first admin key, then the
control plane in the foreground.
Ctrl-C stops the control plane, then asks the host agent to pause running capsules and
stop; a second Ctrl-C stops at once (VMs keep running and are re-adopted next time).
The same control plane and host agent, pointed at PostgreSQL and many machines, are the
cluster.

The host agent never outlives us: it holds the read end of a pipe whose write end only
this process has, and stops when that pipe closes (we died, even by kill -9), leaving its
VMs running. A host agent still holding WRENN_DIR's lock when we start (one from a run
that crashed and has not finished stopping, or one started by hand) is stopped cleanly,
SIGTERM after checking the pid is that WRENN_DIR's agent, before ours starts; we do not
reuse it, because an agent we did not start would outlive us.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console

from pywrenn import images
from pywrenn.config import parse_listen
from pywrenn.controlplane.app import create_app
from pywrenn.controlplane.bootstrap import bootstrap_admin, save_admin_key
from pywrenn.controlplane.db.engine import make_engine, make_session_factory
from pywrenn.controlplane.db.migrate import upgrade_to_head
from pywrenn.controlplane.settings import ControlPlaneSettings
from pywrenn.hostagent import dirlock
from pywrenn.hostagent.server import PARENT_FD_ENV
from pywrenn.images.coderunner import TEMPLATE as CODE_RUNNER_IMAGE
from pywrenn.images.manifest import DEFAULT_TEMPLATE
from pywrenn.layout import Layout

AGENT_START_TIMEOUT_S = 180.0  # recovery of many paused capsules happens before it serves
# A leftover agent pauses its running capsules before it exits (up to its shutdown budget).
LEFTOVER_STOP_TIMEOUT_S = 600.0
# Idle kept-alive client connections stay open this long: longer than clients keep them
# (httpx 5 s, aiohttp 15 s), so none writes a request onto a connection being closed.
CONTROL_PLANE_KEEP_ALIVE_S = 75


def up(settings: ControlPlaneSettings, console: Console) -> None:
    layout = Layout(settings.dir)
    layout.ensure()
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    _ensure_image(layout, console)
    if settings.code_runner_image:
        _ensure_code_runner_image(layout, console)
    stop_leftover_agent(layout, console)
    agent = _start_agent(settings, layout, console)
    try:
        _first_admin_key(settings, layout, console)
        host, port = parse_listen(settings.api_listen)
        console.print(
            f"[bold green]pywrenn is up[/]: http://{host}:{port}  "
            f"(SDK base_url http://{host}:{port}/api, docs /docs)"
        )
        console.print(proxy_hint(settings))
        console.print(f"admin API key: {layout.admin_api_key_file}; logs: {layout.logs_dir}")
        uvicorn.run(create_app(settings), host=host, port=port, **uvicorn_options())
    finally:
        _stop_agent(agent, console)


def serve(settings: ControlPlaneSettings, console: Console) -> None:
    """A control plane with no agent beside it (`wrenn serve`): hosts register themselves."""
    layout = Layout(settings.dir)
    layout.ensure()
    _first_admin_key(settings, layout, console)
    host, port = parse_listen(settings.api_listen)
    console.print(f"[bold green]control plane up[/]: http://{host}:{port} (no local host agent)")
    console.print(
        "add a host: [bold]wrenn host create[/], then on that machine "
        "[bold]wrenn agent --register TOKEN --control-plane URL[/]"
    )
    uvicorn.run(create_app(settings, local_host=False), host=host, port=port, **uvicorn_options())


def uvicorn_options() -> dict[str, Any]:
    """How `wrenn up` and `wrenn serve` run the control plane (bench/hotpaths.py too)."""
    return {
        "log_level": "warning",
        # At `warning` no access line is written anyway; off, uvicorn skips building one
        # for every response (a logger call and its level check on the hot paths).
        "access_log": False,
        "ws": "wsproto",
        "timeout_graceful_shutdown": 5,
        "timeout_keep_alive": CONTROL_PLANE_KEEP_ALIVE_S,
    }


def proxy_hint(settings: ControlPlaneSettings) -> str:
    """Where capsule ports are served, and how SDK users get URLs under that domain (the
    `wrenn` SDK takes the base URL's host:port unless WRENN_PROXY_DOMAIN is set)."""
    domain = settings.effective_proxy_domain()
    hint = f"port proxy: http://{{port}}-{{capsule_id}}.{domain}  (SDK: WRENN_PROXY_DOMAIN={domain}"
    if not settings.proxy_domain:
        hint += f", or base_url http://{domain}/api"
    return hint + ")"


def _ensure_image(layout: Layout, console: Console, template: str = DEFAULT_TEMPLATE) -> None:
    label = "guest image" if template == DEFAULT_TEMPLATE else f"{template} image"
    with console.status(f"{label}: checking") as status:

        def report(event: images.StepEvent) -> None:
            if event.state == "start":
                status.update(f"{label}: {event.step}")
            elif event.state in ("done", "cached"):
                console.print(f"  {label}: {event.step} {event.state} ({event.elapsed:.1f}s)")

        images.build_image(layout, template=template, progress=report)


def _ensure_code_runner_image(layout: Layout, console: Console) -> None:
    """The code runner's image (built once, from PyPI; cached after). The node serves
    without it: only `code-runner-beta` creates fail, with the reason in the log."""
    try:
        _ensure_image(layout, console, CODE_RUNNER_IMAGE)
    except images.ImageError as exc:
        console.print(f"[yellow]code-runner image not built[/] ({exc}); code-runner-beta is off")


def stop_leftover_agent(
    layout: Layout, console: Console, *, timeout_s: float = LEFTOVER_STOP_TIMEOUT_S
) -> None:
    """Stop a host agent that still holds this WRENN_DIR's lock; refuse a stranger."""
    path = layout.agent_lock_file
    if not dirlock.is_locked(path):
        return
    pid = dirlock.holder_pid(path)
    if pid is None or not dirlock.is_agent_of(pid, path):
        raise SystemExit(
            f"locked: WRENN_DIR {layout.root} is held by pid {pid}, which is not its host "
            f"agent; stop it first (lock {path})"
        )
    console.print(f"  host agent: one from an earlier run holds WRENN_DIR (pid {pid}); stopping it")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    with console.status(f"host agent: waiting for pid {pid} to stop"):
        while dirlock.is_locked(path):
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"host agent pid {pid} did not stop in {timeout_s:.0f}s; stop it and retry"
                )
            time.sleep(0.2)
    console.print(f"  host agent: pid {pid} stopped")


def spawn_agent(
    env: dict[str, str], log: Path, *, argv: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the host agent tied to this process's life: (process, lifeline write fd).

    The write fd stays open until this process ends; then the agent reads end-of-file
    and stops. It is non-inheritable, so no other child of ours keeps the agent alive.
    """
    read_fd, write_fd = os.pipe()
    try:
        with open(log, "ab") as out:
            agent = subprocess.Popen(
                argv or [sys.executable, "-m", "pywrenn.hostagent"],
                env={**env, PARENT_FD_ENV: str(read_fd)},
                stdout=out,
                stderr=out,
                pass_fds=(read_fd,),
                start_new_session=True,  # Ctrl-C reaches us; we decide how the agent stops
            )
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    return agent, write_fd


def _start_agent(
    settings: ControlPlaneSettings, layout: Layout, console: Console
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, WRENN_DIR=str(settings.dir), WRENN_AGENT_LISTEN=settings.agent_listen)
    log = layout.log_file("hostagent")
    agent, _lifeline = spawn_agent(env, log)  # the fd stays open for as long as we run
    host, port = parse_listen(settings.agent_listen)
    deadline = time.monotonic() + AGENT_START_TIMEOUT_S
    with console.status("host agent: recovering capsules, preparing the base snapshot, starting"):
        while time.monotonic() < deadline:
            if agent.poll() is not None:
                raise SystemExit(f"host agent exited ({agent.returncode}); see {log}")
            try:
                if httpx.get(f"http://{host}:{port}/health", timeout=1.0).status_code == 200:
                    console.print(f"  host agent: up on {host}:{port} (pid {agent.pid})")
                    return agent
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    _stop_agent(agent, console)
    raise SystemExit(f"host agent did not start in {AGENT_START_TIMEOUT_S:.0f}s; see {log}")


def _first_admin_key(settings: ControlPlaneSettings, layout: Layout, console: Console) -> None:
    url = settings.effective_database_url()
    upgrade_to_head(url)

    async def bootstrap() -> str | None:
        engine = make_engine(url)
        try:
            async with make_session_factory(engine)() as session:
                creds = await bootstrap_admin(session, now=datetime.now(UTC))
                return creds.api_key if creds is not None else None
        finally:
            await engine.dispose()

    key = asyncio.run(bootstrap())
    if key is not None:
        save_admin_key(layout.admin_api_key_file, key)
        console.print(f"[bold]first start[/]: admin API key (shown once): [bold]{key}[/]")
        console.print(
            "dashboard sign-in: run [bold]wrenn admin set-password admin@localhost[/],"
            " then sign in as admin@localhost"
        )


def _stop_agent(agent: subprocess.Popen[bytes], console: Console) -> None:
    if agent.poll() is not None:
        return
    console.print("stopping: the host agent pauses running capsules (Ctrl-C again: now)")
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=600)
    except KeyboardInterrupt:
        agent.send_signal(signal.SIGTERM)  # its second signal: exit at once
        agent.wait(timeout=30)
    console.print("stopped")


def admin_key(layout: Layout) -> str:
    return Path(layout.admin_api_key_file).read_text().strip()
