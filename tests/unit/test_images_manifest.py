"""Unit tests for pywrenn.images.manifest: writing, loading, and clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pywrenn.images.errors import ManifestError, ManifestMissing
from pywrenn.images.manifest import (
    DEFAULT_CMDLINE,
    ImageManifest,
    load_manifest,
    manifest_path,
    write_manifest,
)
from pywrenn.layout import Layout

pytestmark = pytest.mark.unit


def built(tmp_path: Path) -> tuple[Layout, ImageManifest]:
    layout = Layout(tmp_path)
    kdir = layout.kernel_dir("6.1.0-57-cloud-amd64")
    kdir.mkdir(parents=True)
    layout.image_dir("minimal").mkdir(parents=True)
    for path in (kdir / "vmlinuz", kdir / "initramfs.img", layout.rootfs("minimal")):
        path.write_bytes(b"x")
    manifest = ImageManifest(
        template="minimal",
        kernel=kdir / "vmlinuz",
        initramfs=kdir / "initramfs.img",
        rootfs=layout.rootfs("minimal"),
        cmdline=DEFAULT_CMDLINE,
        versions={"kernel": "6.1.192-3", "input": "abc"},
    )
    write_manifest(layout, manifest)
    return layout, manifest


def test_roundtrip_stores_paths_relative_to_wrenn_dir(tmp_path: Path) -> None:
    layout, manifest = built(tmp_path)
    assert load_manifest(layout) == manifest
    data = json.loads(manifest_path(layout).read_text())
    assert data["rootfs"] == "images/minimal/rootfs.ext4"
    # The same files seen through a moved root still load.
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    tmp_path.rename(moved)
    assert load_manifest(Layout(moved)).rootfs == moved / "images/minimal/rootfs.ext4"


def test_default_cmdline_has_no_accelerator_parts() -> None:
    assert "tsc_early_khz" not in DEFAULT_CMDLINE
    assert "wrenn.ip=10.0.2.15/24" in DEFAULT_CMDLINE
    assert "wrenn.gw=10.0.2.2" in DEFAULT_CMDLINE
    assert DEFAULT_CMDLINE.startswith("console=ttyS0 ")


def test_default_cmdline_keeps_an_idle_guest_asleep() -> None:
    words = DEFAULT_CMDLINE.split()
    for word in ("nowatchdog", "audit=0", "sysctl.vm.compaction_proactiveness=0"):
        assert word in words
    assert "sysctl.vm.stat_interval=10" in words


def test_missing_manifest_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(ManifestMissing, match="wrenn image build"):
        load_manifest(Layout(tmp_path))


def test_missing_file_is_named(tmp_path: Path) -> None:
    layout, manifest = built(tmp_path)
    manifest.rootfs.unlink()
    with pytest.raises(ManifestError, match=r"rootfs .*rootfs\.ext4.* is missing"):
        load_manifest(layout)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: "{not json", "invalid manifest"),
        (lambda d: "[]", "not a JSON object"),
        (lambda d: json.dumps({**d, "format": 99}), "format 99"),
        (lambda d: json.dumps({**d, "cmdline": 3}), "'cmdline' must be"),
        (lambda d: json.dumps({**d, "versions": {"a": 1}}), "'versions'"),
        (lambda d: json.dumps({**d, "template": "other"}), "names template 'other'"),
    ],
)
def test_bad_manifest_is_a_manifest_error(tmp_path: Path, edit: object, message: str) -> None:
    layout, _ = built(tmp_path)
    path = manifest_path(layout)
    path.write_text(edit(json.loads(path.read_text())))  # type: ignore[operator]
    with pytest.raises(ManifestError, match=message):
        load_manifest(layout)


def test_ready_command_round_trips(tmp_path: Path) -> None:
    layout, manifest = built(tmp_path)
    assert load_manifest(layout).ready == ""
    assert "ready" not in json.loads(manifest_path(layout).read_text())
    ready = dataclasses.replace(manifest, ready="test -e /run/ready", ready_timeout_s=60.0)
    write_manifest(layout, ready)
    loaded = load_manifest(layout)
    assert (loaded.ready, loaded.ready_timeout_s) == ("test -e /run/ready", 60.0)


def test_ready_without_a_timeout_is_refused(tmp_path: Path) -> None:
    layout, _ = built(tmp_path)
    data = json.loads(manifest_path(layout).read_text())
    data["ready"] = {"command": "true"}
    manifest_path(layout).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="ready"):
        load_manifest(layout)
