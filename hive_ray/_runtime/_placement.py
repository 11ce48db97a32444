"""Where agents run, behind one interface.

The orchestrator never touches actor handles: it asks a :class:`Placement`
to activate agents, run batches on them, cancel, health-check and stop them.
:class:`RayPlacement` puts each agent in its own host actor (dedicated) or
packs many agents into each host actor (packed); both look the same from
outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from hive_ray._runtime._channel import ChannelClosed, ChannelServer, HostChannel
from hive_ray._runtime._contracts import AgentLost, PoolPlacementSpec
from hive_ray._runtime._host import AgentHost
from hive_ray._task import Envelope, Outcome


def classify_actor_error(error: BaseException) -> str:
    """Map Ray's actor errors to a restart cause."""
    text = str(error).lower()
    if "out of memory" in text or "outofmemory" in text or "memory pressure" in text:
        return "oom_killed"
    if any(sign in text for sign in ("node has died", "node died", "node_died", "node was removed",
                                      "node is dead", "raylet died")):
        return "node_lost"
    return "process_killed"


@dataclass(slots=True)
class _Host:
    key: str
    pool: str
    handle: Any
    capacity: int
    agents: list[str] = field(default_factory=list)
    ready: bool = False  # its actor was created and answered; health checks start then

    @property
    def room(self) -> int:
        return self.capacity - len(self.agents)


