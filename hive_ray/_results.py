"""Turning the orchestrator's ``(state, value, error)`` answers into results or errors.

Results larger than ``max_result_bytes_in_memory`` (or than a data-plane frame
can carry) do not travel with the answer: the host keeps them until the
orchestrator has them put in Ray's object store, owned by the orchestrator so
that they outlive the host. Everywhere the value would travel or be stored (the
stream, task records, the journal) a :class:`StoredResult` stands in for it,
and readers exchange it for the value with :func:`resolve` (or
:func:`resolve_async`): one Ray call for the object reference, then ``ray.get``.
The reference itself never travels by pickle (that would pin the object for
ever); only the orchestrator's ``fetch_result`` hands it out, as a Ray return
value that Ray counts.
"""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from hive_ray._errors import (
    ResultLostError,
    TaskCancelledError,
    TaskError,
    TaskFailedError,
    TaskTimeoutError,
)

#: What ``wait`` answers when the task has not ended within the wait's timeout.
PENDING = "pending"

_ERRORS: dict[str, type[TaskError]] = {
    "failed": TaskFailedError,
    "cancelled": TaskCancelledError,
    "timed_out": TaskTimeoutError,
}


class StoredResult:
    """Stands in for a task's result that is kept in Ray's object store.

    ``key`` names it on the host until the orchestrator takes it, ``size`` is
    its pickled size in bytes, ``ref`` the object reference (only inside the
    orchestrator, never pickled: a copy carries ``key`` and ``size`` alone).
    """

    __slots__ = ("key", "size", "ref")

    def __init__(self, key: str, size: int, ref: Any = None) -> None:
        self.key = key
        self.size = size
        self.ref = ref

    def __reduce__(self) -> tuple[Any, ...]:
        return (StoredResult, (self.key, self.size))

    def __eq__(self, other: object) -> bool:
        return type(other) is StoredResult and (other.key, other.size) == (self.key, self.size)

    def __hash__(self) -> int:
        return hash((self.key, self.size))

    def __repr__(self) -> str:
        return (f"<result of {self.size:,} bytes kept in Ray's object store: hive.result(task_id) "
                "or hive.task(task_id) fetch it>")


def result_lost(task_id: str, size: int, why: str) -> ResultLostError:
    """The error for a stored result that is gone, with what to do about it."""
    return ResultLostError(
        f"task {task_id} succeeded, but its result ({size:,} bytes, kept in Ray's object store "
        f"because it was larger than max_result_bytes_in_memory) is gone: {why}. A stored result "
        "lives while its task's record is in the orchestrator's memory (finished_retention_count, "
        "finished_retention_seconds), within max_stored_result_bytes, and as long as that "
        "orchestrator runs; run the task again to get it, and fetch large results soon after.",
        task_id=task_id, state="succeeded")


def unwrap(task_id: str, answer: tuple[str, Any, dict[str, Any] | None]) -> Any:
    """Return the result of a succeeded task, or raise the matching :class:`TaskError`.

    A result kept in the object store comes back as its :class:`StoredResult`;
    :func:`resolve` exchanges it for the value.
    """
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


def resolve(task_id: str, value: Any, fetch_reference: Callable[[str], list[Any]],
            timeout: float | None = None) -> Any:
    """``value`` itself, or, for a :class:`StoredResult`, the value it stands for.

    ``fetch_reference(task_id)`` calls the orchestrator's ``fetch_result`` (a
    Ray call: the reference must travel as a Ray return value).
    """
    if type(value) is not StoredResult:
        return value
    import ray
    from ray.exceptions import GetTimeoutError, ObjectLostError

    [reference] = fetch_reference(task_id)
    try:
        return ray.get(reference, timeout=timeout)
    except GetTimeoutError:
        raise TaskTimeoutError(
            f"task {task_id} succeeded, but its result ({value.size:,} bytes) did not arrive from Ray's "
            f"object store within {timeout} s; call result() again with a longer timeout",
            task_id=task_id, state="succeeded") from None
    except ObjectLostError as error:
        raise result_lost(task_id, value.size, f"Ray lost it ({type(error).__name__})") from None


async def resolve_async(task_id: str, value: Any,
                        fetch_reference: Callable[[str], Awaitable[list[Any]]]) -> Any:
    """:func:`resolve` for async code (the API's replicas, agents that delegate)."""
    if type(value) is not StoredResult:
        return value
    from ray.exceptions import ObjectLostError

    [reference] = await fetch_reference(task_id)
    try:
        return await reference
    except ObjectLostError as error:
        raise result_lost(task_id, value.size, f"Ray lost it ({type(error).__name__})") from None


#: Longest error message an outcome carries (the traceback is cut to 4,000 characters).
MAX_ERROR_MESSAGE = 10_000


def describe_error(error: BaseException) -> dict[str, Any]:
    """A structured, picklable description of an exception raised by a handler."""
    cls = type(error)
    qualified = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    message = str(error) or cls.__name__
    if len(message) > MAX_ERROR_MESSAGE:  # it travels in the batch's frame, beside its siblings
        message = f"{message[:MAX_ERROR_MESSAGE]}... ({len(message):,} characters in all)"
    return {
        "type": qualified,
        "message": message,
        "traceback": "".join(traceback.format_exception(cls, error, error.__traceback__))[-4000:],
    }


__all__ = ["PENDING", "StoredResult", "describe_error", "resolve", "resolve_async", "result_lost", "unwrap"]
