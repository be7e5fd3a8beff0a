"""`wrenn up`: a whole node on one machine, the embedded default.

Owns: the start-up order of a single-machine node: the guest image (built if missing,
with progress), the host agent (a child process, so its VMs and its shutdown are its
own), the database and the first admin key, then the control plane in the foreground.
Ctrl-C stops the control plane, then asks the host agent to pause running capsules and
stop; a second Ctrl-C stops at once (VMs keep running and are re-adopted next time).
The same control plane and host agent, pointed at PostgreSQL and many machines, are the
cluster.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

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
from pywrenn.layout import Layout

AGENT_START_TIMEOUT_S = 180.0  # recovery of many paused capsules happens before it serves


def up(settings: ControlPlaneSettings, console: Console) -> None:
    layout = Layout(settings.dir)
    layout.ensure()
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    _ensure_image(layout, console)
    agent = _start_agent(settings, layout, console)
    try:
        _first_admin_key(settings, layout, console)
        host, port = parse_listen(settings.api_listen)
        console.print(
            f"[bold green]pywrenn is up[/]: http://{host}:{port}  "
            f"(SDK base_url http://{host}:{port}/api, docs /docs)"
        )
        console.print(f"admin API key: {layout.admin_api_key_file}; logs: {layout.logs_dir}")
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level="warning",
            ws="wsproto",
            timeout_graceful_shutdown=5,
        )
    finally:
        _stop_agent(agent, console)


def _ensure_image(layout: Layout, console: Console) -> None:
    with console.status("guest image: checking") as status:

        def report(event: images.StepEvent) -> None:
            if event.state == "start":
                status.update(f"guest image: {event.step}")
            elif event.state in ("done", "cached"):
                console.print(f"  guest image: {event.step} {event.state} ({event.elapsed:.1f}s)")

        images.build_image(layout, progress=report)


def _start_agent(
    settings: ControlPlaneSettings, layout: Layout, console: Console
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, WRENN_DIR=str(settings.dir), WRENN_AGENT_LISTEN=settings.agent_listen)
    log = layout.log_file("hostagent")
    with open(log, "ab") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "pywrenn.hostagent"],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,  # Ctrl-C reaches us; we decide how the agent stops
        )
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
