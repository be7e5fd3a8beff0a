"""Directory watching: DirWatch itself (inotify and polling), the poll-style watcher RPCs
and the WatchDir stream, against a real agent on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pywrenn.envd import upload
from pywrenn.envd.watcher import DirWatch
from tests.connect_client import ConnectClient, RPCError

FS = "/filesystem.Filesystem/"
Pair = tuple[str, str]


def short(kind: str) -> str:
    return kind.removeprefix("EVENT_TYPE_")


def collect(
    take: Callable[[], list[Pair]], until: Callable[[list[Pair]], bool], timeout: float = 5
) -> list[Pair]:
    seen: list[Pair] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.extend(take())
        if until(seen):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"timed out; saw {seen}")


def has(*wanted: Pair) -> Callable[[list[Pair]], bool]:
    return lambda seen: all(w in seen for w in wanted)


@pytest.fixture(params=["inotify", "poll"])
def start_watch(request: pytest.FixtureRequest) -> Iterator[Callable[..., DirWatch]]:
    started: list[DirWatch] = []

    def start(root: Path, recursive: bool = False) -> DirWatch:
        watch = DirWatch.start(str(root), recursive=recursive, poll=request.param == "poll")
        started.append(watch)
        return watch

    yield start
    for watch in started:
        watch.stop()


def pairs(watch: DirWatch) -> Callable[[], list[Pair]]:
    def take() -> list[Pair]:
        return [(e.name, short(e.type)) for e in watch.take(0.05)]

    return take


# -- DirWatch ---------------------------------------------------------------------------
def test_basic_event_types(start_watch: Callable[..., DirWatch], tmp_path: Path) -> None:
    watch = start_watch(tmp_path)
    take = pairs(watch)
    (tmp_path / "a.txt").write_text("1")
    collect(take, has(("a.txt", "CREATE")))
    time.sleep(0.02)  # the polling backend compares mtimes: let the clock move
    (tmp_path / "a.txt").write_text("22")
    collect(take, has(("a.txt", "WRITE")))
    (tmp_path / "a.txt").chmod(0o600)
    collect(take, has(("a.txt", "CHMOD")))
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    collect(take, has(("b.txt", "CREATE")))
    (tmp_path / "b.txt").unlink()
    collect(take, has(("b.txt", "REMOVE")))


def test_rename_reports_old_name_with_inotify(tmp_path: Path) -> None:
    watch = DirWatch.start(str(tmp_path), recursive=False)
    try:
        (tmp_path / "old").write_text("x")
        (tmp_path / "old").rename(tmp_path / "new")
        collect(pairs(watch), has(("old", "RENAME"), ("new", "CREATE")))
    finally:
        watch.stop()


def test_recursive_sees_new_subdirectories(
    start_watch: Callable[..., DirWatch], tmp_path: Path
) -> None:
    (tmp_path / "existing").mkdir()
    watch = start_watch(tmp_path, recursive=True)
    take = pairs(watch)
    (tmp_path / "existing" / "f").write_text("x")
    # Created in one go: the inner file appears before the new directory can be watched.
    (tmp_path / "new" / "deeper").mkdir(parents=True)
    (tmp_path / "new" / "deeper" / "g.txt").write_text("y")
    collect(
        take,
        has(
            ("existing/f", "CREATE"),
            ("new", "CREATE"),
            ("new/deeper", "CREATE"),
            ("new/deeper/g.txt", "CREATE"),
        ),
    )
    time.sleep(0.02)
    (tmp_path / "new" / "deeper" / "g.txt").write_text("changed")
    collect(take, has(("new/deeper/g.txt", "WRITE")))


def test_not_recursive_ignores_nested(start_watch: Callable[..., DirWatch], tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    watch = start_watch(tmp_path)
    take = pairs(watch)
    (tmp_path / "sub" / "hidden").write_text("x")
    (tmp_path / "marker").write_text("x")
    seen = collect(take, has(("marker", "CREATE")))
    assert not any("hidden" in name for name, _ in seen)


def test_moved_directory_keeps_reporting_under_new_name(tmp_path: Path) -> None:
    (tmp_path / "before").mkdir()
    watch = DirWatch.start(str(tmp_path), recursive=True)
    try:
        (tmp_path / "before").rename(tmp_path / "after")
        collect(pairs(watch), has(("after", "CREATE")))
        (tmp_path / "after" / "inner").write_text("x")
        collect(pairs(watch), has(("after/inner", "CREATE")))
    finally:
        watch.stop()


def test_upload_temp_files_are_hidden(start_watch: Callable[..., DirWatch], tmp_path: Path) -> None:
    import io

    from pywrenn.envd.users import lookup_user

    watch = start_watch(tmp_path)
    take = pairs(watch)
    upload.write_file(str(tmp_path / "up.txt"), io.BytesIO(b"data"), lookup_user("root"))
    seen = collect(take, has(("up.txt", "CREATE")))
    # Events arrive in order: once the marker's is in, any temp file's would be too.
    (tmp_path / "zz-marker").write_text("m")
    seen += collect(take, has(("zz-marker", "CREATE")))
    assert not any(name.startswith(upload.TEMP_PREFIX) for name, _ in seen)


def test_watch_errors_and_stop_is_idempotent(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DirWatch.start(str(tmp_path / "missing"), recursive=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        DirWatch.start(str(tmp_path / "file"), recursive=False)
    watch = DirWatch.start(str(tmp_path), recursive=True)
    watch.stop()
    watch.stop()
    assert watch.take(0.01) == []


def test_queue_is_bounded(tmp_path: Path) -> None:
    watch = DirWatch.start(str(tmp_path), recursive=False, max_queued=5)
    try:
        for i in range(20):
            (tmp_path / f"f{i}").write_text("x")
        time.sleep(0.3)
        assert len(watch.take_nowait()) == 5
    finally:
        watch.stop()


# -- the poll-style watcher RPCs ---------------------------------------------------------
def events_of(client: ConnectClient, watcher_id: str) -> list[dict[str, object]]:
    reply = client.unary(FS + "GetWatcherEvents", {"watcherId": watcher_id})
    return list(reply.get("events", []))


def test_watcher_trio(client: ConnectClient, tmp_path: Path) -> None:
    created = client.unary(
        FS + "CreateWatcher", {"path": str(tmp_path), "recursive": True, "includeEntry": True}
    )
    watcher_id = created["watcherId"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("hello")
    (tmp_path / "gone").write_text("x")
    (tmp_path / "gone").unlink()

    raw: list[dict[str, object]] = []

    def take() -> list[Pair]:
        batch = events_of(client, watcher_id)
        raw.extend(batch)
        return [(str(e["name"]), short(str(e["type"]))) for e in batch]

    collect(take, has(("d", "CREATE"), ("d/f.txt", "CREATE"), ("gone", "REMOVE")))
    by_key = {(e["name"], e["type"]): e for e in raw}
    entry = by_key[("d/f.txt", "EVENT_TYPE_CREATE")]["entry"]
    assert entry["path"] == str(tmp_path / "d" / "f.txt")  # type: ignore[index]
    assert "entry" not in by_key[("gone", "EVENT_TYPE_REMOVE")]
    assert events_of(client, watcher_id) == []  # drained

    assert client.unary(FS + "RemoveWatcher", {"watcherId": watcher_id}) == {}
    for method in ("GetWatcherEvents", "RemoveWatcher"):
        with pytest.raises(RPCError) as err:
            client.unary(FS + method, {"watcherId": watcher_id})
        assert err.value.code == "not_found"


def test_watcher_without_entries(client: ConnectClient, tmp_path: Path) -> None:
    watcher_id = client.unary(FS + "CreateWatcher", {"path": str(tmp_path)})["watcherId"]
    try:
        (tmp_path / "x").write_text("x")
        raw: list[dict[str, object]] = []

        def take() -> list[Pair]:
            batch = events_of(client, watcher_id)
            raw.extend(batch)
            return [(str(e["name"]), short(str(e["type"]))) for e in batch]

        collect(take, has(("x", "CREATE")))
        assert all("entry" not in e for e in raw)
    finally:
        client.unary(FS + "RemoveWatcher", {"watcherId": watcher_id})


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"path": "/definitely/missing"}, "not_found"),
        ({"path": "/etc/hostname"}, "invalid_argument"),
        ({}, "invalid_argument"),
    ],
)
def test_create_watcher_errors(client: ConnectClient, message: dict[str, str], code: str) -> None:
    with pytest.raises(RPCError) as err:
        client.unary(FS + "CreateWatcher", message)
    assert err.value.code == code


def test_watcher_id_is_required(client: ConnectClient) -> None:
    with pytest.raises(RPCError) as err:
        client.unary(FS + "GetWatcherEvents", {})
    assert err.value.code == "invalid_argument"


# -- the WatchDir stream ------------------------------------------------------------------
def watch_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("watch "))


def test_watch_dir_stream(client: ConnectClient, tmp_path: Path) -> None:
    before = watch_threads()
    conn, resp = client.open_stream(
        FS + "WatchDir",
        [{"path": str(tmp_path), "includeEntry": True}],
        headers={"Keepalive-Ping-Interval": "0.3"},
    )
    frames = ConnectClient.iter_envelopes(resp)
    assert next(frames) == (0, {"start": {}})
    (tmp_path / "new.txt").write_text("x")
    flags, message = next(frames)
    assert flags == 0
    event = message["filesystem"]
    assert (event["name"], event["type"]) == ("new.txt", "EVENT_TYPE_CREATE")
    assert event["entry"]["name"] == "new.txt"
    kinds = set()
    deadline = time.monotonic() + 5
    while "keepalive" not in kinds and time.monotonic() < deadline:
        kinds |= set(next(frames)[1])
    assert "keepalive" in kinds
    conn.close()  # the client walks away: the agent must end the watch
    deadline = time.monotonic() + 5
    while watch_threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert watch_threads() == before


def test_watch_dir_ends_at_deadline(client: ConnectClient, tmp_path: Path) -> None:
    started = time.monotonic()
    result = client.stream(
        FS + "WatchDir", {"path": str(tmp_path)}, headers={"Connect-Timeout-Ms": "600"}
    )
    assert result.messages[0] == {"start": {}}
    assert result.error is None
    assert 0.5 < time.monotonic() - started < 5


def test_watch_dir_missing_directory(client: ConnectClient, tmp_path: Path) -> None:
    with pytest.raises(RPCError) as err:
        client.stream(FS + "WatchDir", {"path": str(tmp_path / "missing")})
    assert err.value.code == "not_found"
