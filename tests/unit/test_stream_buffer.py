"""The bounded buffer of a streaming task's parts, and the combined result: pure logic."""

from __future__ import annotations

import pytest

from hive_ray._stream_buffer import PART, RESTART, PartBuffer, combine


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def buffer(capacity: int = 4, idle: float = 30.0) -> tuple[PartBuffer, Clock]:
    clock = Clock()
    return PartBuffer(capacity, idle, clock), clock


def test_parts_are_numbered_in_order_and_reading_acknowledges_them():
    parts, _ = buffer()
    assert parts.put(1, [], opening=True)
    assert parts.put(1, ["a", "b"]) and parts.put(1, ["c"])
    first = parts.read(0, limit=2)
    assert first.items == [(1, PART, "a"), (2, PART, "b")] and not first.ended and first.missed == 0
    second = parts.read(2, limit=10)
    assert second.items == [(3, PART, "c")]
    assert len(parts) == 1  # "a" and "b" were acknowledged by reading after 2
    parts.end()
    last = parts.read(3, limit=10)
    assert last.items == [] and last.ended


def test_the_end_is_reported_only_with_the_last_items():
    parts, _ = buffer()
    parts.put(1, ["a", "b", "c"], opening=True)
    parts.end()
    assert not parts.read(0, limit=2).ended  # "c" is still to come
    assert parts.read(2, limit=2).ended


def test_a_new_run_starts_with_a_restart_item_and_stale_runs_are_refused():
    parts, _ = buffer(capacity=10)
    parts.put(1, ["a"], opening=True)
    assert parts.put(2, [], opening=True)
    assert parts.put(2, ["x"])
    assert not parts.put(1, ["late"])  # the lost run's host was still sending
    assert not parts.put(3, ["unopened"])  # a run must open first
    assert parts.read(0, limit=10).items == [(1, PART, "a"), (2, RESTART, 2), (3, PART, "x")]


def test_the_first_run_needs_no_restart_item():
    parts, _ = buffer()
    parts.put(2, ["a"], opening=True)  # e.g. attempt 2 after a handler error that streamed nothing here
    assert parts.read(0, limit=10).items == [(1, PART, "a")]


def test_a_full_buffer_holds_the_producer_only_while_its_reader_reads():
    parts, clock = buffer(capacity=2, idle=30.0)
    parts.put(1, ["a", "b"], opening=True)
    assert parts.room()  # nobody reads yet: the producer is never held by a consumer that is not there
    parts.read(0, limit=1)
    assert not parts.room()  # full, and its reader is active
    clock.now += 29.0
    assert not parts.room()
    parts.read(1, limit=1)  # reading after "a" makes room
    assert parts.room()
    parts.put(1, ["c"])
    assert not parts.room()
    clock.now += 30.0  # the reader stopped reading: it no longer holds the producer
    assert not parts.reader_active() and parts.room()


def test_parts_beyond_the_capacity_drop_the_oldest_and_a_late_reader_is_told():
    parts, _ = buffer(capacity=2)
    parts.put(1, ["a", "b", "c", "d"], opening=True)
    read = parts.read(0, limit=10)
    assert read.items == [(3, PART, "c"), (4, PART, "d")] and read.missed == 2
    assert parts.read(4, limit=10).missed == 0


def test_nothing_is_added_after_the_end():
    parts, _ = buffer()
    parts.put(1, ["a"], opening=True)
    parts.end()
    assert not parts.put(1, ["b"])
    assert parts.read(0, limit=10).items == [(1, PART, "a")]


def test_a_buffer_needs_room_for_one_part():
    with pytest.raises(ValueError, match="at least one part"):
        PartBuffer(0, 1.0, Clock())


@pytest.mark.parametrize(("parts", "combined"), [
    (["a ", "b"], "a b"),
    ([b"\x00", b"\x01"], b"\x00\x01"),
    ([1, "a"], [1, "a"]),
    ([{"token": "a"}], [{"token": "a"}]),
    ([], []),
])
def test_the_combined_result_joins_text_and_bytes_and_lists_the_rest(parts, combined):
    assert combine(parts) == combined


def test_a_batch_put_for_an_active_reader_stays_whole():
    parts, _ = buffer(capacity=2)
    parts.put(1, [], opening=True)
    parts.read(0, limit=1)  # a reader
    parts.put(1, ["a", "b", "c", "d"])  # one host batch, put while there was room
    assert not parts.room()
    read = parts.read(0, limit=10)
    assert [value for _, _, value in read.items] == ["a", "b", "c", "d"] and read.missed == 0


def test_a_reader_that_opened_the_stream_with_its_task_reads_from_the_start():
    clock = Clock()
    parts = PartBuffer(2, 30.0, clock, expect_reader=True)
    parts.put(1, ["a", "b", "c"], opening=True)
    assert not parts.room()  # the first parts wait for the reader's first read
    assert [value for _, _, value in parts.read(0, limit=10).items] == ["a", "b", "c"]


def reply(items=(), *, missed=0, streamed=True, ended=False, answer=None, last=0):
    return {"items": list(items), "missed": missed, "streamed": streamed, "ended": ended,
            "answer": answer, "last_sequence": last}


def test_a_cursor_follows_the_sequence_and_counts_restarts():
    from hive_ray._streaming import StreamCursor

    cursor = StreamCursor()
    assert cursor.take(reply([(1, PART, "a"), (2, RESTART, 2)], last=2)) == [(1, PART, "a"), (2, RESTART, 2)]
    assert cursor.after == 2 and cursor.restarts == 1
    cursor.take(reply([(3, PART, "b")], ended=True, answer=("succeeded", "b", None), last=3))
    assert cursor.answer == ("succeeded", "b", None)
    assert not cursor.result_is_the_part() and not cursor.needs_result()


@pytest.mark.parametrize(("after", "replies", "is_the_part"), [
    (0, [reply(streamed=False, ended=True, answer=("succeeded", 5, None))], True),  # not a generator
    (0, [reply(streamed=True), reply(streamed=False, ended=True, answer=("succeeded", "ab", None))], False),
    (0, [reply(missed=3, streamed=False, ended=True, answer=("succeeded", "ab", None))], False),
    (7, [reply(streamed=False, ended=True, answer=("succeeded", "ab", None))], False),  # resumed: saw parts
])
def test_the_result_is_the_one_part_only_for_a_consumer_that_got_nothing_of_it(after, replies, is_the_part):
    from hive_ray._streaming import StreamCursor

    cursor = StreamCursor(after)
    for answer in replies:
        cursor.take(answer)
    assert cursor.result_is_the_part() is is_the_part


def test_a_failed_task_needs_its_result_resolved_to_raise_its_error():
    from hive_ray._streaming import StreamCursor

    cursor = StreamCursor()
    cursor.take(reply([(1, PART, "a")], ended=True, answer=("failed", None, {"type": "X"}), last=1))
    assert cursor.needs_result() and not cursor.result_is_the_part()
