"""filesystem.Filesystem unary RPCs against a real agent on loopback, plus EntryInfo rules."""

from __future__ import annotations

import os
import stat
from datetime import datetime
from pathlib import Path

import pytest

from pywrenn.envd.entryinfo import entry_info, go_permissions, rfc3339
from pywrenn.envd.server import AgentServer
from tests.connect_client import ConnectClient, RPCError, b64

FS = "/filesystem.Filesystem/"


def as_user(name: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64(f"{name}:")}


def entries_by_name(reply: dict[str, object]) -> dict[str, dict[str, object]]:
    return {e["name"]: e for e in reply["entries"]}  # type: ignore[index,union-attr]


# -- EntryInfo pieces -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (stat.S_IFREG | 0o644, "-rw-r--r--"),
        (stat.S_IFDIR | 0o755, "drwxr-xr-x"),
        (stat.S_IFLNK | 0o777, "Lrwxrwxrwx"),
        (stat.S_IFDIR | 0o1777, "dtrwxrwxrwx"),
        (stat.S_IFREG | 0o4755, "urwxr-xr-x"),
        (stat.S_IFREG | 0o2755, "grwxr-xr-x"),
        (stat.S_IFCHR | 0o666, "Dcrw-rw-rw-"),
        (stat.S_IFBLK | 0o660, "Drw-rw----"),
        (stat.S_IFIFO | 0o600, "prw-------"),
        (stat.S_IFSOCK | 0o755, "Srwxr-xr-x"),
        (stat.S_IFREG, "----------"),
    ],
)
def test_go_permissions_match_go_filemode_string(mode: int, expected: str) -> None:
    assert go_permissions(mode) == expected


def test_rfc3339_is_utc_with_nanoseconds_and_z() -> None:
    assert rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert rfc3339(0) == "1970-01-01T00:00:00.000000000Z"


