"""Public records at hive-ray's boundaries (client, HTTP, config files), as pydantic models.

Unknown fields are rejected everywhere, so a typo in a config file or request
fails loudly instead of being ignored. Inside the orchestrator the hot path
uses the slotted dataclasses of :mod:`hive_ray._task` instead.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from hive_ray._pool_config import checked_config
from hive_ray._tables import Attribute, Column, clock_time, html_fields
from hive_ray._task import TaskState

RoutingPolicyName = Literal["least_loaded", "power_of_two", "round_robin", "affinity"]

#: The smallest non-zero resource quantity Ray accepts (it keeps four decimals).
RESOURCE_UNIT = 0.0001
#: Resource names Ray refuses in ``resources`` (they have their own options).
_RESERVED_RESOURCES = frozenset({"CPU", "GPU"})

def _integer_written_as_an_integer(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        raise PydanticCustomError(
            "int_from_float", "write {value} as the integer {integer}: this field takes integers only",
            {"value": value, "integer": int(value)})
    return value


# Numbers at the boundary are strict: ``"3"`` or ``3.0`` for a count is refused, not read as 3.
# JSON Schema cannot say "not 3.0" (to it 3.0 is an integer), so that refusal has its own error
# code, ``int_from_float``, which the OpenAPI document's description of the API names.
INTEGER_ONLY = BeforeValidator(_integer_written_as_an_integer)
Count = Annotated[StrictInt, INTEGER_ONLY]
Number = StrictFloat
Flag = StrictBool
Target = Annotated[str, Field(min_length=1, max_length=256)]
#: An exception's type name, plain or dotted (``ValueError``, ``hive_ray.AgentNotHere``).
TypeName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\W\d]\w*(\.[^\W\d]\w*)*$")]
#: A custom Ray resource's name: printable ASCII without spaces (Ray encodes names as ASCII).
ResourceName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[!-~]+$")]
#: At most a billion of a resource per agent: Ray keeps quantities as fixed-point integers
#: (1/10,000 units in 64 bits), and a host holds agents_per_host agents' worth. The schema
#: says what PoolSpec's validator checks: 0, or between RESOURCE_UNIT and the maximum.
MAX_RESOURCE = 1e9
ResourceQuantity = Annotated[StrictFloat, Field(ge=0, le=MAX_RESOURCE), WithJsonSchema({
    "anyOf": [{"type": "number", "const": 0},
              {"type": "number", "minimum": RESOURCE_UNIT, "maximum": MAX_RESOURCE}]})]
#: GPUs: a fraction of one, or whole ones. Ray refuses 1.5 GPUs when it creates the actor, so the
#: schema says it (and PoolSpec checks it for a packed host, whose agents' GPUs add up).
GpuQuantity = Annotated[StrictFloat, Field(ge=0, le=MAX_RESOURCE), WithJsonSchema({
    "anyOf": [{"type": "number", "const": 0},
              {"type": "number", "minimum": RESOURCE_UNIT, "maximum": 1},
              {"type": "number", "minimum": 1, "maximum": MAX_RESOURCE, "multipleOf": 1}]})]


ConfigKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
def _names_in_property_names(schema: dict[str, Any]) -> None:
    """A dict whose keys have a pattern: pydantic writes ``patternProperties``, which lets other
    keys through (to JSON Schema); say it as ``propertyNames`` and ``additionalProperties``."""
    patterns = schema.pop("patternProperties", {})
    for pattern, values in patterns.items():
        schema.setdefault("propertyNames", {})["pattern"] = pattern
        schema["additionalProperties"] = values


class _Model(BaseModel):
    # allow_inf_nan: JSON parsers accept Infinity and NaN; no setting means either.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TaskSpec(_Model):
    """What to run: a target (agent type, capability or pool) and a payload."""

    # Exactly one of the three targets: the JSON schema says so too (its oneOf, below).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              json_schema_extra=lambda schema: _one_target_schema(schema))

    agent_type: Target | None = Field(None, description="Run on a pool of this agent type.")
    capability: Target | None = Field(None, description="Run on any pool whose agents offer this.")
    pool: Target | None = Field(None, description="Run on this pool.")
    payload: Any = Field(None, description="The task's input, passed to the agent's handle().")
    priority: Count = Field(0, ge=-1000, le=1000, description="Higher runs first.")
    timeout: Number | None = Field(
        None, gt=0, le=86_400, description="Seconds from submission until the task is timed out."
    )
    affinity_key: str | None = Field(
        None, max_length=256, description="Tasks with the same key run on the same agent while it lives."
    )
    idempotency_key: str | None = Field(
        None, max_length=256, description="A repeated submit with this key returns the first task."
    )
    # Constraints of an optional integer sit inside its Annotated, so that the schema states them.
    max_attempts: Annotated[StrictInt, Field(ge=1, le=100), INTEGER_ONLY] | None = Field(
        None, description="Deliveries before the task is dead-lettered (pool default if unset)."
    )
    metadata: dict[str, str] = Field(default_factory=dict, description="Free-form labels.")

    @model_validator(mode="after")
    def _one_target(self) -> TaskSpec:
        targets = [name for name in TARGETS if getattr(self, name) is not None]
        if len(targets) != 1:
            raise ValueError(
                "give exactly one of agent_type, capability or pool"
                + (f" (got {', '.join(targets)})" if targets else "")
            )
        return self

    def template(self) -> dict[str, Any]:
        """Everything but the payload, as the orchestrator's submit_many takes it."""
        return self.model_dump(exclude={"payload"})


