"""The people's commands: `wrenn capsule …`, `wrenn key …`, `wrenn team …` over the REST API.

Owns: turning the API's JSON into readable tables (or `--json` for scripts) and errors
into one line on stderr with a non-zero exit. The API key comes from `--api-key`,
`WRENN_API_KEY`, or the node's `$WRENN_DIR/admin-api-key`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from pywrenn.client import APIError, WrennAPI, run_shell
from pywrenn.config import DEFAULT_WRENN_DIR
from pywrenn.layout import Layout

capsule_app = typer.Typer(no_args_is_help=True, help="Capsules: create, run, pause, resume.")
key_app = typer.Typer(no_args_is_help=True, help="API keys of your team.")
snapshot_app = typer.Typer(no_args_is_help=True, help="Snapshot templates made from capsules.")
team_app = typer.Typer(no_args_is_help=True, help="Teams on this node (an admin key only).")
out = Console()
err = Console(stderr=True)

URL = typer.Option("http://127.0.0.1:8080", envvar="WRENN_API_URL", help="control plane URL")
KEY = typer.Option("", envvar="WRENN_API_KEY", help="API key (default: the node's admin key)")
AS_JSON = typer.Option(False, "--json", help="print JSON for scripts")


def _api(url: str, key: str) -> WrennAPI:
    if not key:
        path = Layout(Path(os.environ.get("WRENN_DIR", str(DEFAULT_WRENN_DIR)))).admin_api_key_file
        try:
            key = path.read_text().strip()
        except OSError:
            err.print(f"no API key: pass --api-key, set WRENN_API_KEY, or run on the node ({path})")
            raise typer.Exit(2) from None
    return WrennAPI(url, key)


def _show(data: Any, as_json: bool, columns: list[str], title: str = "") -> None:
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


def _run(action: Any) -> Any:
    try:
        return action()
    except APIError as exc:
        err.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from None


CAPSULE_COLUMNS = ["id", "status", "template", "vcpus", "memory_mb", "timeout_sec"]


@capsule_app.command("create")
def capsule_create(
    template: str = typer.Option("minimal-ubuntu", help="template name"),
    vcpus: int = typer.Option(1),
    memory_mb: int = typer.Option(512),
    timeout_sec: int = typer.Option(0, help="pause after this many idle seconds (0: never)"),
    url: str = URL,
    api_key: str = KEY,
    as_json: bool = AS_JSON,
) -> None:
    """Create a capsule and wait until it runs."""
    with _api(url, api_key) as api:
        with err.status("creating capsule"):
            capsule = _run(
                lambda: api.create_capsule(
                    template=template, vcpus=vcpus, memory_mb=memory_mb, timeout_sec=timeout_sec
                )
            )
        _show(capsule, as_json, CAPSULE_COLUMNS)


@capsule_app.command("list")
def capsule_list(url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON) -> None:
    """List your team's capsules."""
    with _api(url, api_key) as api:
        _show(_run(api.list_capsules), as_json, CAPSULE_COLUMNS, "capsules")


