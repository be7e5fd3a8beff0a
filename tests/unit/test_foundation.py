"""Settings, the WRENN_DIR layout, ids, and the direction of imports between layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from pywrenn import ids
from pywrenn.config import Settings, parse_listen
from pywrenn.layout import (
    Layout,
    base_snapshot_key,
    leftovers_beside,
    parse_generation,
    parse_leftover,
)

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


def test_layout_names_what_is_built_and_removed(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    images = tmp_path / "images"
    assert layout.template_staging("web", 5) == images / "web.staging-5"
    assert layout.template_trash("web", 6) == images / "web.trash-6"
    assert layout.builder_dir("tpl", 7) == tmp_path / "sandboxes" / "tpl.staging-7"
    first = layout.base_snapshot_dir("minimal", "1c256m-ab")
    assert first == images / "minimal" / "snapshots" / "1c256m-ab"
    assert layout.base_snapshot_dir("minimal", "1c256m-ab", 3).name == "1c256m-ab.g3"
    assert layout.base_snapshot_lock("minimal", "1c256m-ab").name == ".1c256m-ab.lock"
    assert parse_generation("1c256m-ab.g3", "1c256m-ab") == 3
    assert parse_generation("1c256m-ab", "1c256m-ab") == 1
    assert parse_generation("1c256m-ab.gx", "1c256m-ab") is None
    assert base_snapshot_key("1c256m-ab.g3") == base_snapshot_key("1c256m-ab") == "1c256m-ab"
    assert layout.slot_relabel_partial(3) == tmp_path / "slots" / ".3.relabel"
    assert layout.image_build_lock("minimal") == images / ".minimal.lock"
    layout.ensure()
    (images / f"{layout.image_build_prefix('minimal')}x1").mkdir()
    (images / ".minimal.lock").touch()
    assert layout.image_builds() == [("minimal", images / ".minimal.build-x1")]
    for stamp in (1, 2):
        layout.staging_dir("cl-a", stamp).mkdir()
    layout.staging_dir("cl-ab", 3).mkdir()
    assert leftovers_beside(layout.sandbox_dir("cl-a")) == [
        layout.staging_dir("cl-a", 1),
        layout.staging_dir("cl-a", 2),
    ]


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


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_edges(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, wherever the import sits (inside a
    function, under `if TYPE_CHECKING:`). `from pkg import sub` counts as importing the
    module `pkg.sub` when there is one (the package itself is only where Python finds it),
    else as importing `pkg`."""
    modules = {_module_name(root, p): p for p in root.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in modules else base)
        edges[name] = {m for m in found if m in modules and m != name}
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or round a circle
    (Tarjan's strongly connected components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    """No module imports itself round a circle, inside a layer too. A cycle hidden under
    `if TYPE_CHECKING:` still counts: it is the same knot in the design."""
    assert _cycles(_module_edges(PACKAGE)) == []


def test_cycle_check_sees_a_circle_under_type_checking(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from pkg.a import A\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\nA = 1\n")
    (package / "b.py").write_text("from pkg.sub import c\n")
    (package / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import A\n"
    )
    (package / "d.py").write_text("import pkg.a\n")  # into the circle, not part of it
    assert _cycles(_module_edges(package)) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    # A package's __init__ re-exporting a submodule that imports a sibling is no circle.
    assert "pkg" not in _module_edges(package)["pkg.a"]


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
