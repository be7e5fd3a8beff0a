"""`wrenn snapshot create|list|delete`: templates made from capsules, over the REST API.

Owns: the snapshot commands and their table columns.
"""

from __future__ import annotations

import typer

from pywrenn.cli.common import AS_JSON, KEY, URL, api, err, run, show

snapshot_app = typer.Typer(no_args_is_help=True, help="Snapshot templates made from capsules.")

SNAPSHOT_COLUMNS = ["name", "type", "vcpus", "memory_mb", "size_bytes", "created_at", "protected"]


@snapshot_app.command("create")
def snapshot_create(
    ctx: typer.Context,
    capsule_id: str,
    name: str = typer.Option("", help="template name (default: derived from the capsule)"),
    overwrite: bool = typer.Option(False, help="replace a template of the same name"),
    url: str = URL,
    api_key: str = KEY,
    as_json: bool = AS_JSON,
) -> None:
    """Make a template from a capsule; a running capsule keeps running."""
    with api(ctx, url, api_key) as client, err.status("snapshotting"):
        made = run(lambda: client.create_snapshot(capsule_id, name or None, overwrite=overwrite))
    show(made, as_json, SNAPSHOT_COLUMNS)


@snapshot_app.command("list")
def snapshot_list(
    ctx: typer.Context, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """List the templates your team can create capsules from."""
    with api(ctx, url, api_key) as client:
        show(run(client.list_snapshots), as_json, SNAPSHOT_COLUMNS, "templates")


@snapshot_app.command("delete")
def snapshot_delete(ctx: typer.Context, name: str, url: str = URL, api_key: str = KEY) -> None:
    """Delete a snapshot template (refused while capsules use it)."""
    with api(ctx, url, api_key) as client:
        run(lambda: client.delete_snapshot(name))
    err.print(f"deleted {name}")
