"""`wrenn team create|list`: the node's teams, for an operator with an admin key.

Owns: the admin team commands, their limit options and table columns.
"""

from __future__ import annotations

import json

import typer

from pywrenn.cli.common import AS_JSON, KEY, URL, api, err, out, run, show

team_app = typer.Typer(no_args_is_help=True, help="Teams on this node (an admin key only).")

TEAM_COLUMNS = ["id", "name", "slug", "max_capsules", "max_vcpus", "max_memory_mb", "max_builds"]
LIMIT = typer.Option(None, min=0, help="override the node's default for this team")


@team_app.command("create")
def team_create(
    ctx: typer.Context,
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
    with api(ctx, url, api_key) as client:
        made = run(
            lambda: client.create_team(
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
    show(made["team"], False, TEAM_COLUMNS)
    err.print("the team's API key (shown once):")
    typer.echo(made["api_key"]["key"])


@team_app.command("list")
def team_list(
    ctx: typer.Context, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """List the node's teams and their limit overrides (empty: the node's default)."""
    with api(ctx, url, api_key) as client:
        teams = run(client.list_teams)
    if not as_json:
        teams = [{k: ("" if v is None else v) for k, v in t.items()} for t in teams]
    show(teams, as_json, TEAM_COLUMNS, "teams")
