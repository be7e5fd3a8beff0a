"""`wrenn admin set-password EMAIL`: the operator signs a person in to the dashboard.

Owns: reading the password (a hidden prompt asked twice, or `--password-stdin`) and
running `people.operator.set_password_on` against this node's database
(`WRENN_DATABASE_URL`, else `$WRENN_DIR/wrenn.db`). The first admin of `wrenn up` is
`admin@localhost`.
"""

from __future__ import annotations

import sys

import typer

from pywrenn.cli.common import err
from pywrenn.controlplane.errors import ControlPlaneError
from pywrenn.controlplane.people.operator import set_password_on
from pywrenn.controlplane.settings import ControlPlaneSettings

admin_app = typer.Typer(no_args_is_help=True, help="Operator commands on this node's database.")


@admin_app.command("set-password")
def set_password(
    email: str = typer.Argument("admin@localhost", help="the person's email"),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="read the password from standard input's first line"
    ),
) -> None:
    """Set a person's dashboard password (and end their sessions)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("new password", hide_input=True, confirmation_prompt=True)
    url = ControlPlaneSettings().effective_database_url()
    try:
        set_password_on(url, email, password)
    except ControlPlaneError as exc:
        err.print(exc.message)
        raise typer.Exit(1) from None
    err.print(f"password set for {email}; sign in at the control plane's address")
