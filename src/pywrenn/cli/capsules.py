"""`wrenn capsule create|list|get|exec|shell|pause|resume|destroy` over the REST API.

Owns: the capsule commands and their table columns; `shell` lives in shell.py.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import typer

from pywrenn.cli.common import AS_JSON, KEY, URL, api, err, out, run, show
from pywrenn.cli.shell import capsule_shell

capsule_app = typer.Typer(no_args_is_help=True, help="Capsules: create, run, pause, resume.")

CAPSULE_COLUMNS = ["id", "status", "template", "vcpus", "memory_mb", "timeout_sec"]


@capsule_app.command("create")
def capsule_create(
    ctx: typer.Context,
    template: str | None = typer.Option(
        None, help="template name (default: the platform's base template)"
    ),
    vcpus: int = typer.Option(1),
    memory_mb: int = typer.Option(512),
    timeout_sec: int = typer.Option(0, help="pause after this many idle seconds (0: never)"),
    url: str = URL,
    api_key: str = KEY,
    as_json: bool = AS_JSON,
) -> None:
    """Create a capsule and wait until it runs."""
    with api(ctx, url, api_key) as client:
        with err.status("creating capsule"):
            body: dict[str, Any] = {
                "vcpus": vcpus,
                "memory_mb": memory_mb,
                "timeout_sec": timeout_sec,
            }
            if template is not None:  # else the control plane's default
                body["template"] = template
            capsule = run(lambda: client.create_capsule(**body))
        show(capsule, as_json, CAPSULE_COLUMNS)


@capsule_app.command("list")
def capsule_list(
    ctx: typer.Context, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """List your team's capsules."""
    with api(ctx, url, api_key) as client:
        show(run(client.list_capsules), as_json, CAPSULE_COLUMNS, "capsules")


@capsule_app.command("get")
def capsule_get(
    ctx: typer.Context, capsule_id: str, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """Show one capsule."""
    with api(ctx, url, api_key) as client:
        show(run(lambda: client.get_capsule(capsule_id)), as_json, CAPSULE_COLUMNS)


COMMAND = typer.Argument(
    ...,
    metavar="COMMAND [ARG]...",
    help="one argument: a shell command line (`sh -c`); more: the argv itself, unquoted",
)


# As `docker exec`: options come before the capsule id, and everything after it is the
# command (so `wrenn capsule exec ID ls -la` passes `-la` on to `ls`); `--` is optional.
@capsule_app.command("exec", context_settings={"allow_interspersed_args": False})
def capsule_exec(
    ctx: typer.Context,
    capsule_id: str,
    command: list[str] = COMMAND,
    timeout_sec: int = typer.Option(60, help="kill the command after this long (0: never)"),
    url: str = URL,
    api_key: str = KEY,
    as_json: bool = AS_JSON,
) -> None:
    """Run a command in a capsule, print its output, exit with its exit code."""
    if command[0] == "--":
        # Arguments after the capsule id are not parsed further, so `--` arrives as one.
        command = command[1:]
    if not command:
        err.print("no command: wrenn capsule exec ID [--] COMMAND [ARG]...")
        raise typer.Exit(2)
    argv: str | list[str] = command[0] if len(command) == 1 else command
    with api(ctx, url, api_key) as client:
        result = run(lambda: client.exec(capsule_id, argv, timeout_sec=timeout_sec))
    if as_json:
        out.print_json(json.dumps(result))
    else:
        typer.echo(_output(result, "stdout"), nl=False)
        typer.echo(_output(result, "stderr"), nl=False, err=True)
    raise typer.Exit(int(result["exit_code"]) & 0xFF)


def _output(result: dict[str, Any], stream: str) -> str | bytes:
    """A stream as the guest wrote it: output that is not UTF-8 comes base64-encoded."""
    text = str(result.get(stream) or "")
    if result.get("encoding") == "base64":
        return base64.b64decode(text)
    return text


capsule_app.command("shell")(capsule_shell)


@capsule_app.command("pause")
def capsule_pause(
    ctx: typer.Context, capsule_id: str, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """Pause a capsule to disk, memory and all."""
    with api(ctx, url, api_key) as client:
        show(run(lambda: client.pause(capsule_id)), as_json, CAPSULE_COLUMNS)


@capsule_app.command("resume")
def capsule_resume(
    ctx: typer.Context, capsule_id: str, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """Resume a paused capsule where it was."""
    with api(ctx, url, api_key) as client:
        show(run(lambda: client.resume(capsule_id)), as_json, CAPSULE_COLUMNS)


@capsule_app.command("destroy")
def capsule_destroy(
    ctx: typer.Context, capsule_id: str, url: str = URL, api_key: str = KEY
) -> None:
    """Destroy a capsule and everything in it."""
    with api(ctx, url, api_key) as client:
        run(lambda: client.destroy(capsule_id))
    err.print(f"destroyed {capsule_id}")
