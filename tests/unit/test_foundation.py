"""Settings, the WRENN_DIR layout, ids, and the direction of imports between layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from pywrenn import ids
from pywrenn.config import Settings, parse_listen
from pywrenn.layout import Layout, parse_leftover

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "pywrenn"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WRENN_DIR", str(tmp_path))
    monkeypatch.setenv("WRENN_API_LISTEN", "0.0.0.0:9000")
    monkeypatch.setenv("WRENN_DATABASE_URL", "postgres://u:p@db/wrenn")
    settings = Settings()
    assert settings.dir == tmp_path
    assert parse_listen(settings.api_listen) == ("0.0.0.0", 9000)
    assert settings.effective_database_url() == "postgresql+psycopg://u:p@db/wrenn"


def test_settings_default_database_is_sqlite_under_wrenn_dir(tmp_path: Path) -> None:
    settings = Settings(dir=tmp_path)
    assert settings.effective_database_url() == f"sqlite:///{tmp_path / 'wrenn.db'}"


@pytest.mark.parametrize(
    ("name", "value"),
    [("api_listen", "nowhere"), ("agent_listen", "x:99999"), ("log_level", "loud")],
)
def test_settings_refuse_bad_values(name: str, value: str) -> None:
    with pytest.raises(ValidationError):
        Settings(**{name: value})


def test_parse_listen_ipv6_and_empty_host() -> None:
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    assert parse_listen(":8080") == ("0.0.0.0", 8080)


def test_layout_paths(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    assert layout.rootfs("minimal") == tmp_path / "images" / "minimal" / "rootfs.ext4"
    assert layout.snapshot_meta("cl-x") == tmp_path / "sandboxes" / "cl-x" / "wrenn-snapshot.json"
    assert layout.staging_dir("cl-x", 5).name == "cl-x.staging-5"
    assert layout.trash_dir("cl-x", 7).name == "cl-x.trash-7"
    assert layout.slot_claim(3) == tmp_path / "slots" / "3"
    layout.ensure()
    assert layout.sandboxes_dir.is_dir()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x\0"])
def test_layout_refuses_unsafe_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        Layout(tmp_path).sandbox_dir(name)


def test_layout_refuses_slot_zero(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Layout(tmp_path).slot_claim(0)


def test_parse_leftover() -> None:
    left = parse_leftover("cl-abc.staging-123")
    assert left is not None
    assert (left.capsule_id, left.kind, left.stamp_ns) == ("cl-abc", "staging", 123)
    assert parse_leftover("cl-abc") is None
    assert parse_leftover("cl-abc.trash-x") is None


def test_ids_are_prefixed_random_and_dns_safe() -> None:
    a, b = ids.new_id(ids.IdKind.CAPSULE), ids.new_id(ids.IdKind.CAPSULE)
    assert a != b
    assert a.startswith("cl-") and len(a) == 19
    assert ids.is_valid_id(a, ids.IdKind.CAPSULE)
    assert not ids.is_valid_id(a, ids.IdKind.TEAM)
    assert ids.parse_id(a, ids.IdKind.CAPSULE) == a
    with pytest.raises(ValueError):
        ids.parse_id("cl-UPPER", ids.IdKind.CAPSULE)


# Lower layers first. A module may import its own layer and any layer before it. The node
# (node.py) and the CLI (cli/) are the top: nothing else imports them. Top-level modules
# not named here (config, layout, ids, ...) are shared and sit below every layer.
LAYERS = [
    "client",
    "envd",
    "envdclient",
    "images",
    "vmm",
    "hostagent",
    "controlplane",
    "node",
    "cli",
]


def _imports(path: Path) -> set[str]:
    """Every pywrenn module `path` imports; `from pywrenn import x` counts as `pywrenn.x`."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # The names may be submodules (`from pywrenn import hostagent`): count them as
            # such; a name that is not a layer (`__version__`) is ignored below.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("pywrenn")}


def _layer(parts: tuple[str, ...]) -> int:
    """The layer index of a module path under pywrenn/ (-1: shared, below all)."""
    top = parts[0].removesuffix(".py")
    return LAYERS.index(top) if top in LAYERS else -1


def test_layers_point_one_way() -> None:
    problems = []
    for path in PACKAGE.rglob("*.py"):
        own = _layer(path.relative_to(PACKAGE).parts)
        for name in _imports(path):
            parts = tuple(name.split("."))
            if len(parts) < 2:
                continue
            if _layer(parts[1:]) > own:
                problems.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert problems == []


def test_layer_check_sees_every_import_form(tmp_path: Path) -> None:
    """The check must not be blind to `from pywrenn import x` or the top layers."""
    source = tmp_path / "m.py"
    source.write_text(
        "from pywrenn import hostagent, __version__\n"
        "import pywrenn.cli.app\n"
        "from pywrenn.node import up\n"
    )
    found = _imports(source)
    assert {"pywrenn.hostagent", "pywrenn.cli.app", "pywrenn.node"} <= found
    assert _layer(("node.py",)) > _layer(("controlplane", "app.py"))
    assert _layer(("cli", "app.py")) > _layer(("node.py",))
    assert _layer(("config.py",)) < _layer(("client", "x.py"))


def test_guest_agent_is_standard_library_only() -> None:
    import sys

    allowed = set(sys.stdlib_module_names) | {"pywrenn"}
    problems = []
    for path in (PACKAGE / "envd").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in allowed or (top == "pywrenn" and not name.startswith("pywrenn.envd")):
                    problems.append(f"{path.name}: {name}")
    assert problems == []
