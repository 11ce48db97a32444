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
    """Entries that expire ``seconds`` after they were put; ``clear`` drops all of them."""

    __slots__ = ("_entries", "_clock", "seconds")

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._entries: dict[str, tuple[float, V]] = {}

    def get(self, key: str) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        if self._clock() >= expires:
            del self._entries[key]
            return None
        return value

    def put(self, key: str, value: V) -> None:
        if self.seconds <= 0:
            return
        if len(self._entries) > 1000:  # names are user input: bound the map
            self._entries.clear()
        self._entries[key] = (self._clock() + self.seconds, value)

    def clear(self) -> None:
        self._entries.clear()
