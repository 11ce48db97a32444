"""``TaskHandle``: what ``Hive.submit`` returns, to wait for, await, stream or cancel one task."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from hive_ray._map_window import _remaining

if TYPE_CHECKING:
    from hive_ray._client import Hive
    from hive_ray._models import TaskRecord
    from hive_ray._streaming import TaskStream


class TaskHandle:
    """A submitted task. ``result()`` blocks; ``await handle`` does not."""

    __slots__ = ("task_id", "pool", "_hive")

    def __init__(self, hive: Hive, task_id: str, pool: str) -> None:
        self._hive = hive
        self.task_id = task_id
        self.pool = pool

    def result(self, timeout: float | None = None) -> Any:
        """The task's result, waiting up to ``timeout`` seconds (None: as long as it takes).

        Raises:
            TaskFailedError, TaskCancelledError, TaskTimeoutError: the task did not succeed,
                or (TaskTimeoutError) it was still running when ``timeout`` ran out.
        """
        # The orchestrator answers at ``timeout``; the client gives up shortly after even if
        # no answer comes (settings.client_timeout_margin_seconds).
        deadline = None if timeout is None else time.monotonic() + timeout
        answer = self._hive._call("wait", self.task_id, timeout, timeout=timeout)
        return self._hive._value(self.task_id, answer, _remaining(deadline))

    def __await__(self) -> Any:
        return self._await_result().__await__()

    async def _await_result(self) -> Any:
        answer = await self._hive._call_async("wait", self.task_id, None)
        return await self._hive._value_async(self.task_id, answer)

    def stream(self, *, detach: bool = False, idle_timeout: float | None = None) -> TaskStream:
        """The task's parts as its agent yields them (see :meth:`Hive.stream`)."""
        from hive_ray._streaming import TaskStream

        return TaskStream(self._hive, self.task_id, self.pool, detach=detach, idle_timeout=idle_timeout)

    def __aiter__(self) -> Any:
        return self.stream().__aiter__()

    def status(self) -> TaskRecord:
        return self._hive.task(self.task_id)

    def cancel(self) -> TaskRecord:
        return self._hive.cancel(self.task_id)

    def done(self) -> bool:
        return self.status().done

    def __repr__(self) -> str:
        return f"<TaskHandle {self.task_id} pool={self.pool!r}>"

    def _repr_html_(self) -> str:
        return self.status()._repr_html_()


__all__ = ["TaskHandle"]