TARGETS = ("agent_type", "capability", "pool")


def _one_target_schema(schema: dict[str, Any]) -> None:
    """State "exactly one of agent_type, capability or pool" in the JSON schema itself."""
    schema["oneOf"] = [
        {"title": f"by {name}", "required": [name],
         "properties": {name: {"type": "string", "minLength": 1, "maxLength": 256}}}
        for name in TARGETS
    ]
    schema["description"] = (schema.get("description", "") + " Give exactly one of agent_type, "
                              "capability or pool.").strip()


class ModelUsage(_Model):
    """What a task spent at one model of one endpoint."""

    endpoint: str = Field(..., description="The base URL called, without credentials or query.")
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = Field(None, description="From the llm_prices setting; None: unpriced.")


class TaskUsage(_Model):
    """Tokens a task spent at model endpoints, over all its attempts (see ``record_usage``)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float | None = Field(None, description="Sum over priced models; None when none is priced.")
    models: list[ModelUsage] = Field(default_factory=list)


class TaskRecord(_Model):
    """A task's whole story: what it was, where it ran, how it ended."""

    task_id: str
    pool: str
    agent_type: str
    state: TaskState
    priority: int = 0
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    agent_id: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    progress: float | None = None
    progress_message: str | None = None
    usage: TaskUsage | None = Field(None, description="Tokens spent at model endpoints; None if none.")
    timeout: float | None = None
    affinity_key: str | None = None
    idempotency_key: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state.terminal

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def __repr__(self) -> str:
        where = f" on {self.agent_id}" if self.agent_id else ""
        return f"<Task {self.task_id} {self.state.value} pool={self.pool!r}{where}>"

    TABLE_COLUMNS: ClassVar[tuple[Column, ...]] = ()  # set below the class

    def outcome(self) -> str:
        """The result (if it succeeded) or the error message, short, for tables."""
        if self.state == TaskState.SUCCEEDED:
            return repr(self.result)[:200]
        return str((self.error or {}).get("message", ""))

    def _repr_html_(self) -> str:
        rows = {
            "state": self.state.value,
            "pool": self.pool,
            "agent": self.agent_id or "",
            "attempts": self.attempts,
            "result": repr(self.result)[:200] if self.state == TaskState.SUCCEEDED else "",
            "error": (self.error or {}).get("message", ""),
        }
        if self.usage is not None:  # a task that called models: what it spent
            cost = "" if self.usage.cost_usd is None else f", ${self.usage.cost_usd:.4f}"
            rows["tokens"] = (f"{self.usage.prompt_tokens} prompt + {self.usage.completion_tokens} completion "
                              f"in {self.usage.requests} request(s){cost}")
        return html_fields(f"Task {self.task_id}", rows)


class RestartSpec(_Model):
    """When a pool's agents are restarted (an OTP-style intensity limit with backoff)."""

    max_restarts: Count = Field(5, ge=0, le=10_000, description="Restarts allowed within the window.")
    window_seconds: Number = Field(60.0, gt=0, description="Beyond max_restarts in this window: degraded.")
    backoff_initial_seconds: Number = Field(
        0.1, ge=0, description="Delay before the first restart; at most backoff_max_seconds.")
    backoff_max_seconds: Number = Field(
        10.0, ge=0, description="Longest delay between restarts; at least backoff_initial_seconds.")
    backoff_multiplier: Number = Field(2.0, ge=1)
    jitter: Number = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _backoff_in_order(self) -> RestartSpec:
        _check_backoff("restart", self.backoff_initial_seconds, self.backoff_max_seconds)
        return self


