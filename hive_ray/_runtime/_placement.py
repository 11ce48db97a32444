"""Where agents run, behind one interface.

The orchestrator never touches actor handles: it asks a :class:`Placement`
to activate agents, run batches on them, cancel, health-check and stop them.
:class:`RayPlacement` puts each agent in its own host actor (dedicated) or
packs many agents into each host actor (packed); both look the same from
outside.

Host actors are detached and named (:func:`host_actor_name`), so they outlive
an orchestrator crash; each is recorded in the journal (a
:class:`~hive_ray._runtime._contracts.HostBook`) while it lives. A restarted
orchestrator finds them there and adopts them (:meth:`RayPlacement.adopt`),
like Ray Serve's controller re-adopts its replicas; hosts named after it that
it did not record are stopped (:meth:`RayPlacement.stop_strays`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import (
    ActorAlreadyExistsError,
    ActorDiedError,
    ActorUnavailableError,
    RayActorError,
)

from hive_ray._runtime._channel import ChannelClosed, HostChannel
from hive_ray._runtime._contracts import AdoptedHost, AgentLost, HostBook, PoolPlacementSpec
from hive_ray._runtime._endpoint import Endpoint
from hive_ray._runtime._host import AgentHost
from hive_ray._task import Envelope, Outcome

if TYPE_CHECKING:
    from hive_ray._runtime._data_plane import DataPlane

logger = logging.getLogger("hive_ray.placement")

#: Tries at a free host name when stale actors hold the next ones.
_NAME_TRIES = 100


def host_actor_name(namespace: str, orchestrator: str, pool: str, number: int) -> str:
    """The Ray name of a host actor: unique per orchestrator, found again after its restart."""
    return f"{host_name_prefix(namespace, orchestrator)}{pool}:{number}"


def host_name_prefix(namespace: str, orchestrator: str) -> str:
    """What the names of every host of one orchestrator start with."""
    return f"hive-host:{namespace}:{orchestrator}:"


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
    node_id: str | None = None  # the Ray node it runs on, once known
    link: dict[str, Any] = field(default_factory=dict)  # its data-plane status, as it reported it
    name: str = ""  # its Ray actor name

    @property
    def room(self) -> int:
        return self.capacity - len(self.agents)


class RayPlacement:
    """Agents in host actors: one agent per host (dedicated) or many (packed).

    With packed placement each host holds up to ``agents_per_host`` agents and
    reserves that many times the per-agent resources; hosts are spread across
    nodes. Agents re-activated after a failure fill hosts that have room first.
    """

    def __init__(self, orchestrator: Any, *, namespace: str, data_plane: DataPlane | None = None,
                 orchestrator_name: str | None = None, orphan_exit_seconds: float | None = 30.0,
                 max_result_bytes: int = 64 * 1024) -> None:
        self._orchestrator = orchestrator
        self._max_result_bytes = max_result_bytes
        self._namespace = namespace
        self._data_plane = data_plane
        self._orchestrator_name = orchestrator_name or ray.get_runtime_context().get_actor_name() or ""
        self._orphan_exit_seconds = orphan_exit_seconds
        self._hosts: dict[str, _Host] = {}
        self._host_of: dict[str, _Host] = {}  # agent id -> its host
        self._next_number = 0
        self._book: HostBook | None = None
        self._recorded: set[str] = set()  # names an earlier incarnation recorded
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
        number, name, handle = self._create_host_actor(spec, options)
        host = _Host(key=f"{spec.pool}/host-{number}", pool=spec.pool, handle=handle,
                     capacity=per_host, agents=list(agent_ids), name=name)
        self._hosts[host.key] = host
        if self._book is not None:
            self._book.record_host(host.key, {"name": name, "pool": spec.pool, "number": number})
        for agent_id in agent_ids:
            self._host_of[agent_id] = host
        return await self._activate_on(host, agent_ids)

    def _create_host_actor(self, spec: PoolPlacementSpec, options: dict[str, Any]) -> tuple[int, str, Any]:
        """A detached, named host actor: it outlives an orchestrator crash (see the module docstring).

        Creating a named actor registers its name synchronously, so a name still
        held (a stale host being stopped) fails at once, and the next number is tried.
        """
        for _ in range(_NAME_TRIES):
            number = self._next_number
            self._next_number += 1
            name = host_actor_name(self._namespace, self._orchestrator_name, spec.pool, number)
            if name in self._recorded:
                continue
            try:
                handle = self._actor_class.options(**options, name=name, lifetime="detached").remote(
                    pool=spec.pool, agent_type=spec.agent_type, reference=spec.reference,
                    orchestrator=self._orchestrator, passivate_after_seconds=spec.passivate_after_seconds,
                    config=spec.config,
                    orchestrator_name=self._orchestrator_name, namespace=self._namespace,
                    orphan_exit_seconds=self._orphan_exit_seconds, max_result_bytes=self._max_result_bytes,
                )
            except ActorAlreadyExistsError:
                continue
            return number, name, handle
        raise RuntimeError(f"no free host actor name for pool {spec.pool!r} after {_NAME_TRIES} tries")

    async def _activate_on(self, host: _Host, agent_ids: list[str]) -> dict[str, dict[str, Any]]:
        try:
            endpoint = await self._endpoint_for(host)
            info = await host.handle.activate.remote(agent_ids, endpoint, host.key)
        except RayActorError as error:
            self._forget(host, agent_ids)
            raise AgentLost(agent_ids[0], classify_actor_error(error), str(error)[:500]) from None
        except (Exception, asyncio.CancelledError):  # cancelled: the pool was stopped meanwhile
            self._forget(host, agent_ids)
            raise
        host.ready = True
        host.node_id = info["node_id"]
        host.link = info.get("data_plane") or {}
        if endpoint is not None and self._data_plane is not None:
            # The host answers once its handshake was accepted, so its stream is normally
            # registered already; a short grace covers the order of the two events.
            await self._data_plane.wait_for(host.key, 2.0)
        return {agent_id: {"node_id": info["node_id"], "pid": info["pid"], "host": host.key}
                for agent_id in agent_ids}

    async def _endpoint_for(self, host: _Host) -> Endpoint | None:
        """Where this host dials the data plane, decided by the node it runs on (None: Ray calls).

        Loopback for a host on the orchestrator's node, the node address for any other, so a
        host on a node that joined after the orchestrator started connects directly too.
        """
        if self._data_plane is None or self._data_plane.channel(host.key) is not None:
            return None  # off, or connected already (a packed host taking more agents)
        if host.node_id is None:
            host.node_id = (await host.handle.where.remote())["node_id"]
        return await self._data_plane.endpoint_for(host.node_id)

    def _forget(self, host: _Host, agent_ids: list[str]) -> None:
        for agent_id in agent_ids:
            self._host_of.pop(agent_id, None)
            if agent_id in host.agents:
                host.agents.remove(agent_id)
        if not host.agents:
            self._stop_host(host)

    def _stop_host(self, host: _Host) -> None:
        """Kill a host actor and forget it, here and in the journal."""
        if self._hosts.get(host.key) is host:
            del self._hosts[host.key]
        for agent_id in host.agents:
            if self._host_of.get(agent_id) is host:
                del self._host_of[agent_id]
        host.agents = []
        if self._data_plane is not None:
            self._data_plane.drop(host.key)
        with contextlib.suppress(Exception):
            ray.kill(host.handle, no_restart=True)
        if self._book is not None:
            self._book.forget_host(host.key)

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

    async def describe_identity(self, agent_id: str, key: str, timeout: float = 5.0) -> dict[str, Any] | None:
        """The activation of virtual agent ``key`` on shard ``agent_id``, or None if not active."""
        host = self._host_of.get(agent_id)
        if host is None:
            return None
        return await asyncio.wait_for(host.handle.describe_identity.remote(agent_id, key), timeout)

    def _channel_of(self, host: _Host) -> HostChannel | None:
        return None if self._data_plane is None else self._data_plane.channel(host.key)

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
        return [{"host": host.key, "agents": len(host.agents), "node_id": host.node_id,
                 "data_plane": self._data_plane_status(host),
                 **(answer if isinstance(answer, dict) else {"error": str(answer)})}
                for host, answer in zip(hosts, answers, strict=True)]

    def _data_plane_status(self, host: _Host) -> dict[str, Any]:
        """How the host's tasks travel: ``transport`` "stream" (with the address it dialled and
        whether TLS is on, as the orchestrator sees the accepted stream) or "ray" and why."""
        if self._data_plane is None:
            return {"transport": "ray", "reason": "the data plane is off (data_plane: false)"}
        status = self._data_plane.status(host.key)
        if status["transport"] == "stream":
            status["dialled"] = host.link.get("address")  # as the host itself reported it
        elif host.link.get("transport") == "ray":
            status["reason"] = host.link.get("reason", status.get("reason"))
        return status

    def health_targets(self) -> list[tuple[str, str, list[str]]]:
        """``(pool, host key, agent ids)`` of every host: health is checked per host."""
        return [(host.pool, host.key, list(host.agents)) for host in self._hosts.values()
                if host.agents and host.ready]

    async def host_health(self, host_key: str, timeout: float) -> dict[str, Any]:
        host = self._hosts.get(host_key)
        if host is None:
            # Gone from the placement: its loss was handled already (and its agents may run on a
            # new host by now, which this stale check must not fail).
            raise LookupError(f"no host {host_key!r} any more")
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
            elif not host.ready:
                remaining = []  # never started (nothing could place it): nothing to wind down
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
            self._stop_host(host)

    async def request_resources(self, bundles: list[dict[str, float]]) -> None:
        """Hand the demand to the Ray autoscaler (a no-op on clusters without one)."""
        from ray.autoscaler.sdk import request_resources

        await asyncio.to_thread(request_resources, bundles=bundles)

    async def cluster_memory_bytes(self) -> float | None:
        """The memory Ray reports for the whole cluster (its ``memory`` resource)."""
        resources = await asyncio.to_thread(ray.cluster_resources)
        return float(resources["memory"]) if resources.get("memory") else None

    # -- outliving an orchestrator crash ------------------------------------------------
    def record_hosts_in(self, book: HostBook, recorded: dict[str, dict[str, Any]]) -> None:
        """Record hosts in ``book`` from now on; ``recorded`` are an earlier incarnation's."""
        self._book = book
        self._recorded = {info["name"] for info in recorded.values()}
        self._next_number = max([self._next_number, *(info["number"] + 1 for info in recorded.values())])

    async def adopt(self, spec: PoolPlacementSpec, key: str, info: dict[str, Any],
                    timeout: float) -> AdoptedHost:
        """Take over a host an earlier incarnation started: reconnect it, learn what it holds.

        Raises:
            AgentLost: the host is gone, or did not answer within ``timeout``; it is
                then stopped, so that nothing it still runs can also run elsewhere.
        """
        name = info["name"]
        try:
            handle = await asyncio.wait_for(
                asyncio.to_thread(ray.get_actor, name, namespace=self._namespace), timeout)
        except ValueError:
            self._forget_record(key)
            raise AgentLost(key, "process_killed", f"host actor {name!r} no longer exists") from None
        except asyncio.TimeoutError:
            raise AgentLost(key, "health_check_failed", f"host actor {name!r} could not be looked up "
                                                        f"within {timeout:.0f} s") from None
        host = _Host(key=key, pool=spec.pool, handle=handle, capacity=max(1, spec.agents_per_host), name=name,
                     node_id=info.get("node_id"))
        self._hosts[key] = host
        try:
            # The old stream died with the old orchestrator: the host dials this one's.
            endpoint = await asyncio.wait_for(self._endpoint_for(host), timeout)
            answer = await asyncio.wait_for(
                handle.adopt.remote(endpoint, self._orchestrator, host.key), timeout)
        except asyncio.TimeoutError:
            self._stop_host(host)
            raise AgentLost(key, "health_check_failed",
                            f"host actor {name!r} did not answer adoption within {timeout:.0f} s") from None
        except (RayActorError, ActorDiedError, ActorUnavailableError) as error:
            self._stop_host(host)
            raise AgentLost(key, classify_actor_error(error), str(error)[:500]) from None
        except (Exception, asyncio.CancelledError):  # cancelled: the pool was stopped meanwhile
            self._stop_host(host)
            raise
        host.agents = list(answer["agents"])
        if not host.agents:
            self._stop_host(host)  # an empty host serves nobody
            return AdoptedHost(key=key, where={})
        for agent_id in host.agents:
            self._host_of[agent_id] = host
        host.ready = True
        host.node_id = answer["node_id"]
        if endpoint is not None and self._data_plane is not None:
            await self._data_plane.wait_for(host.key, 2.0)
        where = {"node_id": answer["node_id"], "pid": answer["pid"], "host": key}
        return AdoptedHost(key=key, where={agent_id: dict(where) for agent_id in host.agents},
                           running=list(answer["running"]), outcomes=list(answer["outcomes"]))

    async def reclaim(self, agent_id: str, task_ids: list[str]) -> list[Outcome]:
        """Outcomes of tasks an adopted host was running for the previous incarnation."""
        host = self._host_of.get(agent_id)
        if host is None:
            raise AgentLost(agent_id, "process_killed", "no host for this agent")
        try:
            return await host.handle.reclaim.remote(task_ids)
        except (RayActorError, ActorDiedError, ActorUnavailableError) as error:
            raise AgentLost(agent_id, classify_actor_error(error), str(error)[:500]) from None

    async def stop_recorded(self, key: str, info: dict[str, Any]) -> None:
        """Stop a recorded host that nobody adopts (its pool is gone)."""
        with contextlib.suppress(ValueError):
            handle = await asyncio.to_thread(ray.get_actor, info["name"], namespace=self._namespace)
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        self._forget_record(key)

    async def stop_strays(self) -> int:
        """Stop live hosts named after this orchestrator that it neither adopts nor started.

        A host started just before a crash may have missed its record; the
        journal cannot name it, but its Ray name can (Ray Serve's controller
        also lists named actors to find its replicas after a restart).
        """
        prefix = host_name_prefix(self._namespace, self._orchestrator_name)
        named = await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True)
        known = {host.name for host in self._hosts.values()} | self._recorded
        # The rest of a name is "<pool>:<n>"; "b:<pool>:<n>" is a host of orchestrator "<this>:b".
        strays = [actor["name"] for actor in named if actor.get("namespace") == self._namespace
                  and actor["name"].startswith(prefix) and actor["name"] not in known
                  and actor["name"][len(prefix):].count(":") == 1]
        for name in strays:
            logger.warning("stopping host actor %s: this orchestrator did not record it", name)
            with contextlib.suppress(Exception):
                ray.kill(await asyncio.to_thread(ray.get_actor, name, namespace=self._namespace),
                         no_restart=True)
        return len(strays)

    def _forget_record(self, key: str) -> None:
        if self._book is not None:
            self._book.forget_host(key)
