"""What the orchestrator needs from placement, without importing Ray.

Keeping these Ray-free lets the orchestrator's logic run in unit tests against
a fake placement.

Hosts outlive an orchestrator crash: placement records each host it starts in
a :class:`HostBook` (the journal), and a restarted orchestrator asks placement
to :meth:`Placement.adopt` every recorded host. An adopted host tells what it
holds (:class:`AdoptedHost`): its agents, with their in-memory state intact,
the batches it is still running, and the outcomes it produced that may never
have reached the dead orchestrator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from hive_ray._task import Envelope, Outcome


class AgentLost(Exception):
    """The process hosting an agent died or became unreachable. ``cause`` says how."""

    def __init__(self, agent_id: str, cause: str, detail: str = "") -> None:
        super().__init__(agent_id, cause, detail)
        self.agent_id = agent_id
        self.cause = cause
        self.detail = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolPlacementSpec:
    """What placement needs to know about a pool."""

    pool: str
    agent_type: str
    reference: str | bytes
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    memory: int | None = None
    resources: dict[str, float] = field(default_factory=dict)
    agents_per_host: int = 1
    passivate_after_seconds: float | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the pool's config, for its agents


class HostBook(Protocol):
    """Where placement records the hosts it starts, so that a restarted orchestrator finds them.

    The journal (:class:`~hive_ray._runtime._durability.TaskJournal`) is one.
    """

    def record_host(self, key: str, info: dict[str, Any]) -> None: ...

    def forget_host(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningBatch:
    """A batch an adopted host is still running: its agent, and each task's attempt number."""

    agent_id: str
    attempts: dict[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeptOutcome:
    """An outcome a host produced recently; its delivery to the old orchestrator is uncertain."""

    agent_id: str
    attempt: int
    outcome: Outcome


@dataclass(frozen=True, slots=True, kw_only=True)
class AdoptedHost:
    """What a host that outlived its orchestrator holds, as :meth:`Placement.adopt` found it.

    ``where`` maps each agent id (active or passivated) to ``{"node_id", "pid", "host"}``.
    """

    key: str
    where: dict[str, dict[str, Any]]
    running: list[RunningBatch] = field(default_factory=list)
    outcomes: list[KeptOutcome] = field(default_factory=list)


class Placement(Protocol):
    """Where agents run. ``activate`` returns ``{agent_id: {"node_id", "pid", "host"}}``."""

    async def activate(self, spec: PoolPlacementSpec, agent_ids: list[str]) -> dict[str, dict[str, Any]]: ...

    async def run_batch(self, agent_id: str, envelopes: list[Envelope]) -> list[Outcome]: ...

    def cancel(self, agent_id: str, task_id: str) -> None: ...

    async def take_result(self, agent_id: str, key: str) -> Any:
        """The object reference of a result ``agent_id``'s host kept (too large for a
        frame), once the value is in the object store; raises :class:`AgentLost`."""
        ...

    async def host_health(self, host_key: str, timeout: float) -> dict[str, Any]:
        """The host's health answer; raises :class:`AgentLost` if it failed, ``LookupError``
        if no such host exists any more (its loss was handled already)."""
        ...

    def health_targets(self) -> list[tuple[str, str, list[str]]]:
        """``(pool, host key, agent ids)`` for every host."""
        ...

    def siblings(self, agent_id: str) -> list[str]:
        """The agents sharing ``agent_id``'s host, itself included: they fail together."""
        ...

    async def deactivate(self, agent_ids: list[str], *, kill: bool = False) -> None: ...

    async def request_resources(self, bundles: list[dict[str, float]]) -> None:
        """Tell the cluster autoscaler the total demand (replaces the previous request)."""
        ...

    # -- surviving an orchestrator crash ------------------------------------------------
    def record_hosts_in(self, book: HostBook, recorded: dict[str, dict[str, Any]]) -> None:
        """Record every host started from now on in ``book``; ``recorded`` are the hosts an
        earlier incarnation recorded (to be adopted or stopped: their names are not reused)."""
        ...

    async def adopt(self, spec: PoolPlacementSpec, key: str, info: dict[str, Any],
                    timeout: float) -> AdoptedHost:
        """Take over a recorded host: reconnect it and learn what it holds.

        Raises:
            AgentLost: the host is gone, or did not answer within ``timeout`` (it is
                then stopped, so that nothing it runs can finish twice).
        """
        ...

    async def reclaim(self, agent_id: str, task_ids: list[str]) -> list[Outcome]:
        """Outcomes of tasks an adopted host was running, once they ended (AgentLost if it dies)."""
        ...

    async def stop_recorded(self, key: str, info: dict[str, Any]) -> None:
        """Stop a recorded host nobody will adopt (its pool no longer exists)."""
        ...

    async def stop_strays(self) -> int:
        """Stop hosts named after this orchestrator that it neither adopted nor started
        (e.g. started just before a crash, before they were recorded). Returns how many."""
        ...

    async def cluster_memory_bytes(self) -> float | None:
        """The memory the cluster reports, for the host-process budget (None: unknown)."""
        ...
