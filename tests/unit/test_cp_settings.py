"""controlplane/settings.py, publicids.py, bootstrap.py and the package's layering."""

from __future__ import annotations

import asyncio
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from pywrenn.controlplane import publicids
from pywrenn.controlplane.bootstrap import bootstrap_admin, save_admin_key
from pywrenn.controlplane.services import keys
from pywrenn.controlplane.settings import ControlPlaneSettings
from pywrenn.ids import IdKind, is_valid_id
from pywrenn.layout import Layout
from tests.controlplane_db import sessions_for

# The database fixtures (db_url over sqlite and postgresql, pg_admin, …).
pytest_plugins = ["tests.controlplane_pg"]

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PACKAGE = Path(__file__).resolve().parents[2] / "src" / "pywrenn" / "controlplane"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WRENN_DIR", str(tmp_path))
    monkeypatch.setenv("WRENN_DATABASE_URL", "postgres://u:p@db:5432/wrenn")
    monkeypatch.setenv("WRENN_PROXY_DOMAIN", "Sandbox.Example.com")
    monkeypatch.setenv("WRENN_HOST_MONITOR_INTERVAL_S", "2.5")
    settings = ControlPlaneSettings()
    assert settings.effective_database_url() == "postgresql+psycopg://u:p@db:5432/wrenn"
    assert settings.proxy_domain == "sandbox.example.com"
    assert settings.host_monitor_interval_s == 2.5
    assert settings.api_listen == "127.0.0.1:8080"


def test_settings_defaults(tmp_path: Path) -> None:
    settings = ControlPlaneSettings(dir=tmp_path)
    assert settings.effective_database_url() == f"sqlite:///{Layout(tmp_path).database_file}"
    # `*.localhost` resolves to loopback; `*.127.0.0.1` resolves nowhere.
    assert settings.effective_proxy_domain() == "localhost:8080"
    on_a_name = ControlPlaneSettings(dir=tmp_path, api_listen="box.lan:9000")
    assert on_a_name.effective_proxy_domain() == "box.lan:9000"
    assert settings.effective_agent_url() == "http://127.0.0.1:50051"
    assert settings.pty_ping_interval_s == 30.0
    assert settings.host_monitor_listings_per_s == 25.0
    url = "postgresql://x@h/d"
    assert ControlPlaneSettings(database_url=url).database_url == "postgresql+psycopg://x@h/d"


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("database_url", "mysql://x@h/d", "WRENN_DATABASE_URL"),
        ("database_url", "nonsense", "WRENN_DATABASE_URL"),
        ("proxy_domain", "https://x.dev/api", "WRENN_PROXY_DOMAIN"),
        ("agent_url", "127.0.0.1:50051", "WRENN_AGENT_URL"),
        ("host_monitor_interval_s", 0, "WRENN_HOST_MONITOR_INTERVAL_S"),
        ("host_monitor_listings_per_s", 0, "WRENN_HOST_MONITOR_LISTINGS_PER_S"),
        ("host_monitor_listings_per_s", -1.5, "WRENN_HOST_MONITOR_LISTINGS_PER_S"),
        ("pty_ping_interval_s", 0, "WRENN_PTY_PING_INTERVAL_S"),
        ("api_listen", "nowhere", "listen"),
    ],
)
def test_settings_refuse_bad_values(field: str, value: object, variable: str) -> None:
    with pytest.raises(ValidationError, match=variable):
        ControlPlaneSettings(**{field: value})


@pytest.mark.parametrize("kind", list(IdKind))
def test_public_ids_round_trip(kind: IdKind) -> None:
    key = publicids.new_uuid(kind)
    text = publicids.format_id(key, kind)
    assert is_valid_id(text, kind)
    assert publicids.parse(text, kind) == key
    assert publicids.try_parse(text + "x", kind) is None
    assert publicids.format_id(uuid.UUID(int=0), kind) == f"{kind.value}-" + "0" * 16


def test_public_ids_refuse_foreign_uuids() -> None:
    with pytest.raises(ValueError, match="not made from"):
        publicids.format_id(uuid.uuid4(), IdKind.CAPSULE)
    with pytest.raises(ValueError, match="invalid capsule id"):
        publicids.parse("team-" + "0" * 16, IdKind.CAPSULE)


def test_bootstrap_once_and_key_file(db_url: str, tmp_path: Path) -> None:
    async def body() -> None:
        async with sessions_for(db_url) as sessions, sessions() as session:
            creds = await bootstrap_admin(session, now=NOW)
            assert creds is not None and keys.looks_like_key(creds.api_key)
            caller = await keys.authenticate(session, plaintext=creds.api_key, now=NOW)
            assert caller.team_id == creds.team_id
            assert creds.team_api_id.startswith("team-")
            assert await bootstrap_admin(session, now=NOW) is None

    asyncio.run(body())
    path = Layout(tmp_path / "wrenn").admin_api_key_file
    save_admin_key(path, "wrn_" + "a" * 32)
    save_admin_key(path, "wrn_" + "b" * 32)  # overwrite keeps 0600
    assert path.read_text() == "wrn_" + "b" * 32 + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["admin-api-key"]


def test_every_package_says_what_it_owns_and_does_not_know() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        if "migrations" in init.parts:
            continue
        text = init.read_text()
        assert "Owns:" in text and "Knows nothing of:" in text, init
