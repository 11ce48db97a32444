"""The task store: every task's record, its ending, retention, waiters, events and dead letters.

A mixin of :class:`~hive_ray._runtime._orchestrator.Orchestrator`. Records
live in ``_tasks`` until retention drops them (finished ones are then read
from the journal); :meth:`TaskStore._end` is the one place a task ends: it
counts, journals, emits the event (and the ``hive.task`` span of a task the
orchestrator sampled) and wakes whoever waits for the answer.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from hive_ray._errors import TaskNotFoundError
from hive_ray._results import PENDING
from hive_ray._task import TaskEntry, TaskState, check_transition

if TYPE_CHECKING:
    from hive_ray._runtime._durability import TaskJournal
    from hive_ray._settings import Settings

#: Dead-lettered task ids remembered in memory (the records themselves follow retention).
DEAD_LETTER_LIMIT = 10_000

#: How long a ``wait(expected=True)`` for a not-yet-known task id waits for its submit.
EARLY_WAIT_GRACE_SECONDS = 30.0


class TaskStore:
    """Task records, endings, retention, waiting, queries and event streams."""

    _tasks: dict[str, TaskEntry]
    _waiters: dict[str, list[asyncio.Future[Any]]]
    _events: deque[dict[str, Any]]
    _event_sequence: itertools.count
    _event_signal: asyncio.Event | None
    _dead_letters: OrderedDict[str, str]  # task id -> its pool, newest last
    _journal: TaskJournal | None
    _finished: OrderedDict[str, None]
    _idempotency: dict[tuple[str, str], str]
    _counters: dict[str, int]
    _pools: dict[str, Any]
    _task_sampling: Any  # hive_ray._task_sampling.TaskSampling when tracing is on
    _streams: dict[str, Any]  # task id -> PartBuffer (see _streams.py)
    settings: Settings

    # ------------------------------------------------------------------ endings
    def _end(self, entry: TaskEntry, state: TaskState, *, result: Any = None,
             error: dict[str, Any] | None = None, dead_letter: bool = False) -> None:
        check_transition(entry.state, state)
        entry.state, entry.finished_at = state, time.time()
        entry.result, entry.error = result, error
        pool = self._pools.get(entry.pool)
        if pool is not None:
            if state == TaskState.SUCCEEDED:
                pool.succeeded += 1
            elif state == TaskState.FAILED:
                pool.failed += 1
        self._counters[state.value] += 1
        if dead_letter:
            self._counters["dead_lettered"] += 1
            self._dead_letters[entry.task_id] = entry.pool
            if len(self._dead_letters) > DEAD_LETTER_LIMIT:
                self._dead_letters.popitem(last=False)
            entry.metadata = {**entry.metadata, "dead_letter": "true"}
        if self._journal is not None:
            self._journal.record(entry, dead_letter=dead_letter)
        if entry.trace_context is not None and self._task_sampling is not None:
            self._task_sampling.end(entry, dead_letter=dead_letter)  # a task sampled here: its root span
        self._emit(entry, state.value)
        self._resolve_waiters(entry)
        if entry.task_id in self._streams:
            self._stream_ended(entry.task_id)
        self._retain(entry.task_id)

    def _retain(self, task_id: str) -> None:
        finished = self._finished
        finished[task_id] = None
        limit = self.settings.finished_retention_count
        horizon = time.time() - self.settings.finished_retention_seconds
        while finished:
            oldest_id = next(iter(finished))
            oldest = self._tasks.get(oldest_id)
            if len(finished) > limit or oldest is None or (oldest.finished_at or 0) < horizon:
                finished.popitem(last=False)
                gone = self._tasks.pop(oldest_id, None)
                if gone is not None and gone.idempotency_key is not None:
                    self._idempotency.pop((gone.pool, gone.idempotency_key), None)
            else:
                break

    # ------------------------------------------------------------------ waiting
    async def wait(self, task_id: str, timeout: float | None = None,
                   expected: bool = False) -> tuple[str, Any, Any]:
        """``(state, result, error)`` once the task ends, or ``("pending", None, None)``.

        ``expected`` is for a client that sends ``submit`` and ``wait`` together:
        an unknown id is then waited for (for :data:`EARLY_WAIT_GRACE_SECONDS`)
        instead of refused.
        """
        await self._ensure_started()  # type: ignore[attr-defined]  (a restart recovers first)
        entry = self._tasks.get(task_id)
        if entry is None and not expected:
            entry = self._from_journal(task_id)
        if entry is not None and entry.state.terminal:
            return (entry.state.value, entry.result, entry.error)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiters.setdefault(task_id, []).append(future)
        if entry is None:
            loop.call_later(EARLY_WAIT_GRACE_SECONDS, self._expire_early_wait, task_id, future)
        try:
            if timeout is None:
                return await future
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            return (PENDING, None, None)
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[task_id]

    def _expire_early_wait(self, task_id: str, future: asyncio.Future[Any]) -> None:
        if task_id not in self._tasks and not future.done():
            future.set_exception(TaskNotFoundError(task_id=task_id))

    async def wait_many(self, task_ids: list[str], timeout: float | None = None) -> list[tuple[str, Any, Any]]:
        """Answers for every id, in order, once all ended (or the timeout ran out)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        answers = []
        for task_id in task_ids:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            answers.append(await self.wait(task_id, remaining))
        return answers

    def _resolve_waiters(self, entry: TaskEntry) -> None:
        waiters = self._waiters.pop(entry.task_id, None)
        if waiters:
            answer = (entry.state.value, entry.result, entry.error)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(answer)

    # ------------------------------------------------------------------ events
    def _emit(self, entry: TaskEntry | None, state: str, *, task_id: str = "", pool: str = "",
              **extra: Any) -> None:
        self._events.append({
            "sequence": next(self._event_sequence), "time": time.time(),
            "task_id": entry.task_id if entry is not None else task_id,
            "pool": entry.pool if entry is not None else pool, "state": state, **extra,
        })

    def _signal_events(self) -> None:
        if self._event_signal is not None:
            self._event_signal.set()

    async def report_progress(self, task_id: str, fraction: float, message: str | None = None) -> None:
        entry = self._tasks.get(task_id)
        if entry is None or entry.state != TaskState.RUNNING:
            return
        entry.progress, entry.progress_message = fraction, message
        self._emit(entry, "progress", progress=fraction, message=message)
        self._signal_events()

    async def events(self, after: int = 0, timeout: float = 0.0, task_id: str | None = None,
                     limit: int = 1000) -> dict[str, Any]:
        """Events with a sequence above ``after``; long-polls up to ``timeout`` seconds.

        ``missed`` is True when events after ``after`` were already dropped from
        the bounded buffer (a consumer that fell behind should re-read state).
        """
        await self._ensure_started()  # type: ignore[attr-defined]
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            found = self._events_after(after, task_id, limit)
            last = self._events[-1]["sequence"] if self._events else 0
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                oldest = self._events[0]["sequence"] if self._events else 0
                return {"events": found, "last_sequence": last, "missed": bool(after and oldest > after + 1)}
            assert self._event_signal is not None
            self._event_signal.clear()
            try:
                await asyncio.wait_for(self._event_signal.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def _events_after(self, after: int, task_id: str | None, limit: int) -> list[dict[str, Any]]:
        # Every event comes from _emit with the next sequence number, so the buffer holds
        # a contiguous run: a follower starts at its position instead of scanning it all.
        events = self._events
        if not events:
            return []
        start = max(0, after - events[0]["sequence"] + 1)
        newer = itertools.islice(events, start, None)
        if task_id is None:
            return list(itertools.islice(newer, limit))
        return list(itertools.islice((e for e in newer if e["task_id"] == task_id), limit))

    # ------------------------------------------------------------------ records
    def _entry(self, task_id: str) -> TaskEntry:
        entry = self._tasks.get(task_id) or self._from_journal(task_id)
        if entry is None:
            raise TaskNotFoundError(task_id=task_id)
        return entry

    def _from_journal(self, task_id: str) -> TaskEntry | None:
        """A finished task pruned from memory may still be in the journal."""
        return self._journal.get(task_id) if self._journal is not None else None

    async def task(self, task_id: str) -> dict[str, Any]:
        await self._ensure_started()  # type: ignore[attr-defined]
        return self._record(self._entry(task_id))

    async def tasks(self, state: str | None = None, pool: str | None = None, limit: int = 100,
                    cursor: str | None = None) -> dict[str, Any]:
        """Tasks in memory, newest first; ``cursor`` is the previous page's ``next_cursor``."""
        await self._ensure_started()  # type: ignore[attr-defined]
        limit = max(1, min(1000, limit))
        entries = reversed(self._tasks.values())
        if cursor is not None:
            entries = itertools.dropwhile(lambda e: e.task_id != cursor, entries)
            next(entries, None)
        page = []
        for entry in entries:
            if (state is None or entry.state.value == state) and (pool is None or entry.pool == pool):
                page.append(entry)
                if len(page) > limit:
                    break
        more = len(page) > limit
        page = page[:limit]
        return {"tasks": [self._record(e) for e in page],
                "next_cursor": page[-1].task_id if more and page else None}

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Tasks that failed after every allowed attempt, newest first.

        From the journal when there is one, so they survive orchestrator restarts
        (a record still in memory is the same task, only fresher).
        """
        await self._ensure_started()  # type: ignore[attr-defined]
        if self._journal is not None:
            entries = self._journal.dead_letters(limit)  # an indexed read of `limit` rows
            return [self._record(self._tasks.get(entry.task_id) or entry) for entry in entries]
        found = []
        for task_id in reversed(self._dead_letters):
            entry = self._tasks.get(task_id)
            if entry is not None:
                found.append(self._record(entry))
            if len(found) >= limit:
                break
        return found

    @staticmethod
    def _record(entry: TaskEntry) -> dict[str, Any]:
        return {
            "task_id": entry.task_id, "pool": entry.pool, "agent_type": entry.agent_type,
            "state": entry.state.value, "priority": entry.priority, "created_at": entry.created_at,
            "started_at": entry.started_at, "finished_at": entry.finished_at,
            "attempts": entry.attempts, "agent_id": entry.agent_id, "result": entry.result,
            "error": entry.error, "progress": entry.progress, "progress_message": entry.progress_message,
            "usage": entry.usage,
            "timeout": entry.timeout, "affinity_key": entry.affinity_key,
            "idempotency_key": entry.idempotency_key, "metadata": entry.metadata,
        }
