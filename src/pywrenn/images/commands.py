"""Running the host tools the builder drives (apt, dpkg-deb, debootstrap, cpio, mkfs.ext4).

Owns: the list of required tools and the packages that provide them, finding them, running
them with output captured, and turning their failures into `ToolMissing`/`BuildStepFailed`.
Knows nothing of: what any step builds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from pywrenn.images.errors import BuildStepFailed, ToolMissing

__all__ = ["TOOLS", "find_tool", "require_tools", "run"]

# tool -> Debian package that provides it (named in the error so the fix is one command).
TOOLS: dict[str, str] = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "debootstrap": "debootstrap",
    "busybox": "busybox-static",
    "cpio": "cpio",
    "mkfs.ext4": "e2fsprogs",
    "chroot": "coreutils",
    "tar": "tar",
    "zstd": "zstd",
    "umount": "mount",
}

# A non-root shell often lacks the sbin directories, where debootstrap and mkfs.ext4 live.
_EXTRA_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin")

TAIL_LINES = 40


def _search_path() -> str:
    parts = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join([*parts, *(p for p in _EXTRA_PATH if p not in parts)])


def find_tool(tool: str) -> Path:
    """The absolute path of `tool`, or ToolMissing naming the package to install."""
    found = shutil.which(tool, path=_search_path())
    if found is None:
        raise ToolMissing(tool, TOOLS.get(tool, tool))
    return Path(found)


def require_tools(tools: Iterable[str] = TOOLS) -> None:
    """Check every tool up front, so a build fails in its first second, not its fifth minute."""
    for tool in tools:
        find_tool(tool)


def run(
    step: str,
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    input_bytes: bytes | None = None,
) -> str:
    """Run `argv`, returning its combined output; raise BuildStepFailed with the tail if it fails.

    With `log`, the full output is also written there (debootstrap's is long and the tail
    alone does not always say which package broke).
    """
    exe = find_tool(argv[0])
    full_env = {**os.environ, **(env or {}), "PATH": _search_path(), "LC_ALL": "C.UTF-8"}
    try:
        done = subprocess.run(
            [str(exe), *argv[1:]],
            cwd=cwd,
            env=full_env,
            input=input_bytes,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
    except OSError as exc:
        raise BuildStepFailed(step, argv, -1, str(exc)) from exc
    output = done.stdout.decode("utf-8", "replace")
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(output)
    if done.returncode != 0:
        tail = "\n".join(output.splitlines()[-TAIL_LINES:])
        raise BuildStepFailed(step, argv, done.returncode, tail)
    return output
