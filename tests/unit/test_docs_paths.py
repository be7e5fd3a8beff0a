"""Every repository path the docs name exists: `README.md` and `docs/*.md` do not point at
files that were renamed or removed.

What counts as a path (kept deliberately simple):
- a backticked token with no spaces that contains a `/` or ends in `.py`, `.md` or `.toml`;
- except tokens that are not repository paths: absolute paths (`/init`, `/var/lib/wrenn`: guest,
  host or URL paths), URLs (`://`), relative `..` paths, placeholders and globs (any of
  `{}<>…*$=,`), `WRENN_DIR/...`, and the on-disk layout under WRENN_DIR or the image cache
  (`images/`, `slots/`, `sandboxes/`, `kernels/`, `cache/`, `usr/`) unless it names a `.py` file.

A path is true when some file or directory of the repository ends with it, segment by segment.
So repo-relative (`src/pywrenn/ids.py`), package-relative (`hostagent/app.py`,
`controlplane/routes/pty.py`) and bare names (`test_cp_gate.py`, `layout.py`) all resolve
without the test knowing which package a doc is about. A pytest node id
(`file.py::test_name`) must also name a function defined in that file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SEARCHED = ("src", "tests", "bench", "docs")

_BACKTICKED = re.compile(r"`([^`\n]+)`")
_NOT_A_PATH_CHARS = set("{}<>…*$=,")
_LAYOUT_DIRS = ("images/", "slots/", "sandboxes/", "kernels/", "cache/", "usr/")


def _is_repo_path(token: str) -> bool:
    if " " in token or "://" in token or token.startswith(("/", "..", "WRENN_DIR")):
        return False
    if _NOT_A_PATH_CHARS & set(token):
        return False
    path = token.split("::", 1)[0]
    if "/" not in path and not path.endswith((".py", ".md", ".toml")):
        return False
    if path.startswith(_LAYOUT_DIRS) and not path.endswith(".py"):
        return False
    # A bare extension (`.py`) names no file.
    return not path.startswith(".")


def _named_paths() -> list[tuple[str, int, str]]:
    found = []
    for doc in DOCS:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for token in _BACKTICKED.findall(line):
                if _is_repo_path(token.strip()):
                    found.append((doc.relative_to(ROOT).as_posix(), number, token.strip()))
    return found


def _repo_paths() -> dict[tuple[str, ...], Path]:
    """Every file and directory of the repository, keyed by its parts."""
    paths = [p for p in ROOT.iterdir() if p.is_file()]
    for top in SEARCHED:
        paths.append(ROOT / top)
        paths.extend(p for p in (ROOT / top).rglob("*") if "__pycache__" not in p.parts)
    return {p.relative_to(ROOT).parts: p for p in paths}


_REPO = _repo_paths()


def _resolve(path: str) -> Path | None:
    wanted = tuple(part for part in path.split("/") if part)
    for parts, real in _REPO.items():
        if parts[-len(wanted) :] == wanted:
            return real
    return None


NAMED = _named_paths()


def test_the_docs_name_paths_at_all() -> None:
    # Guards the extraction: a broken pattern would make the check below vacuous.
    assert len(NAMED) > 100


@pytest.mark.parametrize(("doc", "line", "token"), NAMED, ids=lambda v: str(v))
def test_named_path_exists(doc: str, line: int, token: str) -> None:
    path, _, test_name = token.partition("::")
    real = _resolve(path)
    assert real is not None, f"{doc}:{line} names {token!r}, which is no file in the repository"
    if test_name:
        source = real.read_text(encoding="utf-8")
        assert re.search(rf"^\s*(async )?def {re.escape(test_name)}\(", source, re.M), (
            f"{doc}:{line} names {token!r}, but {path} defines no {test_name}"
        )


@pytest.mark.parametrize(
    ("token", "is_path"),
    [
        ("hostagent/gate.py", True),
        ("test_cp_gate.py", True),
        ("docs/security.md", True),
        ("images/build.py", True),
        ("/var/lib/wrenn", False),
        ("sandboxes/{id}/", False),
        ("images/minimal/rootfs.ext4", False),
        ("tests/unit/test_fuzz_*.py", False),
        ("http://127.0.0.1:8080", False),
        ("WRENN_DIR/host-token", False),
        ("../../cl-OTHER", False),
        (".py", False),
        ("pyproject", False),
    ],
)
def test_what_counts_as_a_path(token: str, is_path: bool) -> None:
    assert _is_repo_path(token) is is_path


def test_resolution_is_by_trailing_segments() -> None:
    assert _resolve("controlplane/routes/pty.py") == ROOT / "src/pywrenn/controlplane/routes/pty.py"
    assert _resolve("test_cp_gate.py") == ROOT / "tests/unit/test_cp_gate.py"
    assert _resolve("hostagent/no_such_module.py") is None
    # Segments, not characters: `gate.py` does not match `cp_gate.py` by accident.
    assert _resolve("p_gate.py") is None
