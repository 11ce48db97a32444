"""Tasks that end without an outcome: cancelled by a caller, or past their timeout.

A mixin of :class:`~hive_ray._runtime._orchestrator.Orchestrator`. A running
task's agent is told to stop (its handler is cancelled, or a sync handler sees
``cancel_requested()``); the task ends at once either way, and an outcome that
comes later is counted as late (``_dispatch.py``). The timer loop also wakes
pools whose retries are due.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import Any

from hive_ray._runtime._state import SharedState
from hive_ray._task import TaskEntry, TaskState


class Endings(SharedState):
    """``cancel``, ``cancel_many`` and the timer loop behind task timeouts and due retries."""

    async def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a queued or running task; a task that already ended is left as it is."""
        await self._ensure_started()
        entry = self._entry(task_id)
        self._cancel_entry(entry)
        self._signal_events()
        return self._record(entry)

    async def cancel_many(self, task_ids: list[str]) -> int:
        """Cancel every task of ``task_ids`` that has not ended (unknown ids are skipped).

        What a client sends when it gives up on a ``map`` half-way (an error, Ctrl-C),
        so that no task it no longer waits for keeps running. Returns how many it cancelled.
        """
        await self._ensure_started()
        cancelled = 0
        for task_id in task_ids:
            entry = self._tasks.get(task_id)
            if entry is not None and not entry.state.terminal:
                self._cancel_entry(entry)
                cancelled += 1
        self._signal_events()
        return cancelled

    def _cancel_entry(self, entry: TaskEntry) -> None:
        if entry.state == TaskState.QUEUED:
            pool = self._pools.get(entry.pool)
            if pool is not None:
                pool.scheduler.discard(entry)
            self._end(entry, TaskState.CANCELLED)
        elif entry.state == TaskState.RUNNING:
            if entry.agent_id is not None:
                self._placement.cancel(entry.agent_id, entry.task_id)
            self._end(entry, TaskState.CANCELLED)

    async def _timer_loop(self) -> None:
        """Ends tasks past their timeout and wakes pools whose retries are due."""
        assert self._wakeup is not None
        while True:
            now = time.time()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, _, task_id = heapq.heappop(self._deadlines)
                entry = self._tasks.get(task_id)
                if entry is not None and not entry.state.terminal:
                    self._time_out(entry)
            retry_times = []
            for pool in self._pools.values():
                due = pool.scheduler.next_retry_at()
                if due is not None:
                    if due <= time.monotonic():
                        self._pump(pool)
                    else:
                        retry_times.append(due - time.monotonic())
            delay = min([self._deadlines[0][0] - time.time()] if self._deadlines else [3600.0])
            delay = min([delay, *retry_times])
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), max(0.001, delay))
            except asyncio.TimeoutError:
                pass

    def _time_out(self, entry: TaskEntry) -> None:
        pool = self._pools.get(entry.pool)
        agent_id = entry.agent_id if entry.state == TaskState.RUNNING else None
        if entry.state == TaskState.QUEUED and pool is not None:
            pool.scheduler.discard(entry)
        elif agent_id is not None:
            self._placement.cancel(agent_id, entry.task_id)
        self._end(entry, TaskState.TIMED_OUT, error={
            "type": "TaskTimeoutError",
            "message": f"the task did not finish within its timeout of {entry.timeout} s"})
        self._signal_events()
        if agent_id is not None and pool is not None:
            self._spawn_background(self._check_unresponsive(pool, agent_id, entry.task_id))


__all__ = ["Endings"]
