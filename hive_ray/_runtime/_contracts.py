"""What the orchestrator needs from placement, without importing Ray.

Keeping these Ray-free lets the orchestrator's logic run in unit tests against
a fake placement.
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


class Placement(Protocol):
    """Where agents run. ``activate`` returns ``{agent_id: {"node_id", "pid", "host"}}``."""

    async def activate(self, spec: PoolPlacementSpec, agent_ids: list[str]) -> dict[str, dict[str, Any]]: ...

    async def run_batch(self, agent_id: str, envelopes: list[Envelope]) -> list[Outcome]: ...

    def cancel(self, agent_id: str, task_id: str) -> None: ...

    async def take_result(self, agent_id: str, key: str) -> Any:
        """The object reference of a result ``agent_id``'s host kept (too large for a
        frame), once the value is in the object store; raises :class:`AgentLost`."""
        ...

    async def host_health(self, host_key: str, timeout: float) -> dict[str, Any]: ...

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
