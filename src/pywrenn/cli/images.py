"""`wrenn image ...`: the image builder's command line.

Owns: the `image_app` typer sub-app and showing build progress with rich. Knows nothing of:
how images are built (`pywrenn.images`). The main CLI mounts it as `wrenn image`.
"""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from pywrenn.cli.common import state as cli_state
from pywrenn.images import (
    DEFAULT_ROOTFS_SIZE,
    BuildStepFailed,
    ImageError,
    StepEvent,
    build_image,
)
from pywrenn.layout import Layout

__all__ = ["image_app"]

image_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Guest images.")
_console = Console(stderr=True)


@image_app.callback()
def _image() -> None:
    """Build and inspect guest images."""
    # A callback keeps `image` a command group even while it has a single command.


class _StepView:
    """A live table: one row per step, a spinner and a running clock on the current one."""

    def __init__(self) -> None:
        self._rows: list[tuple[str, str, float]] = []  # (step, state, elapsed)
        self._current: str | None = None
        self._started = 0.0

    def __rich__(self) -> Table:
        table = Table.grid(padding=(0, 1))
        for name, state, elapsed in self._rows:
            mark = {
                "done": "[green]✓[/]",
                "cached": "[cyan]≡[/]",
                "failed": "[red]✗[/]",
            }.get(state, " ")
            suffix = "(cached)" if state == "cached" else f"{elapsed:6.1f}s"
            table.add_row(Text.from_markup(mark), name, suffix)
        if self._current is not None:
            elapsed = time.monotonic() - self._started
            table.add_row(Spinner("dots"), self._current, f"{elapsed:6.1f}s")
        return table

    def on_event(self, event: StepEvent) -> None:
        if event.state == "start":
            self._current, self._started = event.step, time.monotonic()
            return
        if event.step == self._current:
            self._current = None
        self._rows.append((event.step, event.state, event.elapsed))


@image_app.command()
def build(
    ctx: typer.Context,
    force: bool = typer.Option(False, "--force", help="rebuild even if nothing changed"),
    rootfs_size: str = typer.Option(
        DEFAULT_ROOTFS_SIZE, "--rootfs-size", help="size of the sparse rootfs.ext4 (e.g. 2G)"
    ),
) -> None:
    """Build the kernel, initramfs and `minimal` root filesystem into WRENN_DIR."""
    layout = Layout(cli_state(ctx).settings.dir)
    view = _StepView()
    started = time.monotonic()
    try:
        try:
            with Live(view, console=_console, refresh_per_second=8, transient=False):
                manifest = build_image(
                    layout, force=force, rootfs_size=rootfs_size, progress=view.on_event
                )
        finally:
            if not _console.is_terminal:
                _console.line()  # Live leaves the last row unterminated when not on a TTY
    except BuildStepFailed as exc:
        _console.print(f"[red]error:[/] {exc}")
        if exc.tail:
            _console.print(Text(exc.tail), style="dim")
        raise typer.Exit(1) from None
    except (ImageError, ValueError) as exc:
        _console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    total = time.monotonic() - started
    _console.print(
        f"[bold]image {manifest.template}[/] ready in {total:.1f}s: "
        f"kernel {manifest.versions.get('kernel_release', '?')}, rootfs {manifest.rootfs}"
    )
