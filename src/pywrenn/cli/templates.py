"""`wrenn template build|builds|logs|cancel`: recipes built into snapshot templates.

Owns: packing a build context directory into a tar.gz (or sending a given archive),
following a build's steps and output live until it ends, and Ctrl-C as "cancel it".
"""

from __future__ import annotations

import json
import tarfile
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from pywrenn.cli.common import AS_JSON, KEY, URL, api, err, out, run, show
from pywrenn.client import WrennAPI

template_app = typer.Typer(no_args_is_help=True, help="Build templates from recipes.")

BUILD_COLUMNS = ["id", "name", "status", "current_step", "total_steps", "created_at", "error"]
POLL_S = 0.5


RECIPE = typer.Argument(..., exists=True, dir_okay=False, help="recipe file")
NAME = typer.Option(..., "--name", "-n", help="name of the template to make")
CONTEXT = typer.Option(None, "--context", "-c", help="directory or tar(.gz) COPY reads from")
HEALTHCHECK = typer.Option("", help="e.g. '--interval=1s curl -sf localhost:8000'")
VCPUS = typer.Option(1, min=1)
MEMORY_MB = typer.Option(512, min=128)
OVERWRITE = typer.Option(False, help="replace a template of the same name")
DETACH = typer.Option(False, "--detach", "-d", help="start it and return")
FOLLOW = typer.Option(False, "--follow", "-f", help="keep following until it ends")


@template_app.command("build")
def template_build(
    ctx: typer.Context,
    recipe: Path = RECIPE,
    name: str = NAME,
    context: Path | None = CONTEXT,
    healthcheck: str = HEALTHCHECK,
    vcpus: int = VCPUS,
    memory_mb: int = MEMORY_MB,
    overwrite: bool = OVERWRITE,
    detach: bool = DETACH,
    url: str = URL,
    api_key: str = KEY,
    as_json: bool = AS_JSON,
) -> None:
    """Build RECIPE into template NAME, showing each step and its output."""
    text = recipe.read_text()
    with api(ctx, url, api_key) as client, tempfile.TemporaryDirectory() as scratch:
        archive = _archive(context, Path(scratch)) if context else None
        with err.status("uploading" if archive else "submitting"):
            build = run(
                lambda: client.start_build(
                    name,
                    text,
                    archive=archive,
                    healthcheck=healthcheck or None,
                    vcpus=vcpus,
                    memory_mb=memory_mb,
                    overwrite=overwrite,
                )
            )
        err.print(f"build {build['id']}: {build['total_steps']} steps -> template {name}")
        if detach:
            show(build, as_json, BUILD_COLUMNS)
            return
        try:
            final = _follow(client, build["id"])
        except KeyboardInterrupt:
            err.print("cancelling ...")
            final = run(lambda: client.cancel_build(build["id"]))
            final = _wait_end(client, build["id"])
        if as_json:
            out.print_json(json.dumps(final))
        if final["status"] != "succeeded":
            err.print(f"[red]build {final['status']}[/]: {final.get('error') or ''}")
            raise typer.Exit(1)
        err.print(f"[green]template {name} ready[/]")


@template_app.command("builds")
def template_builds(
    ctx: typer.Context, url: str = URL, api_key: str = KEY, as_json: bool = AS_JSON
) -> None:
    """Recent builds of your team."""
    with api(ctx, url, api_key) as client:
        show(run(client.list_builds), as_json, BUILD_COLUMNS, "builds")


@template_app.command("logs")
def template_logs(
    ctx: typer.Context,
    build_id: str,
    follow: bool = FOLLOW,
    url: str = URL,
    api_key: str = KEY,
) -> None:
    """A build's output (all of it, or followed live)."""
    with api(ctx, url, api_key) as client:
        if follow:
            _follow(client, build_id)
            return
        after, done = 0, False
        while not done:
            page = run(partial(client.build_logs, build_id, after))
            _print_lines(page["lines"])
            after, done = page["next"], not page["lines"]


@template_app.command("cancel")
def template_cancel(ctx: typer.Context, build_id: str, url: str = URL, api_key: str = KEY) -> None:
    """Stop a queued or running build."""
    with api(ctx, url, api_key) as client:
        build = run(lambda: client.cancel_build(build_id))
    err.print(f"build {build_id}: {build['status']}")


def _follow(client: WrennAPI, build_id: str) -> Any:
    """Print steps and output as they come; return the build once it has ended."""
    after = 0
    while True:
        page = run(partial(client.build_logs, build_id, after))
        _print_lines(page["lines"])
        after = page["next"]
        if page["done"]:
            return run(lambda: client.get_build(build_id))
        if not page["lines"]:
            time.sleep(POLL_S)


def _wait_end(client: WrennAPI, build_id: str) -> Any:
    while (build := run(lambda: client.get_build(build_id)))["status"] in ("queued", "running"):
        time.sleep(POLL_S)
    return build


def _print_lines(lines: list[dict[str, Any]]) -> None:
    for line in lines:
        text = line["text"]
        if line["stream"] == "info":
            err.print(Text(text.rstrip("\n"), style="bold cyan"))
        else:
            style = "red" if line["stream"] == "stderr" else ""
            err.print(Text(text, style=style), end="")


def _archive(context: Path, scratch: Path) -> Path:
    """A directory is packed (tar.gz); a file is sent as it is (a tar, maybe gzipped)."""
    if context.is_file():
        return context
    if not context.is_dir():
        err.print(f"[red]error[/]: no such context: {context}")
        raise typer.Exit(2)
    packed = scratch / "context.tar.gz"
    with err.status(f"packing {context}"), tarfile.open(packed, "w:gz") as tar:
        for child in sorted(context.iterdir()):
            tar.add(child, arcname=child.name)
    return packed
