"""The `wrenn` command line.

Owns: argument parsing and human-readable output. Knows nothing of: how capsules are
run; it calls into the layers below (and, later, the API client).
"""

from __future__ import annotations

import typer
from rich.console import Console

from pywrenn import __version__
from pywrenn.config import Settings, parse_listen
from pywrenn.images.cli import image_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="pywrenn: microVM sandboxes.")
app.add_typer(image_app, name="image")
console = Console(stderr=True)


@app.command()
def version() -> None:
    """Print the pywrenn version."""
    typer.echo(__version__)


@app.command()
def up(
    envd_listen: str = typer.Option(
        "127.0.0.1:49983", help="where the guest agent listens until the node is assembled"
    ),
) -> None:
    """Run a single node on this machine.

    The node is assembled issue by issue: today it runs the guest agent on loopback so
    its protocol can be tried with any envd client.
    """
    settings = Settings()
    host, port = parse_listen(envd_listen)
    console.print(f"[bold]pywrenn {__version__}[/] WRENN_DIR={settings.dir}")
    console.print(f"guest agent (envd) on http://{host}:{port} — Ctrl-C to stop")
    from pywrenn.envd.config import AgentConfig
    from pywrenn.envd.server import serve_forever

    serve_forever(AgentConfig(host=host, port=port))


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
