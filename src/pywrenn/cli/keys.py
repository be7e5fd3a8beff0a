"""`wrenn key create|list|revoke`: your team's API keys, over the REST API.

Owns: the key commands and their table columns.
"""

from __future__ import annotations

import typer

from pywrenn.cli.common import AS_JSON, KEY, URL, api, err, run, show

key_app = typer.Typer(no_args_is_help=True, help="API keys of your team.")

KEY_COLUMNS = ["id", "name", "prefix", "created_at", "last_used_at"]


@key_app.command("create")
def key_create(
    ctx: typer.Context, name: str, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """Create an API key; its secret is shown this once."""
    with api(ctx, url, api_key) as client:
        created = run(lambda: client.create_key(name))
    show(created, as_json, [*KEY_COLUMNS[:3], "key"])


@key_app.command("list")
def key_list(
    ctx: typer.Context, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """List your team's API keys (prefixes only)."""
    with api(ctx, url, api_key) as client:
        show(run(client.list_keys), as_json, KEY_COLUMNS, "API keys")


@key_app.command("revoke")
def key_revoke(ctx: typer.Context, key_id: str, url: str = URL, api_key: str = KEY) -> None:
    """Revoke an API key; requests with it fail from now on."""
    with api(ctx, url, api_key) as client:
        run(lambda: client.revoke_key(key_id))
    err.print(f"revoked {key_id}")
