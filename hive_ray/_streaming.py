"""Reading a streaming task's parts as they are produced: :class:`TaskStream`.

``hive.stream(...)`` (and ``handle.stream()``, ``async for part in handle``)
give a :class:`TaskStream`. It long-polls the orchestrator for the parts after
the last one it saw (``stream_parts``), so it survives a slow network and
never waits for ever: each call is bounded, and ``idle_timeout`` bounds the
wait for the next part. When the task ends the stream stops, after raising
the task's error if it did not succeed (as ``result()`` does).

- A consumer that stops early (``break``, an exception, ``close()``) cancels
  the task unless the stream was opened with ``detach=True``.
- If the task runs again (its agent's host was lost), the stream yields a
  :class:`StreamRestart` before the new run's parts.
- A task whose handler is not a generator, or a stream opened after its parts
  were gone, yields the task's whole result as its one part.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hive_ray._errors import TaskTimeoutError

if TYPE_CHECKING:
    from hive_ray._client import Hive

logger = logging.getLogger("hive_ray.client")

#: Longest single long-poll for parts; the orchestrator answers sooner when parts come.
STREAM_POLL_SECONDS = 10.0
#: How long closing a stream early spends cancelling its task.
STREAM_CANCEL_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class StreamRestart:
    """Yielded by a :class:`TaskStream` when its task starts over on another agent
    (its host was lost): the parts that follow are the new run's, from its start."""

    attempt: int


class TaskStream:
    """A streaming task's parts as its agent yields them: iterate with ``for`` or ``async for``.

    ``missed`` counts parts dropped before this consumer read them (it had
    stopped reading for ``stream_reader_idle_seconds``); ``restarts`` counts
    the :class:`StreamRestart` markers seen. After the stream ended,
    :meth:`result` is the task's combined result.
    """

    def __init__(self, hive: Hive, task_id: str, pool: str = "", *, detach: bool = False,
                 idle_timeout: float | None = None) -> None:
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be a positive number of seconds or None, not {idle_timeout!r}")
        self._hive = hive
        self.task_id = task_id
        self.pool = pool
        self.detach = detach
        self.idle_timeout = idle_timeout
        self.missed = 0
        self.restarts = 0
        self._after = 0
        self._yielded = False
        self._streamed = False  # the task's handler is a generator (its run opened a stream)
        self._last_item_at = time.monotonic()
        self._answer: tuple[str, Any, Any] | None = None

    @property
    def done(self) -> bool:
        """The task ended and this stream read its end."""
        return self._answer is not None

    # ------------------------------------------------------------------ sync
    def __iter__(self) -> Iterator[Any]:
        try:
            while self._answer is None:
                reply = self._hive._call("stream_parts", self.task_id, self._after, self._poll_seconds(),
                                         timeout=self._poll_seconds())
                yield from self._take(reply)
            if self._needs_value():
                yield from self._last_part(self._hive._value(self.task_id, self._answer))
        finally:
            if self._answer is None:
                self.close()

    def result(self, timeout: float | None = None) -> Any:
        """The task's combined result (the parts joined when they are text): waits like
        :meth:`TaskHandle.result <hive_ray.TaskHandle.result>`."""
        if self._answer is not None:
            return self._hive._value(self.task_id, self._answer, timeout)
        return self._hive.result(self.task_id, timeout)

    def close(self) -> None:
        """Stop reading; cancels the task if it has not ended, unless ``detach``."""
        if self._answer is None and not self.detach:
            self._hive._cancel_quietly([self.task_id])

    def __enter__(self) -> TaskStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ async
    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            while self._answer is None:
                reply = await self._hive._call_async("stream_parts", self.task_id, self._after,
                                                     self._poll_seconds(), timeout=self._poll_seconds())
                for item in self._take(reply):
                    yield item
            if self._needs_value():
                for item in self._last_part(await self._hive._value_async(self.task_id, self._answer)):
                    yield item
        finally:
            if self._answer is None and not self.detach:
                await self._cancel_async()

    async def _cancel_async(self) -> None:
        try:
            await self._hive._call_async("cancel_many", [self.task_id], timeout=STREAM_CANCEL_SECONDS)
        except BaseException as error:  # noqa: BLE001 - already leaving: say so, do not mask it
            logger.warning("could not cancel task %s after its stream was closed: %s", self.task_id, error)

    # ------------------------------------------------------------------ shared
    def _poll_seconds(self) -> float:
        if self.idle_timeout is None:
            return STREAM_POLL_SECONDS
        remaining = self._last_item_at + self.idle_timeout - time.monotonic()
        if remaining <= 0:
            raise TaskTimeoutError(
                f"task {self.task_id} produced no part within idle_timeout={self.idle_timeout:g} s",
                task_id=self.task_id, state="running")
        return min(STREAM_POLL_SECONDS, remaining)

    def _take(self, reply: dict[str, Any]) -> list[Any]:
        self.missed += reply["missed"]
        taken = []
        for sequence, kind, value in reply["items"]:
            self._after = sequence
            if kind == "part":
                taken.append(value)
                self._yielded = True
            else:
                self.restarts += 1
                taken.append(StreamRestart(attempt=value))
        if reply["items"]:
            self._last_item_at = time.monotonic()
        self._streamed = self._streamed or reply["streamed"]
        if reply["ended"]:
            self._answer = tuple(reply["answer"])  # type: ignore[assignment]
        return taken

    def _needs_value(self) -> bool:
        """Resolve the result: to raise the task's error, or to yield it as the one part."""
        assert self._answer is not None
        return self._answer[0] != "succeeded" or not (self._yielded or self.missed or self._streamed)

    def _last_part(self, value: Any) -> list[Any]:
        """The whole result as the one part, for a consumer that got no part of it."""
        return [] if self._yielded or self.missed or self._streamed else [value]

    def __repr__(self) -> str:
        state = "ended" if self._answer is not None else "open"
        return f"<TaskStream {self.task_id} pool={self.pool!r} {state}>"


__all__ = ["STREAM_POLL_SECONDS", "StreamRestart", "TaskStream"]
