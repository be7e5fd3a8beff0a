"""Unit tests for pywrenn.images.commands: missing tools and failing commands are named."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pywrenn.images.commands import find_tool, require_tools, run
from pywrenn.images.errors import BuildStepFailed, ToolMissing

pytestmark = pytest.mark.unit


def test_missing_tool_names_tool_and_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pywrenn.images.commands._EXTRA_PATH", ())
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(
        ToolMissing, match=r"'debootstrap' is not installed \(apt-get install debootstrap"
    ):
        require_tools(["debootstrap"])
    with pytest.raises(ToolMissing, match="apt-get install e2fsprogs"):
        find_tool("mkfs.ext4")


def test_failed_command_carries_its_output_tail(tmp_path: Path) -> None:
    script = "import sys\nfor i in range(100): print('line', i)\nsys.exit(3)\n"
    with pytest.raises(BuildStepFailed) as caught:
        run("demo", [sys.executable, "-c", script], log=tmp_path / "demo.log")
    err = caught.value
    assert err.returncode == 3
    assert "demo failed" in str(err) and "exited with 3" in str(err)
    assert err.tail.splitlines()[-1] == "line 99"
    assert "line 0\n" not in err.tail  # only the tail
    assert (tmp_path / "demo.log").read_text().startswith("line 0\n")


def test_run_returns_output() -> None:
    assert run("demo", [sys.executable, "-c", "print('ok')"]).strip() == "ok"
