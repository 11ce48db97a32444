"""The errors hive-ray raises, as one small tree under :class:`HiveError`.

::

    HiveError
    ├── ConfigurationError          bad settings, config file or pool options
    │   └── CapacityError           a pool size the cluster (or an admin limit) cannot hold
    ├── HiveConnectionError         no cluster or orchestrator to talk to
    ├── UnknownAgentTypeError       no agent type by that name
    ├── UnknownPoolError            no pool by that name
    ├── NoRouteError                no pool offers the requested capability
    ├── TaskNotFoundError           no task with that id
    ├── IdempotencyConflictError    idempotency key reused with a different body
    ├── OverloadedError             a pool's queue is full; carries retry_after
    ├── JournalError                the durable journal cannot be used
    └── TaskError                   a task ended without a result
        ├── TaskFailedError         its handler raised
        ├── TaskCancelledError      it was cancelled
        ├── TaskTimeoutError        it ran past its timeout
        └── ResultLostError         it succeeded, but its large result is gone

Every error crosses Ray process boundaries intact: each keeps the keyword
arguments it was built with and rebuilds itself from them in ``__reduce__``
(an exception whose constructor does not pass all its arguments to
``super().__init__`` cannot be unpickled, ray-project/ray#50211).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class HiveError(Exception):
    """Base class of every error hive-ray raises on purpose."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.details))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[HiveError], message: str, details: dict[str, Any]) -> HiveError:
    error = cls.__new__(cls)
    HiveError.__init__(error, message, **details)
    return error


def _known(names: Iterable[str]) -> str:
    listed = sorted(names)
    return ", ".join(listed) if listed else "(none)"


class ConfigurationError(HiveError):
    """A setting, config file or pool option is invalid."""


class CapacityError(ConfigurationError):
    """A pool size or scale-up that the cluster, or an admin-set maximum, cannot hold."""


class HiveConnectionError(HiveError):
    """No Ray cluster or no orchestrator could be reached."""


class UnknownAgentTypeError(HiveError):
    """No agent type is registered under the requested name."""

    def __init__(self, message: str = "", *, agent_type: str = "", known: Iterable[str] = ()) -> None:
        known = sorted(known)
        message = message or (
            f"no agent type {agent_type!r}; known types: {_known(known)}. "
            "Register a class with hive_ray.register_agent() or the "
            "'hive_ray.agents' entry point, or pass the class itself to spawn()."
        )
        super().__init__(message, agent_type=agent_type, known=known)


class UnknownPoolError(HiveError):
    """No pool exists under the requested name."""

    def __init__(self, message: str = "", *, pool: str = "", known: Iterable[str] = ()) -> None:
        known = sorted(known)
        message = message or (
            f"no agent pool {pool!r}; known pools: {_known(known)}. "
            "Create it first with Hive.spawn() or `hive spawn`."
        )
        super().__init__(message, pool=pool, known=known)


class NoRouteError(HiveError):
    """No running pool can take a task for the requested agent type or capability."""


class TaskNotFoundError(HiveError):
    """No task with the requested id is known (it never existed or was pruned)."""

    def __init__(self, message: str = "", *, task_id: str = "") -> None:
        message = message or (
            f"no task {task_id!r}: it was never submitted here, or it finished long ago "
            "and was pruned by the retention settings"
        )
        super().__init__(message, task_id=task_id)


class IdempotencyConflictError(HiveError):
    """An idempotency key was reused with a different task body."""


class OverloadedError(HiveError):
    """A pool's queue is full; try again after ``retry_after`` seconds."""

    def __init__(self, message: str = "", *, pool: str = "", retry_after: float = 1.0) -> None:
        message = message or (
            f"pool {pool!r} is overloaded: its queue is full; retry after {retry_after:.1f} s "
            "or scale the pool up"
        )
        super().__init__(message, pool=pool, retry_after=retry_after)

    @property
    def retry_after(self) -> float:
        return float(self.details.get("retry_after", 1.0))


class JournalError(HiveError):
    """The durable task journal cannot be opened, read or written.

    ``reason`` names the failure so that callers can tell them apart without
    parsing the message: ``full`` (no space left), ``read_only`` (permissions),
    ``corrupt``, ``locked`` (another process uses the journal), ``io`` (the
    disk failed), ``closed``, ``unreadable`` (a record this hive-ray cannot
    decode), ``directory`` (the journal directory cannot be used), ``schema``
    (not a hive-ray journal, or another version), ``unencodable`` (a payload
    that does not pickle), ``internal`` (a bug) or ``other``. ``path`` is
    the journal's file or directory.
    """

    @property
    def reason(self) -> str:
        return str(self.details.get("reason", "other"))

    @property
    def path(self) -> str:
        return str(self.details.get("path", ""))


class TaskError(HiveError):
    """A task ended without a result. ``task_id`` and ``error`` say which and why."""

    def __init__(
        self,
        message: str = "",
        *,
        task_id: str = "",
        state: str = "",
        error: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, task_id=task_id, state=state, error=error or {})

    @property
    def task_id(self) -> str:
        return str(self.details.get("task_id", ""))

    @property
    def error(self) -> dict[str, Any]:
        return dict(self.details.get("error") or {})


class TaskFailedError(TaskError):
    """The agent's handler raised; ``error`` holds its type, message and traceback."""


class TaskCancelledError(TaskError):
    """The task was cancelled before it finished."""


class TaskTimeoutError(TaskError):
    """The task ran past its timeout (or ``result(timeout=...)`` ran out)."""


class ResultLostError(TaskError):
    """The task succeeded, but its result, kept in Ray's object store, is no longer there."""


__all__ = [
    "CapacityError",
    "ConfigurationError",
    "HiveConnectionError",
    "HiveError",
    "IdempotencyConflictError",
    "JournalError",
    "NoRouteError",
    "OverloadedError",
    "ResultLostError",
    "TaskCancelledError",
    "TaskError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskTimeoutError",
    "UnknownAgentTypeError",
    "UnknownPoolError",
]
