"""The pieces of ``Hive.map`` that need no Ray: how much is in flight, chunks, waits, progress."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

#: The longest ``map`` waits before offering a chunk to a full pool again.
MAP_MAX_BACKOFF_SECONDS = 5.0
#: How long ``map`` waits to learn the pool's queue bound when it has no timeout of its own.
MAP_ADMISSION_SECONDS = 30.0
#: How long an interrupted ``map`` spends cancelling the tasks it leaves behind.
MAP_CANCEL_SECONDS = 10.0


class _MapWindow:
    """How much of a ``map`` is in flight: never more than the pool's queue bound admits.

    Chunks in flight grow by one after each accepted chunk and halve when the
    pool is full (other clients share it), between one and what the bound allows.
    """

    __slots__ = ("chunk_size", "chunks", "most")

    def __init__(self, chunk_size: int, most: int) -> None:
        self.chunk_size = chunk_size
        self.most = max(1, most)
        self.chunks = min(self.most, 4)

    @classmethod
    def for_pool(cls, admission: dict[str, Any] | None, chunk_size: int, total: int) -> _MapWindow:
        chunk_size = max(1, chunk_size)
        if admission is None:
            return cls(chunk_size, 1)
        bound = max(1, int(admission["max_queue"]))
        chunk_size = min(chunk_size, bound)
        return cls(chunk_size, bound // chunk_size)

    def on_accepted(self) -> None:
        self.chunks = min(self.most, self.chunks + 1)

    def on_overloaded(self) -> None:
        self.chunks = max(1, self.chunks // 2)


def _remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (monotonic), never below a second: a fetch needs one."""
    return None if deadline is None else max(1.0, deadline - time.monotonic())


def _chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    size = max(1, size)
    return [list(items[i : i + size]) for i in range(0, len(items), size)] or []


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="task", desc="hive map")


__all__ = ["MAP_ADMISSION_SECONDS", "MAP_CANCEL_SECONDS", "MAP_MAX_BACKOFF_SECONDS", "_MapWindow", "_chunks",
           "_progress_bar", "_remaining"]
