"""The replica's small caches: hot read responses, and idempotency keys.

Both are plain Python with an injected clock, unit-testable without Ray or HTTP.

What is cached, and why it is never wrong for long:

- pool lists and single pools, as serialized JSON, for ``pool_seconds``; this
  replica's own pool changes (create, scale, stop) drop them at once;
- a *finished* task's status, without expiry: a task in a terminal state never
  changes again. A queued or running task is never cached.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class BoundedMap(Generic[V]):
    """A mapping that forgets its least recently used entries past ``capacity``."""

    __slots__ = ("_entries", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, V] = OrderedDict()

    def get(self, key: str) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        if self.capacity <= 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def pop(self, key: str) -> V | None:
        return self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


class TtlCache(Generic[V]):
    """Entries that expire ``seconds`` after they were put; ``clear`` drops all of them.

    Refresh ahead: :meth:`lookup` also says when an entry has lived past half its
    time, so that a busy reader can fetch a fresh copy in the background while
    it keeps answering from the cache. Without it, every expiry makes one
    request pay a round trip to the orchestrator: at 20 requests/s and a 1 s
    lifetime that is one request in twenty, exactly the p95.

    ``generation`` changes on every ``clear``: a fetch that started before a
    change passes the generation it saw to ``put``, and its (older) value is
    dropped instead of overwriting the invalidation.
    """

    __slots__ = ("_entries", "_clock", "generation", "seconds")

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.generation = 0
        self._clock = clock
        self._entries: dict[str, tuple[float, V]] = {}

    def get(self, key: str) -> V | None:
        return self.lookup(key)[0]

    def lookup(self, key: str) -> tuple[V | None, bool]:
        """The live value (None when absent or expired), and whether it is due for a refresh."""
        found = self._entries.get(key)
        if found is None:
            return None, False
        expires, value = found
        now = self._clock()
        if now >= expires:
            del self._entries[key]
            return None, False
        return value, now >= expires - self.seconds / 2

    def put(self, key: str, value: V, generation: int | None = None) -> None:
        if self.seconds <= 0 or (generation is not None and generation != self.generation):
            return
        if len(self._entries) > 1000:  # names are user input: bound the map
            self._entries.clear()
        self._entries[key] = (self._clock() + self.seconds, value)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
