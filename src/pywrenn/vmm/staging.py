"""Swapping a finished snapshot directory into place, crash-safely.

Owns: `commit_staging`. Knows nothing of: what is inside the directories.

A pause writes everything into `{id}.staging-{ns}` first. Only a complete, verified
staging dir is ever renamed to the final name, so a crash at any point leaves either the
old final dir or the new one, plus leftovers whose names the startup sweep recognises
(`pywrenn.layout.parse_leftover`): `.staging-` (never taken for a snapshot) and `.trash-`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pywrenn.layout import trash_beside
from pywrenn.vmm.runtime import StepHook

__all__ = ["commit_staging", "fsync_dir", "trash_name"]


def trash_name(final: Path, stamp_ns: int | None = None) -> Path:
    # The layout's name for it, so the startup sweep finds it.
    return trash_beside(final, stamp_ns)


def commit_staging(staging: Path, final: Path, *, on_step: StepHook | None = None) -> None:
    """Make `staging` the new `final`: final → trash, staging → final, remove trash.

    Each step is one rename(2) on one filesystem, so `final` is at every instant either
    absent (between the two renames), the old dir or the new one, never a mixture. A crash
    between the renames leaves staging + trash; recovery then commits the staging if it
    is complete (its metas verify) and puts the trash back otherwise. `on_step` hears
    "after_trash" (between the renames) and "after_commit".
    """
    if not staging.is_dir():
        raise FileNotFoundError(f"missing: staging dir {staging}")
    if staging.parent.resolve() != final.parent.resolve():
        raise ValueError(f"invalid: staging {staging} is not beside final {final}")
    trash: Path | None = None
    if final.exists():
        trash = trash_name(final)
        final.rename(trash)
        if on_step is not None:
            on_step("after_trash")
    staging.rename(final)
    fsync_dir(final.parent)
    if on_step is not None:
        on_step("after_commit")
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    """Make a rename, create or unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
