"""Where agents run, behind one interface.

The orchestrator never touches actor handles: it asks a :class:`Placement`
to activate agents, run batches on them, cancel, health-check and stop them.
:class:`RayPlacement` puts each agent in its own host actor (dedicated) or
packs many agents into each host actor (packed); both look the same from
outside.
"""

from __future__ import annotations

import asyncio
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


class RayPlacement:
    """Agents in host actors: one agent per host (dedicated) or many (packed)."""

    def __init__(self, orchestrator: Any, *, namespace: str, channels: ChannelServer | None = None,
                 channel_token: str = "") -> None:
        self._orchestrator = orchestrator
        self._namespace = namespace
        self._channels = channels
        self._channel_token = channel_token
        self._host_of: dict[str, Any] = {}          # agent id -> host actor handle
        self._hosts: dict[str, list[str]] = {}      # host key -> agent ids
        self._host_key_of: dict[str, str] = {}      # agent id -> host key
        self._actor_class = ray.remote(concurrency_groups={"health": 2})(AgentHost)

    async def activate(self, spec: PoolPlacementSpec, agent_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Start hosts for ``agent_ids`` and set the agents up. Returns where each runs."""
        per_host = max(1, spec.agents_per_host)
        groups = [agent_ids[i : i + per_host] for i in range(0, len(agent_ids), per_host)]
        results = await asyncio.gather(*(self._start_host(spec, group) for group in groups))
        where: dict[str, dict[str, Any]] = {}
        for group, info in zip(groups, results, strict=True):
            for agent_id in group:
                where[agent_id] = {"node_id": info["node_id"], "pid": info["pid"]}
        return where

    async def _start_host(self, spec: PoolPlacementSpec, agent_ids: list[str]) -> dict[str, Any]:
        options: dict[str, Any] = {
            "num_cpus": spec.num_cpus,
            "num_gpus": spec.num_gpus,
            "resources": dict(spec.resources),
            "max_concurrency": 1000,
            "namespace": self._namespace,
        }
        if spec.memory:
            options["memory"] = spec.memory
        host = self._actor_class.options(**options).remote(
            pool=spec.pool,
            agent_type=spec.agent_type,
            reference=spec.reference,
            orchestrator=self._orchestrator,
        )
        key = agent_ids[0]
        data_plane = None
        if self._channels is not None and self._channels.address is not None:
            data_plane = (self._channels.address, self._channel_token, key)
        try:
            info = await host.activate.remote(agent_ids, data_plane)
        except RayActorError as error:
            raise AgentLost(agent_ids[0], classify_actor_error(error), str(error)) from None
        if self._channels is not None:
            await self._channels.wait_for(key, 2.0)
        self._hosts[key] = list(agent_ids)
        for agent_id in agent_ids:
            self._host_of[agent_id] = host
            self._host_key_of[agent_id] = key
        return info

    async def run_batch(self, agent_id: str, envelopes: list[Envelope]) -> list[Outcome]:
        host = self._host_of.get(agent_id)
        if host is None:
            raise AgentLost(agent_id, "process_killed", "no host for this agent")
        channel = self._channel_of(agent_id)
        if channel is not None:
            try:
                return await channel.run_batch(agent_id, envelopes)
            except ChannelClosed as closed:
                cause, detail = await self._why_lost(host, str(closed))
                raise AgentLost(agent_id, cause, detail) from None
        try:
            return await host.run_batch.remote(agent_id, envelopes)
        except (RayActorError, ActorDiedError, ActorUnavailableError) as error:
            raise AgentLost(agent_id, classify_actor_error(error), str(error)[:500]) from None

    async def _why_lost(self, host: Any, detail: str) -> tuple[str, str]:
        """A closed stream says only that the host is gone; Ray knows why (killed, OOM, node)."""
        try:
            await asyncio.wait_for(host.health.remote(), 5)
        except (RayActorError, ActorDiedError, ActorUnavailableError) as error:
            return classify_actor_error(error), str(error)[:500]
        except asyncio.TimeoutError:
            return "health_check_failed", f"{detail}; no health answer within 5 s"
        return "process_killed", f"{detail}; the host answers Ray but lost its stream"

    def _channel_of(self, agent_id: str) -> HostChannel | None:
        if self._channels is None:
            return None
        key = self._host_key_of.get(agent_id)
        channel = self._channels.channels.get(key) if key is not None else None
        return channel if channel is not None and not channel.closed else None

    def cancel(self, agent_id: str, task_id: str) -> None:
        channel = self._channel_of(agent_id)
        if channel is not None:
            channel.cancel(agent_id, task_id)
            return
        host = self._host_of.get(agent_id)
        if host is not None:
            host.cancel.remote(agent_id, task_id)

    async def health(self, agent_id: str, timeout: float) -> dict[str, Any]:
        host = self._host_of.get(agent_id)
        if host is None:
            raise AgentLost(agent_id, "process_killed", "no host for this agent")
        try:
            return await asyncio.wait_for(host.health.remote(), timeout)
        except asyncio.TimeoutError:
            raise AgentLost(agent_id, "health_check_failed", f"no answer within {timeout:.1f} s") from None
        except (RayActorError, ActorDiedError, ActorUnavailableError) as error:
            raise AgentLost(agent_id, classify_actor_error(error), str(error)[:500]) from None

    def host_key(self, agent_id: str) -> str | None:
        return self._host_key_of.get(agent_id)

    def agents_sharing_host(self, agent_id: str) -> list[str]:
        key = self._host_key_of.get(agent_id)
        return list(self._hosts.get(key, [])) if key else []

    async def deactivate(self, agent_ids: list[str], *, kill: bool = False) -> None:
        """Stop agents; a host with no agents left is stopped too."""
        by_host: dict[str, list[str]] = {}
        for agent_id in agent_ids:
            key = self._host_key_of.get(agent_id)
            if key is not None:
                by_host.setdefault(key, []).append(agent_id)
        for key, leaving in by_host.items():
            host = self._host_of[leaving[0]]
            remaining = [a for a in self._hosts.get(key, []) if a not in leaving]
            if not kill:
                try:
                    if remaining:
                        await asyncio.wait_for(host.deactivate.remote(leaving), 10)
                    else:
                        await asyncio.wait_for(host.shutdown.remote(), 10)
                except (RayActorError, asyncio.TimeoutError):
                    pass
            if not remaining:
                if self._channels is not None:
                    self._channels.drop(key)
                try:
                    ray.kill(host, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone is fine
                    pass
                self._hosts.pop(key, None)
            else:
                self._hosts[key] = remaining
            for agent_id in leaving:
                self._host_of.pop(agent_id, None)
                self._host_key_of.pop(agent_id, None)