@capsule_app.command("get")
def capsule_get(
    capsule_id: str, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """Show one capsule."""
    with _api(url, api_key) as api:
        _show(_run(lambda: api.get_capsule(capsule_id)), as_json, CAPSULE_COLUMNS)


@capsule_app.command("exec")
def capsule_exec(
    capsule_id: str,
    command: str,
    timeout_sec: int = typer.Option(60),
    url: str = URL,
    api_key: str = KEY,
    as_json: bool = AS_JSON,
) -> None:
    """Run a shell command in a capsule; exit with its exit code."""
    with _api(url, api_key) as api:
        result = _run(lambda: api.exec(capsule_id, command, timeout_sec=timeout_sec))
    if as_json:
        out.print_json(json.dumps(result))
    else:
        typer.echo(result["stdout"], nl=False)
        typer.echo(result["stderr"], nl=False, err=True)
    raise typer.Exit(int(result["exit_code"]) & 0xFF)


@capsule_app.command("shell")
def capsule_shell(
    capsule_id: str,
    cmd: str = typer.Option("/bin/bash", help="program to run on the terminal"),
    url: str = URL,
    api_key: str = KEY,
) -> None:
    """Open an interactive terminal in a capsule (exit the shell to leave)."""
    with _api(url, api_key) as api:
        key = api.api_key
    code = _run(lambda: run_shell(url, key, capsule_id, cmd=cmd))
    raise typer.Exit(int(code) & 0xFF)


@capsule_app.command("pause")
def capsule_pause(
    capsule_id: str, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """Pause a capsule to disk, memory and all."""
    with _api(url, api_key) as api:
        _show(_run(lambda: api.pause(capsule_id)), as_json, CAPSULE_COLUMNS)


@capsule_app.command("resume")
def capsule_resume(
    capsule_id: str, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """Resume a paused capsule where it was."""
    with _api(url, api_key) as api:
        _show(_run(lambda: api.resume(capsule_id)), as_json, CAPSULE_COLUMNS)


@capsule_app.command("destroy")
def capsule_destroy(capsule_id: str, url: str = URL, api_key: str = KEY) -> None:
    """Destroy a capsule and everything in it."""
    with _api(url, api_key) as api:
        _run(lambda: api.destroy(capsule_id))
    err.print(f"destroyed {capsule_id}")


SNAPSHOT_COLUMNS = ["name", "type", "vcpus", "memory_mb", "size_bytes", "created_at", "protected"]


@snapshot_app.command("create")
def snapshot_create(
    capsule_id: str,
    name: str = typer.Option("", help="template name (default: derived from the capsule)"),
    overwrite: bool = typer.Option(False, help="replace a template of the same name"),
    url: str = URL,
    api_key: str = KEY,
    as_json: bool = AS_JSON,
) -> None:
    """Make a template from a capsule; a running capsule keeps running."""
    with _api(url, api_key) as api, err.status("snapshotting"):
        made = _run(lambda: api.create_snapshot(capsule_id, name or None, overwrite=overwrite))
    _show(made, as_json, SNAPSHOT_COLUMNS)


@snapshot_app.command("list")
def snapshot_list(url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON) -> None:
    """List the templates your team can create capsules from."""
    with _api(url, api_key) as api:
        _show(_run(api.list_snapshots), as_json, SNAPSHOT_COLUMNS, "templates")


@snapshot_app.command("delete")
def snapshot_delete(name: str, url: str = URL, api_key: str = KEY) -> None:
    """Delete a snapshot template (refused while capsules use it)."""
    with _api(url, api_key) as api:
        _run(lambda: api.delete_snapshot(name))
    err.print(f"deleted {name}")


KEY_COLUMNS = ["id", "name", "prefix", "created_at", "last_used_at"]


@key_app.command("create")
def key_create(name: str, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON) -> None:
    """Create an API key; its secret is shown this once."""
    with _api(url, api_key) as api:
        created = _run(lambda: api.create_key(name))
    _show(created, as_json, [*KEY_COLUMNS[:3], "key"])


@key_app.command("list")
def key_list(url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON) -> None:
    """List your team's API keys (prefixes only)."""
    with _api(url, api_key) as api:
        _show(_run(api.list_keys), as_json, KEY_COLUMNS, "API keys")


@key_app.command("revoke")
def key_revoke(key_id: str, url: str = URL, api_key: str = KEY) -> None:
    """Revoke an API key; requests with it fail from now on."""
    with _api(url, api_key) as api:
        _run(lambda: api.revoke_key(key_id))
    err.print(f"revoked {key_id}")


TEAM_COLUMNS = ["id", "name", "slug", "max_capsules", "max_vcpus", "max_memory_mb", "max_builds"]
LIMIT = typer.Option(None, min=0, help="override the node's default for this team")


@team_app.command("create")
def team_create(
    name: str,
    slug: str = typer.Option("", help="short unique name (default: derived from NAME)"),
    max_capsules: int | None = LIMIT,
    max_vcpus: int | None = LIMIT,
    max_memory_mb: int | None = LIMIT,
    max_builds: int | None = LIMIT,
    url: str = URL,
    api_key: str = KEY,
    as_json: bool = AS_JSON,
) -> None:
    """Create a team and print its first API key (shown this once: hand it to the team)."""
    with _api(url, api_key) as api:
        made = _run(
            lambda: api.create_team(
                name,
                slug=slug,
                max_capsules=max_capsules,
                max_vcpus=max_vcpus,
                max_memory_mb=max_memory_mb,
                max_builds=max_builds,
            )
        )
    if as_json:
        out.print_json(json.dumps(made))
        return
    _show(made["team"], False, TEAM_COLUMNS)
    err.print("the team's API key (shown once):")
    typer.echo(made["api_key"]["key"])


@team_app.command("list")
def team_list(url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON) -> None:
    """List the node's teams and their limit overrides (empty: the node's default)."""
    with _api(url, api_key) as api:
        teams = _run(api.list_teams)
    if not as_json:
        teams = [{k: ("" if v is None else v) for k, v in t.items()} for t in teams]
    _show(teams, as_json, TEAM_COLUMNS, "teams")
