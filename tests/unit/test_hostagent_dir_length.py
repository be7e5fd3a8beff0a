"""hostagent/server.py: a WRENN_DIR too long for its VMs' unix sockets is refused at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from pywrenn.hostagent.server import (
    LONGEST_VM_SOCKET,
    UNIX_SOCKET_PATH_MAX,
    check_dir_fits_vm_sockets,
)
from pywrenn.hostagent.warmpool import WARM_KIND
from pywrenn.layout import Layout
from pywrenn.vmm.qemu import QMP_SOCK


def test_the_longest_socket_is_a_staging_run_dirs() -> None:
    root = Path("/w")
    layout = Layout(root)
    longest = max(
        (layout.builder_dir(kind) for kind in ("base", "tpl", WARM_KIND)),
        key=lambda p: len(p.name),
    )
    assert longest.parent == layout.sandboxes_dir
    assert len(f"sandboxes/{longest.name}/{QMP_SOCK}") <= len(LONGEST_VM_SOCKET)
    assert len(f"sandboxes/{layout.sandbox_dir('cl-' + 'a' * 16).name}/{QMP_SOCK}") < len(
        LONGEST_VM_SOCKET
    )


def test_a_dir_that_leaves_room_is_accepted_and_one_that_does_not_is_refused() -> None:
    room = UNIX_SOCKET_PATH_MAX - len(LONGEST_VM_SOCKET) - 1  # the "/" between them
    check_dir_fits_vm_sockets(Path("/" + "d" * (room - 1)))
    with pytest.raises(SystemExit, match=r"too long.*at most 55 characters"):
        check_dir_fits_vm_sockets(Path("/" + "d" * room))
