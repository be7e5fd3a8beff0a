"""Unit tests for Layout.image_templates: which images a host agent bakes at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from pywrenn.layout import Layout

pytestmark = pytest.mark.unit


def test_image_templates_are_the_dirs_with_a_manifest(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    assert layout.image_templates() == []
    for name in ("minimal", "code-runner", "team-snapshot", ".code-runner.build-x"):
        layout.images_dir.joinpath(name).mkdir(parents=True)
    for name in ("minimal", "code-runner", ".code-runner.build-x"):
        (layout.images_dir / name / "manifest.json").write_text("{}")
    assert layout.image_templates() == ["code-runner", "minimal"]
