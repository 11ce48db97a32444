"""Request and response bodies that exist only at the HTTP boundary.

Task and pool bodies reuse the public models (:class:`hive_ray.TaskSpec`,
:class:`hive_ray.PoolSpec`, :class:`hive_ray.PoolInfo`, :class:`hive_ray.TaskRecord`);
these are the few shapes the API adds (a message to a virtual agent and its
state, a message published to a topic and its subscriptions among them).
Unknown fields are refused.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, create_model

from hive_ray._models import INTEGER_ONLY, AutoscaleSpec, PoolSpec
from hive_ray._virtual import MAX_KEY_LENGTH

#: A path segment cannot hold "/" (clients and proxies read %2F as one): agent types and keys
#: the API names in a path, or subscribes so that a path can remove them again, have none.
NO_SLASH = r"^[^/]+$"


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


class AgentReminder(_Body):
    """A virtual agent's durable reminder: ``on_reminder(name)`` runs when it is due."""

    name: str
    due_at: float = Field(..., description="When it is due next (seconds since the epoch).")
    period_seconds: float | None = Field(..., description="Its period; null: it fires once.")


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
        ..., description="Where it is active now (activation id, version, turns, idle_seconds, timers); "
        "null: not active (its next message activates it).")
    reminders: list[AgentReminder] = Field(
        default_factory=list, description="Its durable reminders (set with set_reminder in the agent).")


class TopicMessage(_Body):
    """A message published to a topic: one message task per subscribed virtual agent."""

    message: Any = Field(..., description="The message as JSON: each subscriber's handle() gets it as "
                         "task.payload, with the topic in task.metadata[\"topic\"].")
    source: str | None = Field(
        None, min_length=1, max_length=MAX_KEY_LENGTH, description="Where it comes from (AutoGen's "
        "TopicId source): in every agent type subscribed to the topic by type, the agent whose key "
        "is `source` receives it. Without it, only agents subscribed one by one receive it.")
    message_id: str | None = Field(
        None, min_length=1, max_length=256, description="A message published again to the topic with "
        "this id is not delivered again: the first publish's answer comes back, with `duplicate` "
        "true. The Idempotency-Key header is the same.")


class AgentAddress(_Body):
    """One virtual agent: its type and key."""

    agent_type: str
    key: str


class TopicPublished(_Body):
    """What ``POST /v1/topics/{topic}/messages`` answers once every delivery is accepted (journaled)."""

    topic: str
    sequence: int = Field(..., description="The message's number in the topic's log: the `id` of its "
                          "event in GET /v1/topics/{topic}/events.")
    deliveries: int = Field(..., description="Message tasks made: one per subscribed agent.")
    task_ids: list[str] = Field(..., description="Those tasks (GET /v1/tasks/{task_id} reads each).")
    undeliverable: list[AgentAddress] = Field(
        ..., description="Subscribers whose type no pool runs as virtual agents now: not delivered.")
    duplicate: bool = Field(..., description="True when `message_id` was published to the topic before: "
                            "this is the first publish's answer, and nothing was delivered again.")


class SubscriptionRequest(_Body):
    """One virtual agent to subscribe to every message of a topic."""

    agent_type: str = Field(..., min_length=1, max_length=200, pattern=NO_SLASH, examples=["cart"],
                            description="A virtual agent type (a VirtualAgent subclass), e.g. `cart`.")
    key: str = Field(..., min_length=1, max_length=MAX_KEY_LENGTH, pattern=NO_SLASH, examples=["user-42"],
                     description=f"The agent's key: 1 to {MAX_KEY_LENGTH} characters, without `/`.")


class SubscriptionAdded(_Body):
    topic: str
    agent_type: str
    key: str
    added: bool = Field(..., description="False when the agent was subscribed already.")


class SubscriptionRemoved(_Body):
    topic: str
    agent_type: str
    key: str
    removed: bool = Field(..., description="False when there was no such subscription.")


class TopicSubscriptions(_Body):
    """Who receives a topic's messages."""

    topic: str
    agent_types: list[str] = Field(..., description="Virtual types subscribed by type (their pools' "
                                   "`subscriptions`): a message with source `s` goes to their agent `s`.")
    agents: list[AgentAddress] = Field(..., description="Agents subscribed one by one: every message of "
                                       "the topic goes to each.")


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