def test_entry_info_of_a_file(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_bytes(b"hello")
    target.chmod(0o640)
    entry = entry_info(str(target))
    assert entry["name"] == "a.txt"
    assert entry["type"] == "FILE_TYPE_FILE"
    assert entry["path"] == str(target)
    assert entry["size"] == "5"
    assert entry["mode"] == 0o640
    assert entry["permissions"] == "-rw-r-----"
    assert "symlinkTarget" not in entry and "isSymlink" not in entry and "metadata" not in entry
    parsed = datetime.fromisoformat(entry["modifiedTime"].replace("Z", "+00:00")[:26] + "+00:00")
    assert abs(parsed.timestamp() - target.stat().st_mtime) < 1


# -- Stat -------------------------------------------------------------------------------
def test_stat_file_and_directory(client: ConnectClient, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("abc")
    entry = client.unary(FS + "Stat", {"path": str(tmp_path / "f")})["entry"]
    assert entry["type"] == "FILE_TYPE_FILE"
    assert entry["size"] == "3"
    assert entry["owner"] == "root"
    assert entry["group"] == "root"
    entry = client.unary(FS + "Stat", {"path": str(tmp_path)})["entry"]
    assert entry["type"] == "FILE_TYPE_DIRECTORY"
    assert entry["permissions"].startswith("d")


def test_stat_missing_path_is_not_found(client: ConnectClient, tmp_path: Path) -> None:
    with pytest.raises(RPCError) as err:
        client.unary(FS + "Stat", {"path": str(tmp_path / "nope")})
    assert err.value.code == "not_found"
    assert err.value.status == 404
    assert str(tmp_path / "nope") in err.value.message


def test_stat_symlink_reports_target_type(client: ConnectClient, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    entry = client.unary(FS + "Stat", {"path": str(tmp_path / "link")})["entry"]
    assert entry["isSymlink"] is True
    assert entry["type"] == "FILE_TYPE_DIRECTORY"
    assert entry["symlinkTarget"] == str(tmp_path / "real")
    assert entry["permissions"] == "Lrwxrwxrwx"


def test_stat_dangling_symlink_stays_visible(client: ConnectClient, tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to("missing")
    entry = client.unary(FS + "Stat", {"path": str(tmp_path / "dangling")})["entry"]
    assert entry["isSymlink"] is True
    assert entry["type"] == "FILE_TYPE_SYMLINK"
    assert entry["symlinkTarget"] == str(tmp_path / "missing")


def test_stat_reports_metadata_without_prefix(client: ConnectClient, tmp_path: Path) -> None:
    target = tmp_path / "m"
    target.write_text("x")
    os.setxattr(target, "user.e2b.owner-team", b"blue")
    os.setxattr(target, "user.other", b"hidden")
    entry = client.unary(FS + "Stat", {"path": str(target)})["entry"]
    assert entry["metadata"] == {"owner-team": "blue"}


def test_stat_relative_and_home_paths(
    envd_server: AgentServer, client: ConnectClient, tmp_path: Path
) -> None:
    (tmp_path / "rel.txt").write_text("r")
    envd_server.state.update(workdir=str(tmp_path))
    entry = client.unary(FS + "Stat", {"path": "rel.txt"})["entry"]
    assert entry["path"] == str(tmp_path / "rel.txt")
    entry = client.unary(FS + "Stat", {"path": "~"})["entry"]
    assert entry["path"] == os.path.expanduser("~root")


@pytest.mark.parametrize(
    "message",
    [{}, {"path": ""}, {"path": 7}, {"path": "a\0b"}],
)
def test_stat_bad_requests_are_invalid_argument(
    client: ConnectClient, message: dict[str, object]
) -> None:
    with pytest.raises(RPCError) as err:
        client.unary(FS + "Stat", message)
    assert err.value.code == "invalid_argument"


def test_bad_json_and_unknown_user(client: ConnectClient, tmp_path: Path) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=10)
    conn.request(
        "POST", FS + "Stat", body=b"{not json", headers={"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    assert resp.status == 400
    assert b"invalid_argument" in resp.read()
    conn.close()
    with pytest.raises(RPCError) as err:
        client.unary(FS + "Stat", {"path": str(tmp_path)}, headers=as_user("no-such-user-x"))
    assert err.value.code == "unauthenticated"
    # The agent keeps serving after each refusal.
    assert client.unary(FS + "Stat", {"path": str(tmp_path)})["entry"]["name"] == tmp_path.name


# -- ListDir ----------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "top.txt").write_text("t")
    (root / "a" / "mid.txt").write_text("m")
    (root / "a" / "b" / "deep.txt").write_text("d")
    (root / "a" / "b" / "c" / "deepest.txt").write_text("dd")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("s")
    (root / "link").symlink_to(tmp_path / "outside")
    return root


def test_list_dir_depth_one(client: ConnectClient, tree: Path) -> None:
    reply = client.unary(FS + "ListDir", {"path": str(tree), "depth": 1})
    names = entries_by_name(reply)
    assert set(names) == {"a", "top.txt", "link"}
    assert names["a"]["path"] == str(tree / "a")
    assert names["link"]["isSymlink"] is True
    assert names["link"]["type"] == "FILE_TYPE_DIRECTORY"


def test_list_dir_depth_zero_means_one(client: ConnectClient, tree: Path) -> None:
    one = client.unary(FS + "ListDir", {"path": str(tree), "depth": 1})
    zero = client.unary(FS + "ListDir", {"path": str(tree)})
    assert [e["path"] for e in zero["entries"]] == [e["path"] for e in one["entries"]]


def test_list_dir_depth_three_walks_but_never_follows_links(
    client: ConnectClient, tree: Path
) -> None:
    reply = client.unary(FS + "ListDir", {"path": str(tree), "depth": 3})
    paths = [e["path"] for e in reply["entries"]]
    assert str(tree) not in paths
    assert str(tree / "a" / "b" / "deep.txt") in paths
    assert str(tree / "a" / "b" / "c") in paths
    assert str(tree / "a" / "b" / "c" / "deepest.txt") not in paths
    assert not any("secret" in p for p in paths)
    assert paths.index(str(tree / "a")) < paths.index(str(tree / "a" / "mid.txt"))


def test_list_dir_errors(client: ConnectClient, tree: Path) -> None:
    with pytest.raises(RPCError) as err:
        client.unary(FS + "ListDir", {"path": str(tree / "missing")})
    assert err.value.code == "not_found"
    with pytest.raises(RPCError) as err:
        client.unary(FS + "ListDir", {"path": str(tree / "top.txt")})
    assert err.value.code == "invalid_argument"
    with pytest.raises(RPCError) as err:
        client.unary(FS + "ListDir", {"path": str(tree), "depth": -1})
    assert err.value.code == "invalid_argument"


# -- MakeDir ----------------------------------------------------------------------------
def test_make_dir_creates_parents_owned_by_user(client: ConnectClient, tmp_path: Path) -> None:
    target = tmp_path / "x" / "y" / "z"
    reply = client.unary(FS + "MakeDir", {"path": str(target)}, headers=as_user("nobody"))
    assert reply["entry"]["type"] == "FILE_TYPE_DIRECTORY"
    assert reply["entry"]["owner"] == "nobody"
    for directory in (tmp_path / "x", tmp_path / "x" / "y", target):
        assert directory.stat().st_uid == 65534
    assert tmp_path.stat().st_uid == 0  # an existing parent keeps its owner


def test_make_dir_existing_is_already_exists(client: ConnectClient, tmp_path: Path) -> None:
    with pytest.raises(RPCError) as err:
        client.unary(FS + "MakeDir", {"path": str(tmp_path)})
    assert err.value.code == "already_exists"


def test_make_dir_over_a_file_is_invalid(client: ConnectClient, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("f")
    for path in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(RPCError) as err:
            client.unary(FS + "MakeDir", {"path": str(path)})
        assert err.value.code == "invalid_argument"


# -- Move -------------------------------------------------------------------------------
def test_move_returns_destination_entry(client: ConnectClient, tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("data")
    dest = tmp_path / "new" / "dest.txt"
    reply = client.unary(
        FS + "Move", {"source": str(tmp_path / "src.txt"), "destination": str(dest)}
    )
    assert reply["entry"]["path"] == str(dest)
    assert reply["entry"]["name"] == "dest.txt"
    assert dest.read_text() == "data"
    assert not (tmp_path / "src.txt").exists()


def test_move_directory(client: ConnectClient, tree: Path, tmp_path: Path) -> None:
    dest = tmp_path / "moved"
    reply = client.unary(FS + "Move", {"source": str(tree / "a"), "destination": str(dest)})
    assert reply["entry"]["type"] == "FILE_TYPE_DIRECTORY"
    assert (dest / "b" / "deep.txt").read_text() == "d"


def test_move_errors(client: ConnectClient, tmp_path: Path) -> None:
    with pytest.raises(RPCError) as err:
        client.unary(
            FS + "Move", {"source": str(tmp_path / "nope"), "destination": str(tmp_path / "d")}
        )
    assert err.value.code == "not_found"
    with pytest.raises(RPCError) as err:
        client.unary(FS + "Move", {"source": str(tmp_path)})
    assert err.value.code == "invalid_argument"
    assert "destination" in err.value.message


# -- Remove -----------------------------------------------------------------------------
def test_remove_file_tree_and_missing(client: ConnectClient, tree: Path, tmp_path: Path) -> None:
    assert client.unary(FS + "Remove", {"path": str(tree / "top.txt")}) == {}
    assert not (tree / "top.txt").exists()
    assert client.unary(FS + "Remove", {"path": str(tree / "link")}) == {}
    assert (tmp_path / "outside" / "secret.txt").exists()  # the link went, not its target
    assert client.unary(FS + "Remove", {"path": str(tree)}) == {}
    assert not tree.exists()
    assert client.unary(FS + "Remove", {"path": str(tree)}) == {}


def test_remove_permission_error_is_permission_denied(client: ConnectClient) -> None:
    # Even root may not unlink a procfs entry: the kernel says EPERM.
    with pytest.raises(RPCError) as err:
        client.unary(FS + "Remove", {"path": "/proc/self/status"})
    assert err.value.code == "permission_denied"
    assert err.value.status == 403
