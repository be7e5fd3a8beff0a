"""Unit tests for the pure parts of the guest PID 1 (images/guest/wrenn_init.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pywrenn.images.guest import wrenn_init

pytestmark = pytest.mark.unit


def test_backoff_doubles_then_caps_then_resets() -> None:
    delay = wrenn_init.next_backoff(0.0, lived=0.1)
    assert delay == wrenn_init.BACKOFF_FIRST
    seen = [delay]
    for _ in range(10):
        delay = wrenn_init.next_backoff(delay, lived=0.1)
        seen.append(delay)
    assert seen[:3] == [0.5, 1.0, 2.0]
    assert max(seen) == wrenn_init.BACKOFF_MAX
    assert wrenn_init.next_backoff(wrenn_init.BACKOFF_MAX, lived=600.0) == 0.5


def test_cmdline_value() -> None:
    line = "console=ttyS0 quiet wrenn.ip=10.0.2.15/24 wrenn.hostname=box-1"
    assert wrenn_init.cmdline_value(line, "wrenn.hostname") == "box-1"
    assert wrenn_init.cmdline_value(line, "wrenn.ip") == "10.0.2.15/24"
    assert wrenn_init.cmdline_value(line, "wrenn.gw") is None
    assert wrenn_init.cmdline_value(line, "quiet") is None  # a flag, not a key=value


def test_refuses_to_run_unless_pid_1() -> None:
    with pytest.raises(SystemExit, match="PID 1"):
        wrenn_init.main()


def test_image_services_are_the_executables_in_name_order(tmp_path: Path) -> None:
    for name, mode in (("b-jupyter", 0o755), ("a-first", 0o700), ("notes", 0o644), (".x", 0o755)):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(mode)
    (tmp_path / "subdir").mkdir()
    services = wrenn_init.image_services(str(tmp_path))
    assert [s.name for s in services] == ["a-first", "b-jupyter"]
    assert services[1].argv == (str(tmp_path / "b-jupyter"),)
    assert wrenn_init.image_services(str(tmp_path / "missing")) == []


def test_a_service_that_cannot_start_is_retried_later() -> None:
    service = wrenn_init.Service("broken", ("/nonexistent/service",), {})
    service.start_or_retry()
    assert service.pid == 0
    assert service.restart_at > 0
