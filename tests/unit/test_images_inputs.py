"""Unit tests for pywrenn.images.inputs: when does an image need rebuilding?"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pywrenn.images import rootfs
from pywrenn.images.inputs import BuildInputs, gather_inputs, hash_files
from pywrenn.images.kernel import KernelPackage

pytestmark = pytest.mark.unit

KERNEL = KernelPackage("linux-image-6.1.0-57-cloud-amd64", "6.1.192-3")


def test_same_inputs_same_hash() -> None:
    assert gather_inputs(KERNEL, "2G").input_hash == gather_inputs(KERNEL, "2G").input_hash


@pytest.mark.parametrize(
    ("field", "value", "base_changes"),
    [
        ("kernel_version", "6.1.193-1", False),
        ("agent", "0" * 64, False),
        ("image_sources", "1" * 64, False),
        ("rootfs_size", "4G", False),
        ("packages", (*rootfs.PACKAGES, "nodejs"), True),
        ("variant_layer", "3" * 16, False),
        ("suite", "trixie", True),
        ("base_sources", "2" * 64, True),
        ("builder", "999", True),
    ],
)
def test_each_input_changes_the_hash(field: str, value: Any, base_changes: bool) -> None:
    before = gather_inputs(KERNEL, "2G")
    after = dataclasses.replace(before, **{field: value})
    assert after.input_hash != before.input_hash
    # Only Debian-side inputs invalidate the cached debootstrap tree.
    assert (after.base_key != before.base_key) is base_changes


def test_hash_files_sees_edits_and_renames(tmp_path: Path) -> None:
    a = tmp_path / "a.py"
    a.write_text("x = 1\n")
    first = hash_files([("envd/a.py", a)])
    assert hash_files([("envd/b.py", a)]) != first
    a.write_text("x = 2\n")
    assert hash_files([("envd/a.py", a)]) != first


def test_agent_hash_covers_the_files_shipped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    extra = tmp_path / "server.py"
    extra.write_text("pass\n")
    before = gather_inputs(KERNEL, "2G")
    shipped = rootfs.agent_files()
    monkeypatch.setattr(
        rootfs, "agent_files", lambda: [*shipped, ("opt/wrenn/pywrenn/envd/server.py", extra)]
    )
    after = gather_inputs(KERNEL, "2G")
    assert after.agent != before.agent
    assert after.base_key == before.base_key


def test_agent_files_are_the_stdlib_package_only() -> None:
    names = [name for name, _ in rootfs.agent_files()]
    assert names[0] == "opt/wrenn/pywrenn/__init__.py"
    assert all(n.startswith("opt/wrenn/pywrenn/envd/") and n.endswith(".py") for n in names[1:])


def test_bad_rootfs_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="rootfs size '2 GB'"):
        gather_inputs(KERNEL, "2 GB")


def test_build_inputs_is_frozen() -> None:
    inputs = gather_inputs(KERNEL, "2G")
    assert isinstance(inputs, BuildInputs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inputs.agent = "x"  # type: ignore[misc]
