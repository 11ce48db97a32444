"""The parts of one streaming task on their way to its consumer: a bounded buffer.

Pure logic, no Ray and no event loop: the orchestrator keeps one
:class:`PartBuffer` per streaming task (:mod:`hive_ray._runtime._streams`), the
host puts parts in as the agent's generator yields them, and consumers read
them by sequence number.

- Every item has a sequence number, counted across attempts, so a consumer's
  cursor (the last sequence it saw: an SSE ``Last-Event-ID``) stays valid
  when the task runs again after its host died. A new attempt starts with a
  ``restart`` item; consumers are told, and may discard what they showed.
- Reading acknowledges: items at or below the cursor a consumer reads after
  are dropped, so the buffer holds what has not been read yet.
- Back-pressure: while a consumer reads (it read within ``reader_idle_seconds``)
  and the buffer is full, :meth:`PartBuffer.room` is False and the producer
  waits (a batch put while there was room stays whole: a reader gets every part). With no consumer (nobody attached yet, or one that went away) the
  producer never waits: the oldest unread parts are dropped and a late reader
  is told how many it missed. A consumer that opened the stream with its task
  (``expect_reader``) counts as reading from the start. The whole result is not lost either way: the
  task's record keeps the combined result (:func:`combine`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

#: Item kinds, as consumers see them.
PART, RESTART = "part", "restart"


@dataclass(frozen=True, slots=True)
class Read:
    """What one read of a buffer returns."""

    items: list[tuple[int, str, Any]]  # (sequence, kind, value), oldest first
    missed: int  # items dropped unread between the cursor and the first item
    ended: bool  # the task ended and nothing is left after these items


class PartBuffer:
    """The unread parts of one streaming task (see the module's docstring)."""

    __slots__ = ("capacity", "reader_idle_seconds", "_clock", "_items", "_next", "attempt",
                 "ended", "_read_at", "_dropped_through", "base")

    def __init__(self, capacity: int, reader_idle_seconds: float, clock: Callable[[], float], *,
                 expect_reader: bool = False, first_sequence: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"a stream buffer needs room for at least one part, not {capacity}")
        self.capacity = capacity
        self.reader_idle_seconds = reader_idle_seconds
        self._clock = clock
        self._items: deque[tuple[int, str, Any]] = deque()
        # Sequence of the next item. The orchestrator starts each buffer at the time in
        # microseconds, so a buffer made after a restart numbers above every earlier one's:
        # a consumer's cursor from before (below ``base``) is recognised, never misread.
        self._next = first_sequence
        self.base = first_sequence - 1
        self.attempt = 0  # the attempt whose parts are coming in (0: none opened yet)
        self.ended = False
        # When a consumer last read. One that opened the stream with its task counts as
        # reading from the start, so the first parts wait for its first read.
        self._read_at: float | None = clock() if expect_reader else None
        self._dropped_through = 0  # the highest sequence dropped unread

    def __len__(self) -> int:
        return len(self._items)

    @property
    def last_sequence(self) -> int:
        return self._next - 1

    def reader_active(self) -> bool:
        """A consumer read recently enough that a producer should wait for it."""
        return self._read_at is not None and self._clock() - self._read_at < self.reader_idle_seconds

    def room(self) -> bool:
        """May the producer put parts now? False only while full for an active reader."""
        return len(self._items) < self.capacity or not self.reader_active()

    def put(self, attempt: int, parts: Iterable[Any], *, opening: bool = False) -> bool:
        """Add parts of ``attempt``; False (nothing added) for a stale attempt or after the end.

        ``opening`` marks the first put of a run of the handler: if an earlier
        run put anything, a ``restart`` item (valued the attempt) comes first.
        Call when :meth:`room` allows. Beyond the capacity, the oldest items are
        dropped, unless a reader is active: then the batch stays whole.
        """
        if self.ended or attempt < self.attempt:
            return False
        if opening:
            if self.attempt:  # an earlier run streamed: its consumer must know this one starts over
                self._append(RESTART, attempt)
            self.attempt = attempt
        elif attempt > self.attempt:
            return False  # a run that did not open (its opening was refused): not this buffer's
        for part in parts:
            self._append(PART, part)
        self._trim()
        return True

    def end(self) -> None:
        """The task ended: readers get what is left, then the end."""
        self.ended = True

    def read(self, after: int, limit: int) -> Read:
        """Up to ``limit`` items with a sequence above ``after``, acknowledging ``after``."""
        self._read_at = self._clock()
        items = self._items
        while items and items[0][0] <= after:
            items.popleft()
        missed = max(0, self._dropped_through - max(after, self.base))
        taken = [items[index] for index in range(min(limit, len(items)))]
        return Read(items=taken, missed=missed, ended=self.ended and len(taken) == len(items))

    def _append(self, kind: str, value: Any) -> None:
        self._items.append((self._next, kind, value))
        self._next += 1

    def _trim(self) -> None:
        # A reader that reads gets every part: a batch put when there was room stays whole
        # (so the buffer holds at most capacity - 1 + one host batch). Without one, the oldest go.
        if self.reader_active():
            return
        while len(self._items) > self.capacity:
            self._dropped_through = self._items.popleft()[0]


def combine(parts: list[Any]) -> Any:
    """The result a streaming task's record keeps: its parts joined if they are all
    text (or all bytes), else the list of them (no parts: an empty list)."""
    if parts and all(type(part) is str for part in parts):
        return "".join(parts)
    if parts and all(type(part) is bytes for part in parts):
        return b"".join(parts)
    return list(parts)


__all__ = ["PART", "RESTART", "PartBuffer", "Read", "combine"]
