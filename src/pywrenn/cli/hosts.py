"""`wrenn host create|list|get|delete|drain|tag|token`: the cluster's hosts, for an operator.

Owns: the host commands (an admin key), their options and table columns. An agent joins
with the token `create` prints: `wrenn agent --register TOKEN --control-plane URL`.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from pywrenn.cli.common import AS_JSON, KEY, URL, api, err, out, run, show

host_app = typer.Typer(no_args_is_help=True, help="Hosts of the cluster (an admin key only).")
tag_app = typer.Typer(no_args_is_help=True, help="A host's tags (team:SLUG, template:NAME, ...).")
host_app.add_typer(tag_app, name="tag")

TAGS = typer.Option([], "--tag", help="a tag (repeat for more)")
HOST_COLUMNS = ["id", "name", "status", "draining", "address", "tags", "capsules", "load"]


def _flat(host: dict[str, Any]) -> dict[str, Any]:
    """One table row: lists and maps as short text."""
    load = host.get("load") or {}
    capsules = host.get("capsules") or {}
    return {
        **host,
        "address": host.get("address") or "",
        "tags": ",".join(host.get("tags") or []),
        "capsules": " ".join(f"{k}={v}" for k, v in sorted(capsules.items())),
        "load": (
            f"{load.get('memory_mb_used', 0)} MiB, {load.get('vcpus_used', 0)} vCPU" if load else ""
        ),
    }


@host_app.command("create")
def host_create(
    ctx: typer.Context,
    name: str = typer.Option("", help="a name for the host (default: its id)"),
    tag: list[str] = TAGS,
    url: str = URL,
    api_key: str = KEY,
    as_json: bool = AS_JSON,
) -> None:
    """Create a host and print its one-time registration token (valid 1 h)."""
    with api(ctx, url, api_key) as client:
        made = run(lambda: client.create_host(name=name or None, tags=tag))
    if as_json:
        out.print_json(json.dumps(made))
        return
    host = made["host"]
    err.print(f"host [bold]{host['id']}[/] created; on the machine, within the hour, run:")
    err.print(f"  wrenn agent --register {made['registration_token']} --control-plane {url}")
    typer.echo(made["registration_token"])


@host_app.command("list")
def host_list(
    ctx: typer.Context, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """List the hosts with their status, load and capsules."""
    with api(ctx, url, api_key) as client:
        hosts = run(client.list_hosts)
    show(hosts if as_json else [_flat(h) for h in hosts], as_json, HOST_COLUMNS, "hosts")


@host_app.command("get")
def host_get(
    ctx: typer.Context, host_id: str, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """One host, with its specs (arch, cpus, memory, disk) and last heartbeat."""
    with api(ctx, url, api_key) as client:
        host = run(lambda: client.get_host(host_id))
    columns = [*HOST_COLUMNS, "arch", "cpus", "memory_mb", "disk_mb", "last_heartbeat_at"]
    show(host if as_json else _flat(host), as_json, columns)


@host_app.command("delete")
def host_delete(
    ctx: typer.Context,
    host_id: str,
    force: bool = typer.Option(False, "--force", help="delete even while capsules live there"),
    url: str = URL,
    api_key: str = KEY,
) -> None:
    """Delete a host (its agent stops at its next heartbeat). Lists what it would affect;
    refused while capsules live there unless --force (they become stopped)."""
    with api(ctx, url, api_key) as client:
        preview = run(lambda: client.host_delete_preview(host_id))
        capsules = preview["capsules"]
        if capsules:
            err.print(f"{len(capsules)} capsule(s) on {host_id}:")
            for capsule in capsules:
                err.print(f"  {capsule['id']} {capsule['status']} (team {capsule['team_id']})")
        run(lambda: client.delete_host(host_id, force=force))
    err.print(f"host {host_id} deleted")


@host_app.command("drain")
def host_drain(
    ctx: typer.Context,
    host_id: str,
    undo: bool = typer.Option(False, "--undo", help="take new capsules again"),
    url: str = URL,
    api_key: str = KEY,
    as_json: bool = AS_JSON,
) -> None:
    """Stop placing new capsules on a host (existing ones stay); --undo reverses it."""
    with api(ctx, url, api_key) as client:
        host = run(lambda: client.drain_host(host_id, undo=undo))
    show(host if as_json else _flat(host), as_json, HOST_COLUMNS)


@host_app.command("token")
def host_token(
    ctx: typer.Context, host_id: str, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """A new one-time registration token for a host (to register it again)."""
    with api(ctx, url, api_key) as client:
        made = run(lambda: client.host_token(host_id))
    if as_json:
        out.print_json(json.dumps(made))
        return
    typer.echo(made["registration_token"])


@tag_app.command("list")
def tag_list(
    ctx: typer.Context, host_id: str, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """A host's tags."""
    with api(ctx, url, api_key) as client:
        tags = run(lambda: client.host_tags(host_id))
    _print_tags(tags, as_json)


@tag_app.command("add")
def tag_add(
    ctx: typer.Context,
    host_id: str,
    tag: str,
    url: str = URL,
    api_key: str = KEY,
    as_json: bool = AS_JSON,
) -> None:
    """Tag a host: `team:SLUG` keeps it for those teams, `template:NAME` for those templates."""
    with api(ctx, url, api_key) as client:
        tags = run(lambda: client.add_host_tag(host_id, tag))
    _print_tags(tags, as_json)


@tag_app.command("remove")
def tag_remove(
    ctx: typer.Context, host_id: str, tag: str, url: str = URL, api_key: str = KEY
) -> None:
    """Remove a tag from a host."""
    with api(ctx, url, api_key) as client:
        run(lambda: client.remove_host_tag(host_id, tag))
    err.print(f"tag {tag} removed from {host_id}")


def _print_tags(tags: list[str], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(tags))
        return
    for tag in tags:
        typer.echo(tag)