class RayPlacement:
    """Agents in host actors: one agent per host (dedicated) or many (packed).

    With packed placement each host holds up to ``agents_per_host`` agents and
    reserves that many times the per-agent resources; hosts are spread across
    nodes. Agents re-activated after a failure fill hosts that have room first.
    """

    def __init__(self, orchestrator: Any, *, namespace: str, channels: ChannelServer | None = None,
                 channel_token: str = "", max_result_bytes: int = 64 * 1024) -> None:
        self._orchestrator = orchestrator
        self._max_result_bytes = max_result_bytes
        self._namespace = namespace
        self._channels = channels
        self._channel_token = channel_token
        self._hosts: dict[str, _Host] = {}
        self._host_of: dict[str, _Host] = {}  # agent id -> its host
        self._numbers = itertools.count()
        self._actor_class = ray.remote(concurrency_groups={"health": 2, "results": 2})(AgentHost)

    async def activate(self, spec: PoolPlacementSpec, agent_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Set agents up: in hosts of the pool with room, then in new hosts. Returns where each runs."""
        per_host = max(1, spec.agents_per_host)
        remaining = [agent_id for agent_id in agent_ids if agent_id not in self._host_of]
        jobs = []
        if per_host > 1:
            for host in [h for h in self._hosts.values() if h.pool == spec.pool and h.room > 0]:
                if not remaining:
                    break
                taken, remaining = remaining[: host.room], remaining[host.room :]
                host.agents.extend(taken)
                for agent_id in taken:
                    self._host_of[agent_id] = host
                jobs.append(self._activate_on(host, taken))
        for start in range(0, len(remaining), per_host):
            jobs.append(self._start_host(spec, remaining[start : start + per_host], per_host))
        where: dict[str, dict[str, Any]] = {}
        for placed in await asyncio.gather(*jobs):
            where.update(placed)
        return where

    async def _start_host(self, spec: PoolPlacementSpec, agent_ids: list[str], per_host: int) -> dict[str, dict[str, Any]]:
        options: dict[str, Any] = {
            "num_cpus": spec.num_cpus * per_host,
            "num_gpus": spec.num_gpus * per_host,
            "resources": {name: amount * per_host for name, amount in spec.resources.items()},
            "max_concurrency": 1000,
            "namespace": self._namespace,
        }
        if spec.memory:
            options["memory"] = spec.memory * per_host
        if per_host > 1:
            options["scheduling_strategy"] = "SPREAD"
        handle = self._actor_class.options(**options).remote(
            pool=spec.pool, agent_type=spec.agent_type, reference=spec.reference,
            orchestrator=self._orchestrator, passivate_after_seconds=spec.passivate_after_seconds,
            max_result_bytes=self._max_result_bytes,
        )
        host = _Host(key=f"{spec.pool}/host-{next(self._numbers)}", pool=spec.pool, handle=handle,
                     capacity=per_host, agents=list(agent_ids))
        self._hosts[host.key] = host
        for agent_id in agent_ids:
            self._host_of[agent_id] = host
        return await self._activate_on(host, agent_ids)

    async def _activate_on(self, host: _Host, agent_ids: list[str]) -> dict[str, dict[str, Any]]:
        data_plane = None
        if self._channels is not None and self._channels.address is not None:
            data_plane = (self._channels.address, self._channel_token, host.key)
        try:
            info = await host.handle.activate.remote(agent_ids, data_plane)
        except RayActorError as error:
            self._forget(host, agent_ids)
            raise AgentLost(agent_ids[0], classify_actor_error(error), str(error)[:500]) from None
        except (Exception, asyncio.CancelledError):  # cancelled: the pool was stopped meanwhile
            self._forget(host, agent_ids)
            raise
        host.ready = True
        if self._channels is not None:
            await self._channels.wait_for(host.key, 2.0)
        return {agent_id: {"node_id": info["node_id"], "pid": info["pid"], "host": host.key}
                for agent_id in agent_ids}

    def _forget(self, host: _Host, agent_ids: list[str]) -> None:
        for agent_id in agent_ids:
            self._host_of.pop(agent_id, None)
            if agent_id in host.agents:
                host.agents.remove(agent_id)
        if not host.agents:
            self._hosts.pop(host.key, None)
            with contextlib.suppress(Exception):
                ray.kill(host.handle, no_restart=True)

    async def run_batch(self, agent_id: str, envelopes: list[Envelope]) -> list[Outcome]:
        host = self._host_of.get(agent_id)
        if host is None:
            raise AgentLost(agent_id, "process_killed", "no host for this agent")
        channel = self._channel_of(host)
        if channel is not None:
            try:
                return await channel.run_batch(agent_id, envelopes)
            except ChannelClosed as closed:
                cause, detail = await self._why_lost(host.handle, str(closed))
                raise AgentLost(agent_id, cause, detail) from None
        try:
            return await host.handle.run_batch.remote(agent_id, envelopes)
        except (RayActorError, ActorDiedError, ActorUnavailableError) as error:
            raise AgentLost(agent_id, classify_actor_error(error), str(error)[:500]) from None

    async def _why_lost(self, handle: Any, detail: str) -> tuple[str, str]:
        """A closed stream says only that the host is gone; Ray knows why (killed, OOM, node)."""
        try:
            await asyncio.wait_for(handle.health.remote(), 5)
        except (RayActorError, ActorDiedError, ActorUnavailableError) as error:
            return classify_actor_error(error), str(error)[:500]
        except asyncio.TimeoutError:
            return "health_check_failed", f"{detail}; no health answer within 5 s"
        return "process_killed", f"{detail}; the host answers Ray but lost its stream"

    async def take_result(self, agent_id: str, key: str) -> Any:
        """Have ``agent_id``'s host hand over a result it kept: returns the object reference
        (owned by this orchestrator) once the value is in the object store."""
        host = self._host_of.get(agent_id)
        if host is None:
            raise AgentLost(agent_id, "process_killed", "its host is gone")
        size, value = host.handle.take_result.remote(key)
        try:
            await size
        except (RayActorError, ActorDiedError, ActorUnavailableError) as error:
            raise AgentLost(agent_id, classify_actor_error(error), str(error)[:500]) from None
        return value

    def _channel_of(self, host: _Host) -> HostChannel | None:
        if self._channels is None:
            return None
        channel = self._channels.channels.get(host.key)
        return channel if channel is not None and not channel.closed else None

    def cancel(self, agent_id: str, task_id: str) -> None:
        host = self._host_of.get(agent_id)
        if host is None:
            return
        channel = self._channel_of(host)
        if channel is not None:
            channel.cancel(agent_id, task_id)
        else:
            host.handle.cancel.remote(agent_id, task_id)

    def siblings(self, agent_id: str) -> list[str]:
        """Every agent that shares ``agent_id``'s host (itself included): they fail together."""
        host = self._host_of.get(agent_id)
        return list(host.agents) if host is not None else [agent_id]

    async def host_summaries(self, pool: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Health answers of every host of ``pool``: pid, active and passivated agents."""
        hosts = [host for host in self._hosts.values() if host.pool == pool and host.agents and host.ready]
        answers = await asyncio.gather(*(self.host_health(host.key, timeout) for host in hosts),
                                       return_exceptions=True)
        return [{"host": host.key, "agents": len(host.agents),
                 **(answer if isinstance(answer, dict) else {"error": str(answer)})}
                for host, answer in zip(hosts, answers, strict=True)]

    def health_targets(self) -> list[tuple[str, str, list[str]]]:
        """``(pool, host key, agent ids)`` of every host: health is checked per host."""
        return [(host.pool, host.key, list(host.agents)) for host in self._hosts.values()
                if host.agents and host.ready]

    async def host_health(self, host_key: str, timeout: float) -> dict[str, Any]:
        host = self._hosts.get(host_key)
        if host is None:
            raise AgentLost(host_key, "process_killed", "no such host")
        try:
            return await asyncio.wait_for(host.handle.health.remote(), timeout)
        except asyncio.TimeoutError:
            raise AgentLost(host_key, "health_check_failed", f"no answer within {timeout:.1f} s") from None
        except (RayActorError, ActorDiedError, ActorUnavailableError) as error:
            raise AgentLost(host_key, classify_actor_error(error), str(error)[:500]) from None

    async def deactivate(self, agent_ids: list[str], *, kill: bool = False) -> None:
        """Stop agents (their teardown runs unless ``kill``); an emptied host is stopped too."""
        by_host: dict[str, list[str]] = {}
        for agent_id in agent_ids:
            host = self._host_of.get(agent_id)
            if host is not None:
                by_host.setdefault(host.key, []).append(agent_id)
        for key, leaving in by_host.items():
            host = self._hosts.get(key)
            if host is None:
                continue  # already gone (a cancelled activation forgot it meanwhile)
            remaining = [a for a in host.agents if a not in set(leaving)]
            if kill:
                remaining = []  # a failed host takes all its agents with it
            elif remaining:
                with contextlib.suppress(RayActorError, asyncio.TimeoutError):
                    await asyncio.wait_for(host.handle.deactivate.remote(leaving), 10)
            else:
                with contextlib.suppress(RayActorError, asyncio.TimeoutError):
                    await asyncio.wait_for(host.handle.shutdown.remote(), 10)
            if remaining:
                host.agents = remaining
                for agent_id in leaving:
                    self._host_of.pop(agent_id, None)
                continue
            for agent_id in host.agents:
                self._host_of.pop(agent_id, None)
            host.agents = []
            self._hosts.pop(key, None)
            if self._channels is not None:
                self._channels.drop(key)
            with contextlib.suppress(Exception):
                ray.kill(host.handle, no_restart=True)

    async def request_resources(self, bundles: list[dict[str, float]]) -> None:
        """Hand the demand to the Ray autoscaler (a no-op on clusters without one)."""
        from ray.autoscaler.sdk import request_resources

        await asyncio.to_thread(request_resources, bundles=bundles)