class RetrySpec(_Model):
    """How a pool's tasks are delivered again (agent deaths always; handler errors if asked)."""

    max_attempts: Count = Field(3, ge=1, le=100, description="Deliveries before a task is dead-lettered.")
    backoff_initial_seconds: Number = Field(
        0.05, ge=0, description="Delay before the first retry; at most backoff_max_seconds.")
    backoff_max_seconds: Number = Field(
        5.0, ge=0, description="Longest delay between retries; at least backoff_initial_seconds.")
    multiplier: Number = Field(2.0, ge=1)
    jitter: Number = Field(0.2, ge=0, le=1)
    retry_exceptions: Flag = Field(
        False, description="Also retry tasks whose handler raised (agent deaths are always retried)."
    )
    never_retry: list[TypeName] = Field(
        default_factory=list, max_length=1000,
        description="Exception type names never retried, e.g. ValueError.",
    )

    @model_validator(mode="after")
    def _backoff_in_order(self) -> RetrySpec:
        _check_backoff("retry", self.backoff_initial_seconds, self.backoff_max_seconds)
        return self


class AutoscaleSpec(_Model):
    """Self-tuning pool size: between min and max agents, following the load."""

    min_agents: Count = Field(1, ge=0, le=100_000, description="At least this many; at most max_agents.")
    max_agents: Count = Field(10, ge=1, le=100_000, description="At most this many; at least min_agents.")
    target_queue_per_agent: Number = Field(2.0, gt=0, description="Queued + running tasks per agent to aim for.")
    queue_wait_target_seconds: Number | None = Field(
        None, gt=0, description="Also grow while the queue-wait p95 is above this.")
    upscale_delay_seconds: Number = Field(2.0, ge=0, description="How long the wish to grow must last.")
    downscale_delay_seconds: Number = Field(30.0, ge=0, description="How long the wish to shrink must last.")
    max_step: Count = Field(1000, ge=1, description="Most agents added or removed at once.")

    @model_validator(mode="after")
    def _bounds_in_order(self) -> AutoscaleSpec:
        if self.min_agents > self.max_agents:
            raise fields_disagree(
                ("min_agents", "max_agents"),
                f"autoscale.min_agents ({self.min_agents}) is above autoscale.max_agents "
                f"({self.max_agents}); lower min_agents or raise max_agents")
        return self


