"""Public records at hive-ray's boundaries (client, HTTP, config files), as pydantic models.

Unknown fields are rejected everywhere, so a typo in a config file or request
fails loudly instead of being ignored. Inside the orchestrator the hot path
uses the slotted dataclasses of :mod:`hive_ray._task` instead.
"""

from __future__ import annotations

import html
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hive_ray._task import TaskState

RoutingPolicyName = Literal["least_loaded", "power_of_two", "round_robin", "affinity"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSpec(_Model):
    """What to run: a target (agent type, capability or pool) and a payload."""

    agent_type: str | None = Field(None, description="Run on a pool of this agent type.")
    capability: str | None = Field(None, description="Run on any pool whose agents offer this.")
    pool: str | None = Field(None, description="Run on this pool.")
    payload: Any = Field(None, description="The task's input, passed to the agent's handle().")
    priority: int = Field(0, ge=-1000, le=1000, description="Higher runs first.")
    timeout: float | None = Field(
        None, gt=0, le=86_400, description="Seconds from submission until the task is timed out."
    )
    affinity_key: str | None = Field(
        None, max_length=256, description="Tasks with the same key run on the same agent while it lives."
    )
    idempotency_key: str | None = Field(
        None, max_length=256, description="A repeated submit with this key returns the first task."
    )
    max_attempts: int | None = Field(
        None, ge=1, le=100, description="Deliveries before the task is dead-lettered (pool default if unset)."
    )
    metadata: dict[str, str] = Field(default_factory=dict, description="Free-form labels.")

    @model_validator(mode="after")
    def _one_target(self) -> TaskSpec:
        targets = [name for name in ("agent_type", "capability", "pool") if getattr(self, name)]
        if len(targets) != 1:
            raise ValueError(
                "give exactly one of agent_type, capability or pool"
                + (f" (got {', '.join(targets)})" if targets else "")
            )
        return self

    def template(self) -> dict[str, Any]:
        """Everything but the payload, as the orchestrator's submit_many takes it."""
        return self.model_dump(exclude={"payload"})


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

    def _repr_html_(self) -> str:
        rows = {
            "state": self.state.value,
            "pool": self.pool,
            "agent": self.agent_id or "",
            "attempts": self.attempts,
            "result": repr(self.result)[:200] if self.state == TaskState.SUCCEEDED else "",
            "error": (self.error or {}).get("message", ""),
        }
        return _html_table(f"Task {self.task_id}", rows)


class RestartSpec(_Model):
    """When a pool's agents are restarted (an OTP-style intensity limit with backoff)."""

    max_restarts: int = Field(5, ge=0, le=10_000, description="Restarts allowed within the window.")
    window_seconds: float = Field(60.0, gt=0, description="Beyond max_restarts in this window: degraded.")
    backoff_initial_seconds: float = Field(0.1, ge=0)
    backoff_max_seconds: float = Field(10.0, ge=0)
    backoff_multiplier: float = Field(2.0, ge=1)
    jitter: float = Field(0.2, ge=0, le=1)


class RetrySpec(_Model):
    """How a pool's tasks are delivered again (agent deaths always; handler errors if asked)."""

    max_attempts: int = Field(3, ge=1, le=100, description="Deliveries before a task is dead-lettered.")
    backoff_initial_seconds: float = Field(0.05, ge=0)
    backoff_max_seconds: float = Field(5.0, ge=0)
    multiplier: float = Field(2.0, ge=1)
    jitter: float = Field(0.2, ge=0, le=1)
    retry_exceptions: bool = Field(
        False, description="Also retry tasks whose handler raised (agent deaths are always retried)."
    )
    never_retry: list[str] = Field(
        default_factory=list, description="Exception type names never retried, e.g. ValueError."
    )


class AutoscaleSpec(_Model):
    """Self-tuning pool size: between min and max agents, following the load."""

    min_agents: int = Field(1, ge=0, le=100_000)
    max_agents: int = Field(10, ge=1, le=100_000)
    target_queue_per_agent: float = Field(2.0, gt=0, description="Queued + running tasks per agent to aim for.")
    queue_wait_target_seconds: float | None = Field(
        None, gt=0, description="Also grow while the queue-wait p95 is above this.")
    upscale_delay_seconds: float = Field(2.0, ge=0, description="How long the wish to grow must last.")
    downscale_delay_seconds: float = Field(30.0, ge=0, description="How long the wish to shrink must last.")
    max_step: int = Field(1000, ge=1, description="Most agents added or removed at once.")


class PoolSpec(_Model):
    """A pool of agents of one type, and the Ray resources each agent gets."""

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    agent_type: str = Field(..., min_length=1)
    count: int = Field(1, ge=0, le=100_000)
    num_cpus: float = Field(0.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory: int | None = Field(None, gt=0, description="Bytes of memory reserved per agent host.")
    resources: dict[str, float] = Field(default_factory=dict)
    policy: RoutingPolicyName = "least_loaded"
    max_queue: int = Field(100_000, ge=1, description="Queued tasks beyond this are refused (429).")
    restart: RestartSpec = Field(default_factory=RestartSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    health_check: bool = Field(True, description="Ping agents periodically and restart unresponsive ones.")
    autoscale: AutoscaleSpec | None = Field(None, description="Let the pool size follow the load.")
    placement: Literal["dedicated", "packed"] = Field(
        "dedicated", description="dedicated: one actor per agent; packed: agents_per_host agents per actor.")
    agents_per_host: int = Field(
        250, ge=1, le=100_000, description="Agents per host actor with packed placement (resources scale with it).")
    passivate_after_seconds: float | None = Field(
        None, gt=0, description="Deactivate agents idle this long (on_passivate saves their state); "
        "the next task activates them again. None: never.")


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

    def __repr__(self) -> str:
        return f"<Agent {self.agent_id} {self.state} inflight={self.inflight} done={self.tasks_done}>"


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

    def __repr__(self) -> str:
        return (f"<Pool {self.name!r} type={self.agent_type} agents={self.size}/{self.desired} "
                f"{self.state} queued={self.queued} running={self.running}>")

    def _repr_html_(self) -> str:
        rows = {a.agent_id: f"{a.state}, {a.tasks_done} done, pid {a.pid}" for a in self.agents}
        head = {"type": self.agent_type, "state": self.state, "agents": f"{self.size}/{self.desired}",
                "queued": self.queued, "running": self.running}
        return _html_table(f"Pool {self.name}", {**head, **rows})


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


def _html_table(title: str, rows: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows.items()
    )
    return f"<table><caption><b>{html.escape(title)}</b></caption>{body}</table>"
