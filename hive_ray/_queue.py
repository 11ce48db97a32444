"""A bounded priority queue of tasks, the pure core of each pool's backlog.

Higher ``priority`` runs first; equal priorities run in submission order.
Cancelled or expired entries are removed lazily (their ``queued`` flag is
cleared and they are skipped when they reach the top), which keeps cancel O(1).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Queueable(Protocol):
    """What the queue needs from an entry."""

    priority: int
    queued: bool


EntryT = TypeVar("EntryT", bound=Queueable)


class PriorityTaskQueue(Generic[EntryT]):
    """Priority queue with lazy removal and an exact live count."""

    __slots__ = ("_heap", "_live", "_sequence", "_tiebreak")

    def __init__(self) -> None:
        # (negated priority, sequence, tie-break, entry): the tie-break keeps equal
        # keys (re-deliveries share sequence -1) in push order and never compares entries.
        self._heap: list[tuple[int, int, int, EntryT]] = []
        self._live = 0
        self._sequence = itertools.count()
        self._tiebreak = itertools.count()

    def __len__(self) -> int:
        return self._live

    def push(self, entry: EntryT, *, sequence: int | None = None) -> None:
        """Add ``entry``; ``sequence`` keeps an earlier place in line (used on re-delivery)."""
        order = next(self._sequence) if sequence is None else sequence
        entry.queued = True
        heapq.heappush(self._heap, (-entry.priority, order, next(self._tiebreak), entry))
        self._live += 1

    def discard(self, entry: EntryT) -> bool:
        """Mark ``entry`` as removed; it is dropped when it reaches the top."""
        if not entry.queued:
            return False
        entry.queued = False
        self._live -= 1
        self._compact_if_sparse()
        return True

    def peek_key(self) -> tuple[int, int, int] | None:
        """The ordering key of the next live entry (smaller runs first), or None."""
        self._drop_dead_top()
        if not self._heap:
            return None
        negated, order, tiebreak, _ = self._heap[0]
        return negated, order, tiebreak

    def pop(self) -> tuple[EntryT, int]:
        """Remove and return the next live entry with its sequence number."""
        self._drop_dead_top()
        if not self._heap:
            raise IndexError("pop from an empty task queue")
        _, order, _, entry = heapq.heappop(self._heap)
        entry.queued = False
        self._live -= 1
        return entry, order

    def __iter__(self) -> Iterator[EntryT]:
        """Live entries in no particular order."""
        return (item[3] for item in self._heap if item[3].queued)

    def _drop_dead_top(self) -> None:
        heap = self._heap
        while heap and not heap[0][3].queued:
            heapq.heappop(heap)

    def _compact_if_sparse(self) -> None:
        # Lazy removal must not let cancelled entries pile up without bound.
        if len(self._heap) > 1024 and self._live < len(self._heap) // 4:
            self._heap = [item for item in self._heap if item[3].queued]
            heapq.heapify(self._heap)