class PoolSpec(_Model):
    """A pool of agents of one type, and the Ray resources each agent gets."""

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    agent_type: str = Field(..., min_length=1, max_length=200)
    count: Count = Field(1, ge=0, le=100_000, description="Agents to start (added to an existing pool).")
    num_cpus: ResourceQuantity = Field(0.0, description="CPUs per agent: 0, or at least 0.0001.")
    num_gpus: GpuQuantity = Field(0.0, description="GPUs per agent: 0, a fraction of one (at least 0.0001), "
                                  "or whole GPUs. With packed placement, num_gpus × agents_per_host too.")
    memory: Annotated[StrictInt, Field(gt=0), INTEGER_ONLY] | None = Field(
        None, description="Bytes of memory reserved per agent host.")
    resources: dict[ResourceName, ResourceQuantity] = Field(
        default_factory=dict, max_length=64, json_schema_extra=_names_in_property_names,
        description="Custom Ray resources per agent, e.g. {\"agent_slot\": 1}: each 0, or at least "
        "0.0001; CPU and GPU go in num_cpus and num_gpus.")
    policy: RoutingPolicyName = "least_loaded"
    max_queue: Count = Field(100_000, ge=1, description="Queued tasks beyond this are refused (429).")
    restart: RestartSpec = Field(default_factory=RestartSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    health_check: Flag = Field(True, description="Ping agents periodically and restart unresponsive ones.")
    autoscale: AutoscaleSpec | None = Field(None, description="Let the pool size follow the load.")
    placement: Literal["dedicated", "packed"] = Field(
        "dedicated", description="dedicated: one actor per agent; packed: agents_per_host agents per actor.")
    agents_per_host: Count = Field(
        250, ge=1, le=100_000, description="Agents per host actor with packed placement (resources scale with it).")
    passivate_after_seconds: Number | None = Field(
        None, gt=0, description="Deactivate agents idle this long (on_passivate saves their state); "
        "the next task activates them again. None: never.")
    config: Annotated[dict[ConfigKey, Any], AfterValidator(checked_config)] = Field(
        default_factory=dict, max_length=64, json_schema_extra=_names_in_property_names,
        description="Settings for the pool's agents, read as self.context.config (plain JSON, at most "
        "16 KiB; e.g. the llm agent's base_url and model). No secrets: it is journaled and shown by "
        "the API; name an environment variable instead (api_key_env).")
    subscriptions: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")]] = Field(
        default_factory=list, max_length=64,
        description="Virtual agent types only: topics whose messages go to the agent keyed by the "
        "message's source (added to the type's own subscriptions).")

    @model_validator(mode="after")
    def _resources_ray_accepts(self) -> PoolSpec:
        quantities = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                      **{f"resources.{name}": amount for name, amount in self.resources.items()}}
        for where, amount in quantities.items():
            if 0 < amount < RESOURCE_UNIT:
                raise ValueError(f"{where} is {amount!r}: Ray counts resources in steps of "
                                 f"{RESOURCE_UNIT}; give 0 or at least {RESOURCE_UNIT}")
        per_host = self.agents_per_host if self.placement == "packed" else 1
        gpus = self.num_gpus * per_host  # what placement asks Ray for, for each host
        if gpus > 1 and not float(gpus).is_integer():
            if per_host == 1:
                raise ValueError(f"num_gpus is {self.num_gpus!r}: Ray gives an actor a fraction of one GPU "
                                 "or whole GPUs; give at most 1, or a whole number")
            raise fields_disagree(
                ("num_gpus", "agents_per_host"),
                f"num_gpus ({self.num_gpus:g}) × agents_per_host ({per_host}) is {gpus:g} GPUs for each "
                "packed host, and Ray gives an actor a fraction of one GPU or whole GPUs; choose values "
                "whose product is at most 1 or whole")
        reserved = sorted(_RESERVED_RESOURCES & set(self.resources))
        if reserved:
            raise ValueError(f"resources.{reserved[0]}: give CPUs and GPUs as num_cpus and num_gpus, "
                             "not in resources")
        return self

    def largest_size(self) -> int:
        """The most agents this spec asks for at once: its count, or its autoscale maximum."""
        return max(self.count, self.autoscale.max_agents if self.autoscale else 0)


def _check_backoff(owner: str, initial: float, maximum: float) -> None:
    if initial > maximum:
        raise fields_disagree(
            ("backoff_initial_seconds", "backoff_max_seconds"),
            f"{owner}.backoff_initial_seconds ({initial:g}) is above {owner}.backoff_max_seconds "
            f"({maximum:g}); lower the first or raise the second")


def fields_disagree(fields: tuple[str, ...], message: str) -> PydanticCustomError:
    """A validation error about fields valid one by one but not together.

    Its type is ``fields_disagree`` and its context names the fields (relative to
    the model that raised it), so the API lists each of them in a 422's ``errors``.
    """
    return PydanticCustomError("fields_disagree", message, {"fields": list(fields)})


class AgentInfo(_Model):
    agent_id: str
    pool: str
    agent_type: str
    state: str
    node_id: str | None = None
    pid: int | None = None
    host: str | None = None
    inflight: int = 0
    tasks_done: int = 0
    restarts: int = 0
    started_at: float | None = None

    TABLE_COLUMNS: ClassVar[tuple[Column, ...]] = ()  # set below the class

    def __repr__(self) -> str:
        return f"<Agent {self.agent_id} {self.state} inflight={self.inflight} done={self.tasks_done}>"

    def _repr_html_(self) -> str:
        rows = {"pool": self.pool, "type": self.agent_type, "state": self.state,
                "in flight": self.inflight, "done": self.tasks_done, "restarts": self.restarts,
                "pid": self.pid, "node": (self.node_id or "")[:12], "host": self.host,
                "started": clock_time(self.started_at)}
        return html_fields(f"Agent {self.agent_id}", rows)


class VirtualCounts(_Model):
    """Activations of a virtual agent type, summed over its shards as their hosts last reported."""

    active: int = Field(0, description="Identities active now.")
    activated: int = Field(0, description="Activations made since the shards started.")
    deactivated: int = Field(0, description="Activations dropped (idle, stale) since the shards started.")
    handled: int = Field(0, description="Messages handled since the shards started.")


