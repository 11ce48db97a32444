"""Request and response bodies that exist only at the HTTP boundary.

Task and pool bodies reuse the public models (:class:`hive_ray.TaskSpec`,
:class:`hive_ray.PoolSpec`, :class:`hive_ray.PoolInfo`, :class:`hive_ray.TaskRecord`);
these are the few shapes the API adds. Unknown fields are refused.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolScale(_Body):
    count: int = Field(..., ge=0, le=100_000, description="Agents the pool should have.")


class TaskAccepted(_Body):
    task_id: str
    pool: str
    state: str
    replayed: bool = Field(False, description="True when an Idempotency-Key matched an earlier submission.")


class TaskOutcome(_Body):
    """A submission with ``wait`` that ended in time: the task's final state and result."""

    task_id: str
    state: str
    result: Any = None
    error: dict[str, Any] | None = None


class Problem(_Body):
    """RFC 9457 problem details (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, str]] | None = Field(None, description="The offending fields, on 422.")


class Ready(_Body):
    model_config = ConfigDict(extra="allow", frozen=True)

    status: str
