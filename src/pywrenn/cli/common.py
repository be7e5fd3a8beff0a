"""What every `wrenn` command group shares.

Owns: the two consoles (tables on stdout, messages on stderr), the options every API
command takes (`--url`, `--api-key`, `--json`), the per-invocation settings (read once
per process and handed to commands through the typer context), building the API client
(the key from `--api-key`, `WRENN_API_KEY`, or the node's `$WRENN_DIR/admin-api-key`),
showing JSON or a table, and turning an `APIError` into one red line and exit 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from pywrenn.client import APIError, WrennAPI
from pywrenn.config import Settings
from pywrenn.layout import Layout

T = TypeVar("T")

out = Console()
err = Console(stderr=True)

URL = typer.Option("http://127.0.0.1:8080", envvar="WRENN_API_URL", help="control plane URL")
KEY = typer.Option("", envvar="WRENN_API_KEY", help="API key (default: the node's admin key)")
AS_JSON = typer.Option(False, "--json", help="print JSON for scripts")


class CliState:
    """Per-invocation state set by the app's callback; `ctx.obj` of every command."""

    @cached_property
    def settings(self) -> Settings:
        # Read on first use, not in the callback: `wrenn version` or a command given
        # `--api-key` never needs WRENN_* and must not fail on an unrelated bad value.
        return Settings()


def state(ctx: typer.Context) -> CliState:
    """The invocation's state (a fresh one when a sub-app is invoked on its own)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def api(ctx: typer.Context, url: str, key: str) -> WrennAPI:
    """The API client; without a key, the node's admin key file (exit 2 if unreadable)."""
    if not key:
        path = Layout(state(ctx).settings.dir).admin_api_key_file
        try:
            key = path.read_text().strip()
        except OSError:
            err.print(f"no API key: pass --api-key, set WRENN_API_KEY, or run on the node ({path})")
            raise typer.Exit(2) from None
    return WrennAPI(url, key)


def show(data: Any, as_json: bool, columns: list[str], title: str = "") -> None:
    """Print `data` (one object or a list) as JSON or as a table of `columns`."""
    if as_json:
        out.print_json(json.dumps(data))
        return
    rows = data if isinstance(data, list) else [data]
    table = Table(title=title or None)
    for column in columns:
        table.add_column(column, overflow="fold")  # ids are copied from here: never elide
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    out.print(table)


def run(action: Callable[[], T]) -> T:
    """Call `action`; an API error becomes `error: ...` on stderr and exit code 1."""
    try:
        return action()
    except APIError as exc:
        err.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from None
