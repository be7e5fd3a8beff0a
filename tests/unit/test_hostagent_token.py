"""The host token: never empty or short, written once and atomically (hostagent/server.py,
settings.py), and never presented empty by the control plane (hostclient.file_token)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from pywrenn.controlplane.errors import HostUnavailable
from pywrenn.controlplane.hostclient import file_token
from pywrenn.hostagent import server
from pywrenn.hostagent.settings import HostAgentSettings


def test_generated_token_is_long_private_and_kept(tmp_path: Path) -> None:
    settings = HostAgentSettings(dir=tmp_path)
    token = server.host_token(settings)
    path = tmp_path / "host-token"
    assert len(token) >= 32
    assert path.read_text() == token + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert server.host_token(settings) == token  # read back, not replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host-token"]  # no temp file left


@pytest.mark.parametrize("content", ["", "\n", "short-token\n"])
def test_empty_or_short_token_file_is_refused_not_replaced(tmp_path: Path, content: str) -> None:
    path = tmp_path / "host-token"
    path.write_text(content)
    with pytest.raises(Exception, match="too short: host token file") as caught:
        server.host_token(HostAgentSettings(dir=tmp_path))
    assert str(path) in str(caught.value)
    assert path.read_text() == content


def test_short_env_token_is_refused_without_echoing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WRENN_HOST_TOKEN", "hunter2-but-longer")
    with pytest.raises(ValidationError) as caught:
        HostAgentSettings(dir=tmp_path)
    assert "WRENN_HOST_TOKEN" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    monkeypatch.setenv("WRENN_HOST_TOKEN", "x" * 32)
    assert server.host_token(HostAgentSettings(dir=tmp_path)) == "x" * 32


def test_a_lost_race_keeps_the_published_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two starts at once: the second one's new token never replaces the first's."""
    first = "f" * 40
    real_link = server.os.link

    def other_start_wins(src: str, dst: str) -> None:
        Path(dst).write_text(first + "\n")
        real_link(src, dst)

    monkeypatch.setattr(server.os, "link", other_start_wins)
    assert server.host_token(HostAgentSettings(dir=tmp_path)) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host-token"]


@pytest.mark.parametrize("content", ["", "  \n"])
def test_control_plane_refuses_an_empty_token_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "host-token"
    path.write_text(content)
    read = file_token(path)
    with pytest.raises(HostUnavailable, match="is empty"):
        read()
    path.write_text("t" * 43 + "\n")
    assert read() == "t" * 43  # not cached while empty
