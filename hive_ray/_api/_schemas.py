"""Request and response bodies that exist only at the HTTP boundary.

Task and pool bodies reuse the public models (:class:`hive_ray.TaskSpec`,
:class:`hive_ray.PoolSpec`, :class:`hive_ray.PoolInfo`, :class:`hive_ray.TaskRecord`);
these are the few shapes the API adds (a message to a virtual agent and its
state among them). Unknown fields are refused.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, create_model

from hive_ray._models import INTEGER_ONLY, AutoscaleSpec, PoolSpec


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def pool_request_models(limit: int) -> tuple[type[PoolSpec], type[BaseModel]]:
    """The bodies of ``POST /v1/pools`` and ``PATCH /v1/pools/{name}``, bounded by ``limit``.

    ``limit`` is the ``max_agents_per_pool`` setting. It is stated in the OpenAPI
    document as each size field's ``maximum`` and enforced with a message that
    names the setting, so a client generated from the document and a person
    reading a 422 both know the bound and who can raise it.
    """

    def at_most(field: str) -> Any:
        def check(value: int) -> int:
            if value > limit:
                raise ValueError(f"{field} {value} is above the max_agents_per_pool setting ({limit}); "
                                 "ask for fewer agents, or have an admin raise the setting")
            return value

        return AfterValidator(check)

    def bounded(field: str, minimum: int) -> Any:
        # The constraint before the validators, so that the schema shows it as "minimum".
        return Annotated[StrictInt, Field(ge=minimum, json_schema_extra={"maximum": limit}),
                         INTEGER_ONLY, at_most(field)]

    def size(field: str, default: int, minimum: int, description: str) -> Any:
        return (bounded(field, minimum), Field(min(default, limit), description=f"{description} At most {limit} "
                                                  "(the max_agents_per_pool setting)."))

    autoscale = create_model(
        "AutoscaleRequest", __base__=AutoscaleSpec, __doc__=AutoscaleSpec.__doc__,
        min_agents=size("autoscale.min_agents", 1, 0, "At least this many; at most max_agents."),
        max_agents=size("autoscale.max_agents", 10, 1, "At most this many; at least min_agents."),
    )
    pool = create_model(
        "PoolRequest", __base__=PoolSpec, __doc__=PoolSpec.__doc__,
        count=size("count", 1, 0, "Agents to start (added to an existing pool)."),
        autoscale=(autoscale | None, Field(None, description="Let the pool size follow the load.")),
    )
    scale = create_model(
        "PoolScale", __base__=_Body, __doc__="The size a pool should have.",
        count=(bounded("count", 0),
               Field(..., description=f"Agents the pool should have: an integer, at most {limit} "
                                      "(the max_agents_per_pool setting).")),
    )
    return pool, scale


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


class AgentMessage(_Body):
    """A message to one virtual agent: a task of its type whose affinity key is the agent's key."""

    message: Any = Field(..., description="The message as JSON: the agent's handle() gets it as "
                         "task.payload (for cart: {\"op\": \"add\", \"item\": \"apple\", \"quantity\": 2}).")
    message_id: str | None = Field(
        None, min_length=1, max_length=256, description="A message sent again with this id is not run "
        "again: the first sending's task is answered. The Idempotency-Key header is the same.")


class AgentState(_Body):
    """One virtual agent as ``GET /v1/agents/{agent_type}/{key}`` answers it."""

    agent_type: str
    key: str
    pool: str = Field(..., description="The pool that runs the type.")
    owner: str | None = Field(..., description="The shard (agent id) that owns the key; null while the "
                              "pool has no agent ready.")
    version: int = Field(..., description="Saves of its state so far; 0: never saved.")
    state: Any = Field(..., description="Its saved state as JSON (null: never saved). Values JSON cannot "
                       "hold are their str() text, and a state JSON cannot hold at all (keys that are not "
                       "strings) is its repr() text.")
    activation: dict[str, Any] | None = Field(
        ..., description="Where it is active now (activation id, version, turns, idle_seconds); null: not "
        "active (its next message activates it).")


class Problem(_Body):
    """RFC 9457 problem details (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, str]] | None = Field(
        None, description="On 422, each offending field: `field` (dotted), `in` (body, query, path or "
        "header), `message`, and `code` (the validation error's type; `fields_disagree` for fields "
        "valid one by one but not together, such as a backoff's initial delay above its maximum).")


class Ready(_Body):
    model_config = ConfigDict(extra="allow", frozen=True)

    status: str
