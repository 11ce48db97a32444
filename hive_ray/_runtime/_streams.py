"""Streaming tasks: parts from an agent's generator to whoever consumes them.

A mixin of :class:`~hive_ray._runtime._orchestrator.Orchestrator`. An agent
whose ``handle`` is a generator yields parts; its host sends them here in
batches, those of all its streaming tasks together (:meth:`Streams.report_parts_many`,
one call or data-plane frame in flight per host, see
:mod:`hive_ray._runtime._host_streams`), and consumers long-poll for them by
sequence number (:meth:`Streams.stream_parts`: the Python client's
``hive.stream``, the API's Server-Sent Events and gRPC streams). Each task's
unread parts wait in a bounded :class:`~hive_ray._stream_buffer.PartBuffer`: a
full buffer refuses the host's next batch, which it offers again after a
pause, and so the generator waits until the consumer reads (back-pressure).
The task's record keeps the combined result, whatever the consumers did.

Buffers live while their task runs and go when it ended and its consumer read
the end, or :data:`STREAM_KEEP_SECONDS` after it ended: a consumer that comes
later gets the task's result as one part (after a ``restart`` item if it had
seen parts of it). Buffers number their items from the time in microseconds,
so a consumer's cursor from before an orchestrator restart is recognised.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hive_ray._errors import TaskNotFoundError
from hive_ray._runtime._state import SharedState
from hive_ray._stream_buffer import RESTART, PartBuffer
from hive_ray._task import TaskState

#: How long an ended task's unread parts wait for their consumer.
STREAM_KEEP_SECONDS = 60.0
#: Most items one read returns.
STREAM_READ_LIMIT = 1000


class Streams(SharedState):
    """Buffers of streaming tasks, fed by hosts and read by consumers."""

    _stream_changes: dict[str, asyncio.Event]

    def _init_streams(self) -> None:
        self._streams = {}
        self._stream_changes = {}

    async def report_parts(self, task_id: str, agent_id: str, attempt: int, parts: list[Any],
                           opening: bool = False) -> bool:
        """A host's batch of parts of ``task_id``'s attempt ``attempt`` on ``agent_id``.

        ``opening`` comes first (with no parts) from each run of the handler, so
        that a run after a lost host starts with a ``restart`` item.

        Answers once the parts are buffered: while the buffer is full and its
        consumer reads, that is when the consumer has read. False: the attempt
        no longer runs (cancelled, timed out, run again elsewhere), send no more.
        """
        buffer = None
        while True:
            entry = self._tasks.get(task_id)
            if entry is None or entry.state != TaskState.RUNNING or entry.attempts != attempt \
                    or entry.agent_id != agent_id:
                return False
            buffer = buffer or self._stream_buffer(task_id)
            if not parts or buffer.room():
                break
            # Wait for a read; a consumer that stops reading stops holding the producer.
            await self._stream_changed(task_id, buffer.reader_idle_seconds)
        accepted = buffer.put(attempt, parts, opening=opening)
        self._notify_stream(task_id)
        return accepted

    async def report_parts_many(self, batches: list[tuple[str, str, int, list[Any], bool]]) -> list[bool | None]:
        """Several runs' batches (``(task_id, agent_id, attempt, parts, opening)``) in one call,
        from a host's :class:`~hive_ray._runtime._host_streams.PartMux` (as a Ray call; over
        the host's data-plane stream, :meth:`_take_parts` answers its PARTS frames). Never
        waits: each answer is True (buffered), False (the attempt no longer runs) or None (its
        buffer is full: that host offers the batch again after a pause, so no call waits here
        for a slow consumer; :meth:`report_parts`, which waits, serves hosts of earlier versions)."""
        return self._take_parts(batches)

    def _take_parts(self, batches: list[tuple[str, str, int, list[Any], bool]]) -> list[bool | None]:
        answers: list[bool | None] = []
        for task_id, agent_id, attempt, parts, opening in batches:
            entry = self._tasks.get(task_id)
            if entry is None or entry.state != TaskState.RUNNING or entry.attempts != attempt \
                    or entry.agent_id != agent_id:
                answers.append(False)
                continue
            buffer = self._stream_buffer(task_id)
            if parts and not buffer.room():
                answers.append(None)
                continue
            answers.append(buffer.put(attempt, parts, opening=opening))
            self._notify_stream(task_id)
        return answers

    async def stream_parts(self, task_id: str, after: int = 0, timeout: float = 0.0,
                           limit: int = STREAM_READ_LIMIT) -> dict[str, Any]:
        """Items of ``task_id``'s stream after sequence ``after``; long-polls up to ``timeout`` s.

        Returns ``items`` (``(sequence, kind, value)``, kind ``part`` or
        ``restart``), ``missed`` (items dropped unread after ``after``),
        ``ended`` and, once ended, ``answer``: the task's ``(state, result, error)``.
        ``streamed`` is False when no part of the task reached a buffer that is
        still here (its handler is not a generator, or the parts are gone):
        the result is then all there is.
        """
        await self._ensure_started()
        entry = self._tasks.get(task_id) or self._from_journal(task_id)
        if entry is None:
            raise TaskNotFoundError(task_id=task_id)
        buffer = self._streams.get(task_id)
        if buffer is None and not entry.state.terminal:
            buffer = self._stream_buffer(task_id)  # the consumer came first: it reads from the start
        deadline = time.monotonic() + max(0.0, timeout)
        while buffer is not None:
            read = buffer.read(after, max(1, min(limit, STREAM_READ_LIMIT)))
            self._notify_stream(task_id)  # room for a producer that waits
            remaining = deadline - time.monotonic()
            if read.items or read.ended or remaining <= 0:
                break
            await self._stream_changed(task_id, remaining)
            if self._streams.get(task_id) is not buffer:  # dropped meanwhile (kept long enough)
                buffer = None
        if buffer is None:
            ended = entry.state.terminal
            # A consumer that saw parts of a buffer gone since (an orchestrator restart, or it
            # came back after the buffer was dropped) starts over: the result is what follows.
            items = [(after + 1, RESTART, entry.attempts)] if ended and after > 0 else []
            return {"items": items, "missed": 0, "ended": ended, "streamed": False,
                    "last_sequence": after + len(items),
                    "answer": (entry.state.value, entry.result, entry.error) if ended else None}
        items = read.items
        if 0 < after < buffer.base:
            # Its cursor is from a buffer before this one (the orchestrator restarted): what it
            # saw may have gaps after it, so it starts over with what this buffer has.
            items = [(buffer.base, RESTART, entry.attempts), *items]
        if read.ended:
            self._drop_stream(task_id)  # read to the end
        return {"items": items, "missed": read.missed, "ended": read.ended,
                "streamed": buffer.attempt > 0, "last_sequence": buffer.last_sequence,
                "answer": (entry.state.value, entry.result, entry.error) if read.ended else None}

    # ------------------------------------------------------------------ internals
    def _stream_buffer(self, task_id: str, *, expect_reader: bool = False) -> PartBuffer:
        buffer = self._streams.get(task_id)
        if buffer is None:
            buffer = self._streams[task_id] = PartBuffer(
                self.settings.stream_buffer_parts, self.settings.stream_reader_idle_seconds, time.monotonic,
                expect_reader=expect_reader, first_sequence=time.time_ns() // 1000)
        return buffer

    def _expect_stream_readers(self, task_ids: list[str]) -> None:
        """Tasks submitted to be streamed (``"stream": True`` in their template): their
        consumer counts as reading from the start, so no first part is dropped before it reads."""
        for task_id in task_ids:
            self._stream_buffer(task_id, expect_reader=True)

    def _stream_ended(self, task_id: str) -> None:
        """Called by the task store as any task ends (cheap when it has no stream)."""
        buffer = self._streams.get(task_id)
        if buffer is None:
            return
        buffer.end()
        self._notify_stream(task_id)
        asyncio.get_running_loop().call_later(STREAM_KEEP_SECONDS, self._drop_stream, task_id, buffer)

    def _drop_stream(self, task_id: str, buffer: PartBuffer | None = None) -> None:
        if buffer is None or self._streams.get(task_id) is buffer:
            self._streams.pop(task_id, None)
            self._notify_stream(task_id)
            self._stream_changes.pop(task_id, None)

    def _notify_stream(self, task_id: str) -> None:
        changed = self._stream_changes.pop(task_id, None)
        if changed is not None:
            changed.set()

    async def _stream_changed(self, task_id: str, timeout: float) -> None:
        """Wait until something happens to ``task_id``'s stream, at most ``timeout`` s."""
        changed = self._stream_changes.get(task_id)
        if changed is None:
            changed = self._stream_changes[task_id] = asyncio.Event()
        try:
            await asyncio.wait_for(changed.wait(), max(0.0, timeout))
        except asyncio.TimeoutError:
            pass


__all__ = ["STREAM_KEEP_SECONDS", "Streams"]
