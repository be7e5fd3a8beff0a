"""The `wrenn` typer app and `main`, the console script's entry point.

Owns: mounting each command group under its name, and the per-invocation state every
command reads its settings from (see common.py).
"""

from __future__ import annotations

import typer

from pywrenn import __version__
from pywrenn.cli.admin import admin_app
from pywrenn.cli.capsules import capsule_app
from pywrenn.cli.common import CliState
from pywrenn.cli.hosts import host_app
from pywrenn.cli.images import image_app
from pywrenn.cli.keys import key_app
from pywrenn.cli.serve import agent, envd, serve, up
from pywrenn.cli.snapshots import snapshot_app
from pywrenn.cli.teams import team_app
from pywrenn.cli.templates import template_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="pywrenn: microVM sandboxes.")
app.add_typer(admin_app, name="admin")
app.add_typer(image_app, name="image")
app.add_typer(capsule_app, name="capsule")
app.add_typer(host_app, name="host")
app.add_typer(key_app, name="key")
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(team_app, name="team")
app.add_typer(template_app, name="template")


@app.callback()
def _state(ctx: typer.Context) -> None:
    # No docstring: the app's help text above stays the one `wrenn --help` shows.
    ctx.obj = CliState()


@app.command()
def version() -> None:
    """Print the pywrenn version."""
    typer.echo(__version__)


app.command()(up)
app.command()(serve)
app.command()(envd)
app.command()(agent)


def main() -> None:
    app()
