"""`wrenn up`, `wrenn serve`, `wrenn agent`, `wrenn envd`: the long-lived processes.

Owns: reading each process's settings once (its own settings class, from WRENN_*) and
handing them to the process's entry point. Imports of the server code are deferred so
the API commands start without loading it.
"""

from __future__ import annotations

import typer

from pywrenn import __version__
from pywrenn.cli.common import err


def up() -> None:
    """Run a whole node on this machine: image, host agent, database, control plane.

    Settings come from WRENN_* (WRENN_DIR, WRENN_API_LISTEN, WRENN_DATABASE_URL, ...).
    On first start an admin user, a team and an API key are created; the key is printed
    once and saved to $WRENN_DIR/admin-api-key (mode 0600). Ctrl-C pauses running
    capsules and stops.
    """
    from pywrenn.controlplane.settings import ControlPlaneSettings
    from pywrenn.node import up as run_node

    settings = ControlPlaneSettings()
    err.print(f"[bold]pywrenn {__version__}[/] WRENN_DIR={settings.dir}")
    run_node(settings, err)


def serve() -> None:
    """Run a control plane alone (a cluster's: hosts join with `wrenn agent --register`).

    Settings from WRENN_*: WRENN_DATABASE_URL (PostgreSQL, shared by every control plane
    of the cluster), WRENN_API_LISTEN, WRENN_DIR. Migrates the database; on the first
    start of a new database the admin API key is printed once and saved to
    $WRENN_DIR/admin-api-key.
    """
    from pywrenn.controlplane.settings import ControlPlaneSettings
    from pywrenn.node import serve as run_control_plane

    settings = ControlPlaneSettings()
    err.print(f"[bold]pywrenn {__version__}[/] control plane, WRENN_DIR={settings.dir}")
    run_control_plane(settings, err)


def envd(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(49983, help="port to listen on"),
) -> None:
    """Run the guest agent in the foreground (as inside a capsule)."""
    from pywrenn.envd.config import AgentConfig
    from pywrenn.envd.server import serve_forever

    serve_forever(AgentConfig(host=host, port=port))


def agent(
    register: str = typer.Option(
        "",
        "--register",
        help="one-time registration token (wrt_...) from the control plane's POST /v1/hosts",
    ),
    control_plane: str = typer.Option(
        "", "--control-plane", help="the control plane's URL (with --register)"
    ),
    address: str = typer.Option(
        "",
        "--address",
        help="where the control plane reaches this agent (default: http(s)://WRENN_AGENT_LISTEN)",
    ),
) -> None:
    """Run the host agent (owns this machine's capsule VMs); settings from WRENN_*.

    With --register TOKEN --control-plane URL it registers with that control plane and
    saves $WRENN_DIR/host-credentials.json (0600); later starts reuse the file
    (heartbeats, capsule events). Without either, a standalone agent.
    """
    from pywrenn.hostagent.cluster import Registration
    from pywrenn.hostagent.server import serve
    from pywrenn.hostagent.settings import HostAgentSettings

    if bool(register) != bool(control_plane):
        err.print("[red]--register and --control-plane go together[/]")
        raise typer.Exit(2)
    registration = Registration(register, control_plane) if register else None
    serve(HostAgentSettings(), registration=registration, address=address or None)
