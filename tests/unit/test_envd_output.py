"""The bounded output log that lets clients detach and re-attach."""

from __future__ import annotations

import threading

from pywrenn.envd.output import MERGE_LIMIT, OutputLog


def test_readers_follow_from_their_own_cursor() -> None:
    log = OutputLog(max_bytes=1024)
    log.append("stdout", b"a")
    log.append("stdout", b"b")
    log.append("stderr", b"c")
    first = log.read(0, timeout=0)
    assert [(c.stream, c.data) for c in first.chunks] == [("stdout", b"ab"), ("stderr", b"c")]
    assert first.cursor == 3
    assert log.read(first.cursor, timeout=0).chunks == []
    assert log.read(2, timeout=0).chunks[0].data == b"c"


def test_delivered_marks_what_someone_has_seen() -> None:
    log = OutputLog(max_bytes=1024)
    log.append("stdout", b"seen")
    log.mark_delivered(log.read(0, timeout=0).cursor)
    log.append("stdout", b"missed")
    replay = log.read(log.delivered, timeout=0)
    assert [c.data for c in replay.chunks] == [b"missed"]
    log.mark_delivered(0)  # never moves backwards
    assert log.delivered == 1


def test_memory_stays_bounded_and_drops_the_oldest() -> None:
    log = OutputLog(max_bytes=10)
    for i in range(10):
        log.append("stdout", bytes([65 + i]) * 4)
    chunks = log.read(0, timeout=0).chunks
    assert b"".join(c.data for c in chunks) == b"IIIIJJJJ"
    assert log.dropped_bytes == 32


def test_read_waits_for_output_or_close() -> None:
    log = OutputLog(max_bytes=1024)
    threading.Timer(0.05, log.append, ("stdout", b"late")).start()
    assert log.read(0, timeout=5).chunks[0].data == b"late"
    threading.Timer(0.05, log.close).start()
    result = log.read(1, timeout=5)
    assert result.closed
    assert result.chunks == []


def test_merge_respects_the_limit() -> None:
    log = OutputLog(max_bytes=10 * MERGE_LIMIT)
    log.append("stdout", b"x" * MERGE_LIMIT)
    log.append("stdout", b"y")
    assert len(log.read(0, timeout=0).chunks) == 2


def test_empty_appends_are_ignored() -> None:
    log = OutputLog(max_bytes=10)
    log.append("stdout", b"")
    assert log.read(0, timeout=0).cursor == 0


def test_attached_slow_reader_holds_the_writer_back_instead_of_losing_output() -> None:
    log = OutputLog(max_bytes=8)
    reader = log.attach(0)
    writer = threading.Thread(target=lambda: [log.append("stdout", b"abcd") for _ in range(6)])
    writer.start()
    writer.join(timeout=0.3)
    assert writer.is_alive(), "the writer should wait for the slow reader"
    received = b""
    cursor = 0
    while len(received) < 24:
        result = log.read(cursor, timeout=1)
        received += b"".join(c.data for c in result.chunks)
        cursor = result.cursor
        log.advance(reader, cursor)
    writer.join(timeout=5)
    assert received == b"abcd" * 6
    assert log.dropped_bytes <= 16  # only what the reader had already taken
    log.detach(reader)
