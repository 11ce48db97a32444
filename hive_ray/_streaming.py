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
from hive_ray._stream_buffer import PART

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


class StreamCursor:
    """One consumer's place in a task's stream, and the rules every consumer follows (this
    client, the API's SSE and gRPC streams, an agent's ``delegate_stream``).

    It reads after the last sequence it saw (``after``; one resumed from a sequence above 0
    has seen parts). When the task ended, its result is the one part for a consumer that got
    no part of it: the handler is not a generator, or its parts were gone before this read.
    """

    __slots__ = ("after", "last_sequence", "missed", "restarts", "answer", "_got_part", "_streamed")

    def __init__(self, after: int = 0) -> None:
        self.after = after
        self.last_sequence = after
        self.missed = 0  # parts dropped before this consumer read them
        self.restarts = 0
        self.answer: tuple[str, Any, Any] | None = None  # (state, result, error) once ended
        self._got_part = after > 0
        self._streamed = False  # a buffer said the task's handler streams

    def take(self, reply: dict[str, Any]) -> list[tuple[int, str, Any]]:
        """The items of a ``stream_parts`` answer, in order; advances the cursor."""
        self.missed += reply["missed"]
        self._streamed = self._streamed or reply["streamed"]
        self.last_sequence = reply["last_sequence"]
        for sequence, kind, _ in reply["items"]:
            self.after = sequence
            if kind == PART:
                self._got_part = True
            else:  # what came before is void: what follows starts over (or the result does)
                self.restarts += 1
                self._got_part, self._streamed = False, reply["streamed"]
        if reply["ended"]:
            self.answer = tuple(reply["answer"])  # type: ignore[assignment]
        return list(reply["items"])

    def result_is_the_part(self) -> bool:
        """The task succeeded and nothing of it reached this consumer: yield its result."""
        assert self.answer is not None
        return self.answer[0] == "succeeded" and not (self._got_part or self._streamed or self.missed)

    def needs_result(self) -> bool:
        """Resolve the result: to raise the task's error, or to yield it as the one part."""
        assert self.answer is not None
        return self.answer[0] != "succeeded" or self.result_is_the_part()


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
        self._cursor = StreamCursor()
        self._last_item_at = time.monotonic()

    @property
    def done(self) -> bool:
        """The task ended and this stream read its end."""
        return self._cursor.answer is not None

    @property
    def missed(self) -> int:
        return self._cursor.missed

    @property
    def restarts(self) -> int:
        return self._cursor.restarts

    # ------------------------------------------------------------------ sync
    def __iter__(self) -> Iterator[Any]:
        cursor = self._cursor
        try:
            while cursor.answer is None:
                reply = self._hive._call("stream_parts", self.task_id, cursor.after, self._poll_seconds(),
                                         timeout=self._poll_seconds())
                yield from self._take(reply)
            if cursor.needs_result():
                value = self._hive._value(self.task_id, cursor.answer)  # raises the task's error
                if cursor.result_is_the_part():
                    yield value
        finally:
            if cursor.answer is None:
                self.close()

    def result(self, timeout: float | None = None) -> Any:
        """The task's combined result (the parts joined when they are text): waits like
        :meth:`TaskHandle.result <hive_ray.TaskHandle.result>`."""
        if self._cursor.answer is not None:
            return self._hive._value(self.task_id, self._cursor.answer, timeout)
        return self._hive.result(self.task_id, timeout)

    def close(self) -> None:
        """Stop reading; cancels the task if it has not ended, unless ``detach``."""
        if self._cursor.answer is None and not self.detach:
            self._hive._cancel_quietly([self.task_id])

    def __enter__(self) -> TaskStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ async
    async def __aiter__(self) -> AsyncIterator[Any]:
        cursor = self._cursor
        try:
            while cursor.answer is None:
                reply = await self._hive._call_async("stream_parts", self.task_id, cursor.after,
                                                     self._poll_seconds(), timeout=self._poll_seconds())
                for item in self._take(reply):
                    yield item
            if cursor.needs_result():
                value = await self._hive._value_async(self.task_id, cursor.answer)  # raises the task's error
                if cursor.result_is_the_part():
                    yield value
        finally:
            if cursor.answer is None and not self.detach:
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
        items = self._cursor.take(reply)
        if items:
            self._last_item_at = time.monotonic()
        return [value if kind == PART else StreamRestart(attempt=value) for _, kind, value in items]

    def __repr__(self) -> str:
        state = "ended" if self.done else "open"
        return f"<TaskStream {self.task_id} pool={self.pool!r} {state}>"


__all__ = ["STREAM_POLL_SECONDS", "StreamCursor", "StreamRestart", "TaskStream"]
