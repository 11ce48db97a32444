"""Turning the orchestrator's ``(state, value, error)`` answers into results or errors."""

from __future__ import annotations

from typing import Any

from hive_ray._errors import TaskCancelledError, TaskError, TaskFailedError, TaskTimeoutError

#: What ``wait`` answers when the task has not ended within the wait's timeout.
PENDING = "pending"

_ERRORS: dict[str, type[TaskError]] = {
    "failed": TaskFailedError,
    "cancelled": TaskCancelledError,
    "timed_out": TaskTimeoutError,
}


def unwrap(task_id: str, answer: tuple[str, Any, dict[str, Any] | None]) -> Any:
    """Return the result of a succeeded task, or raise the matching :class:`TaskError`."""
    state, value, error = answer
    if state == "succeeded":
        return value
    if state == PENDING:
        raise TaskTimeoutError(
            f"task {task_id} has not finished within the wait's timeout; it keeps running. "
            "Call result() again with a longer timeout, or cancel it.",
            task_id=task_id,
            state="running",
        )
    error = error or {}
    kind = _ERRORS.get(state, TaskFailedError)
    detail = error.get("message") or state
    error_type = error.get("type")
    prefix = f"{error_type}: " if error_type and state == "failed" else ""
    raise kind(f"task {task_id} {state.replace('_', ' ')}: {prefix}{detail}", task_id=task_id, state=state, error=error)