class PoolInfo(_Model):
    name: str
    agent_type: str
    capabilities: list[str]
    size: int
    desired: int
    state: str
    policy: str
    placement: str
    queued: int
    running: int
    succeeded: int
    failed: int
    agents: list[AgentInfo]
    spec: PoolSpec
    restarts: int = 0
    recent_restarts: list[dict[str, Any]] = Field(default_factory=list)
    dead_letters: int = 0
    starting: int = 0
    queue_wait_p95: float | None = None
    suspects: int = Field(0, description="Tasks of a crashed host that run alone until cleared "
                          "(poison isolation); counted in queued while they wait.")
    virtual: VirtualCounts | None = Field(None, description="A virtual agent type's pool: its activations, "
                                          "as its hosts last reported them (health checks).")

    def __repr__(self) -> str:
        return (f"<Pool {self.name!r} type={self.agent_type} agents={self.size}/{self.desired} "
                f"{self.state} queued={self.queued} running={self.running}>")

    TABLE_COLUMNS: ClassVar[tuple[Column, ...]] = ()  # set below the class

    def _repr_html_(self) -> str:
        rows = {a.agent_id: f"{a.state}, {a.tasks_done} done, pid {a.pid}" for a in self.agents}
        head = {"type": self.agent_type, "state": self.state, "agents": f"{self.size}/{self.desired}",
                "queued": self.queued, "running": self.running}
        if self.virtual is not None:
            head["active agents"] = self.virtual.active
        return html_fields(f"Pool {self.name}", {**head, **rows})


class TaskPage(_Model):
    tasks: list[TaskRecord]
    next_cursor: str | None = None


class TaskEvent(_Model):
    sequence: int
    time: float
    task_id: str
    pool: str
    state: str
    progress: float | None = None
    message: str | None = None



# ---------------------------------------------------------------------- table columns
# What a list of each record shows as a table in Jupyter (hive_ray._tables.RecordList).
def _started(record: Any) -> str:
    return clock_time(record.started_at)


def _created(record: TaskRecord) -> str:
    return clock_time(record.created_at)


def _duration(record: TaskRecord) -> str:
    return "" if record.duration is None else f"{record.duration * 1000:.1f} ms"


def _outcome(record: TaskRecord) -> str:
    return record.outcome()


def _agents(pool: PoolInfo) -> str:
    return f"{pool.size}/{pool.desired}"


def _node(agent: AgentInfo) -> str:
    return (agent.node_id or "")[:12]


TaskRecord.TABLE_COLUMNS = (
    ("task", Attribute("task_id")), ("state", Attribute("state")), ("pool", Attribute("pool")),
    ("agent", Attribute("agent_id")), ("attempts", Attribute("attempts")), ("created", _created),
    ("duration", _duration), ("result or error", _outcome),
)
AgentInfo.TABLE_COLUMNS = (
    ("agent", Attribute("agent_id")), ("pool", Attribute("pool")), ("type", Attribute("agent_type")),
    ("state", Attribute("state")), ("in flight", Attribute("inflight")), ("done", Attribute("tasks_done")),
    ("restarts", Attribute("restarts")), ("pid", Attribute("pid")), ("node", _node), ("started", _started),
)
PoolInfo.TABLE_COLUMNS = (
    ("pool", Attribute("name")), ("type", Attribute("agent_type")), ("state", Attribute("state")),
    ("agents", _agents), ("placement", Attribute("placement")), ("queued", Attribute("queued")),
    ("running", Attribute("running")), ("succeeded", Attribute("succeeded")), ("failed", Attribute("failed")),
    ("restarts", Attribute("restarts")), ("dead letters", Attribute("dead_letters")),
)


def _restart_time(event: dict[str, Any]) -> str:
    return clock_time(event.get("at"))


def _delay(event: dict[str, Any]) -> str:
    delay = event.get("delay_seconds")
    return "" if delay is None else f"{delay:.2f} s"


#: ``hive.restarts()`` returns dictionaries (restart events); these are their table's columns.
RESTART_COLUMNS: tuple[Column, ...] = (
    ("when", _restart_time), ("pool", Attribute("pool")), ("agent", Attribute("agent")),
    ("cause", Attribute("cause")), ("attempt", Attribute("attempt")), ("delay", _delay),
    ("detail", Attribute("detail")),
)
