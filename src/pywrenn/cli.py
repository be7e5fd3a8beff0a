"""The `wrenn` command line.

Owns: argument parsing and human-readable output. Knows nothing of: how capsules are
run; it calls into the layers below (and, later, the API client).
"""

from __future__ import annotations

import typer
from rich.console import Console

from pywrenn import __version__
from pywrenn.cli_api import capsule_app, key_app, snapshot_app, team_app
from pywrenn.cli_templates import template_app
from pywrenn.images.cli import image_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="pywrenn: microVM sandboxes.")
app.add_typer(image_app, name="image")
app.add_typer(capsule_app, name="capsule")
app.add_typer(key_app, name="key")
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(team_app, name="team")
app.add_typer(template_app, name="template")
console = Console(stderr=True)


@app.command()
def version() -> None:
    """Print the pywrenn version."""
    typer.echo(__version__)


@app.command()
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
    console.print(f"[bold]pywrenn {__version__}[/] WRENN_DIR={settings.dir}")
    run_node(settings, console)


@app.command()
def envd(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(49983, help="port to listen on"),
) -> None:
    """Run the guest agent in the foreground (as inside a capsule)."""
    from pywrenn.envd.config import AgentConfig
    from pywrenn.envd.server import serve_forever

    serve_forever(AgentConfig(host=host, port=port))


@app.command()
def agent() -> None:
    """Run the host agent (owns this machine's capsule VMs); settings from WRENN_*."""
    from pywrenn.hostagent.server import serve
    from pywrenn.hostagent.settings import HostAgentSettings

    serve(HostAgentSettings())


def main() -> None:
    app()
