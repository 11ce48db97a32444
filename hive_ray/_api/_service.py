"""What the API does, independent of HTTP or gRPC: one :class:`ApiService` per replica.

The HTTP routes (:mod:`hive_ray._api._http`) and the gRPC methods
(:mod:`hive_ray._api._grpc`) are thin translations onto this class: both
check keys with the same :class:`KeyRing`, submit with the same idempotency
rules and read through the same caches.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import pickle
from typing import Any

from hive_ray._api._cache import BoundedMap, TtlCache
from hive_ray._api._keys import KeyRing
from hive_ray._api._metrics import ApiMetrics
from hive_ray._api._perf import PerfReader
from hive_ray._api._telemetry import TERMINAL, TaskWindow, follow_events
from hive_ray._errors import (
    ConfigurationError,
    HiveError,
    IdempotencyConflictError,
    ResultLostError,
)
from hive_ray._results import StoredResult, resolve_async
from hive_ray._settings import Settings

logger = logging.getLogger("hive_ray.api")

READINESS_TIMEOUT_SECONDS = 5.0
#: What GET /v1/agents/{agent_type}/{key} and GetAgent answer (the AgentState schema).
AGENT_FIELDS = ("agent_type", "key", "pool", "owner", "version", "state", "activation", "reminders")


def dumps(value: Any) -> bytes:
    """Compact JSON; values JSON cannot hold (a result object) become their str()."""
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def _fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def subscriber_refusal(agent_type: str) -> str | None:
    """Why ``agent_type`` cannot subscribe to a topic, if this process knows it as a type that is
    not virtual; None otherwise (virtual, or unknown here: a type defined in a driver's script
    is known to the orchestrator only, and a subscription may come before its pool).

    Only names registered or installed are looked at: a ``module:Class`` name is never imported
    on a request's behalf."""
    from hive_ray._registry import known_agent_types, load_agent_class

    if agent_type not in known_agent_types():
        return None
    try:
        cls = load_agent_class(agent_type)
    except HiveError:
        return None
    virtual = bool(getattr(cls, "is_virtual", lambda: False)())
    if virtual:
        return None
    return (f"agent type {agent_type!r} is not virtual: only virtual agent types (VirtualAgent "
            "subclasses, such as cart) subscribe to topics, since a delivery is a message to one "
            "agent, addressed by its key")


def _check_subscriber(agent_type: str) -> None:
    """Only virtual types subscribe to topics: a 422 naming both fields, where the orchestrator
    would refuse the pool in words alone (a rule of the type, which no schema can state)."""
    from hive_ray._api._problems import ProblemError
    from hive_ray._errors import HiveError
    from hive_ray._registry import describe

    try:
        virtual = describe(agent_type).virtual  # spawn() describes the type here anyway
    except HiveError:
        return  # unknown here: the orchestrator decides (a 404 if it does not know it either)
    if not virtual:
        message = (f"agent type {agent_type!r} is not virtual: only virtual agent types (VirtualAgent "
                   "subclasses) subscribe to topics, since a message's source names the agent it goes "
                   "to; leave subscriptions out, or spawn a virtual type")
        raise ProblemError(422, message, slug="validation", errors=[
            {"field": field, "in": "body", "message": message, "code": "fields_disagree"}
            for field in ("agent_type", "subscriptions")])


class ApiService:
    """Caches, idempotency, telemetry and orchestrator access for one replica."""

    def __init__(self, settings: Settings, call: Any, keys: KeyRing, *, blocking: Any = None) -> None:
        self.settings = settings
        self.call = call  # async (method, *args) -> answer: the orchestrator
        self.blocking = blocking  # async (client method, *args, **options): pool changes
        self.keys = keys
        self.metrics = ApiMetrics()
        self.window = TaskWindow(on_end=self.metrics.observe_task)
        self.perf = PerfReader(settings, call)
        self._pools_cache: TtlCache[bytes] = TtlCache(settings.api_pool_cache_seconds)
        self._finished: BoundedMap[bytes] = BoundedMap(settings.api_cache_entries)
        self._idempotency: BoundedMap[str] = BoundedMap(settings.api_cache_entries)
        # Topic message ids, apart from task keys: an id is unique per topic, not across the cluster.
        self._message_ids: BoundedMap[str] = BoundedMap(settings.api_cache_entries)
        # Agent types known to run as virtual agents. Only "yes" is kept, and never expires: a
        # type is virtual by its class; if its pool is stopped, messages fail at the orchestrator.
        self._virtual_types: BoundedMap[bool] = BoundedMap(settings.api_cache_entries)
        self._follower: asyncio.Task[None] | None = None
        self._refreshing: set[str] = set()  # cache keys being fetched ahead of expiry
        self._background: set[asyncio.Future[Any]] = set()  # strong references: those fetches, cancels

    # ------------------------------------------------------------------ lifecycle
    def ensure_following(self) -> None:
        """Start feeding the task window from the event stream (once, on the replica's loop)."""
        if self._follower is None or self._follower.done():
            self._follower = asyncio.get_running_loop().create_task(follow_events(self.call, self.window))

    def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
        for task in list(self._background):
            task.cancel()

    # ------------------------------------------------------------------ pools
    async def pools_json(self) -> tuple[bytes, bool]:
        """All pools as JSON, and whether it came from the cache."""
        return await self._cached_pools("*", ("pools",))

    async def pool_json(self, name: str) -> tuple[bytes, bool]:
        return await self._cached_pools(name, ("pool", name))

    async def _cached_pools(self, key: str, call: tuple[Any, ...]) -> tuple[bytes, bool]:
        cached, refresh_due = self._pools_cache.lookup(key)
        if cached is not None:
            if refresh_due and key not in self._refreshing:
                self._refreshing.add(key)
                task = asyncio.get_running_loop().create_task(self._refresh_pools(key, call))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return cached, True
        generation = self._pools_cache.generation
        body = dumps(await self.call(*call))
        self._pools_cache.put(key, body, generation)
        return body, False

    async def _refresh_pools(self, key: str, call: tuple[Any, ...]) -> None:
        """Fetch a cached pool answer again before it expires (see ``TtlCache``)."""
        generation = self._pools_cache.generation
        try:
            self._pools_cache.put(key, dumps(await self.call(*call)), generation)
        except Exception as error:  # noqa: BLE001 - the entry just expires; the next read fetches
            logger.debug("refreshing the cached %r failed: %s", key, error)
        finally:
            self._refreshing.discard(key)

    async def create_pool(self, spec: dict[str, Any]) -> dict[str, Any]:
        spec = dict(spec)
        agent_type, count, name = spec.pop("agent_type"), spec.pop("count"), spec.pop("name")
        if spec.get("subscriptions"):
            _check_subscriber(agent_type)
        await self._check_added_size(name, agent_type, count, spec.get("config") or {})
        try:
            info = await self.blocking("spawn", agent_type, count, pool=name,
                                       wait_seconds=self.settings.api_spawn_wait_seconds, **spec)
        finally:
            self._pools_cache.clear()
        return info.model_dump(mode="json")

    async def _check_added_size(self, name: str, agent_type: str, count: int, config: dict[str, Any]) -> None:
        """Creating an existing pool adds agents of its type: refuse (409) another type, another
        config, or a sum above max_agents_per_pool, before any agent starts."""
        from hive_ray._api._problems import ProblemError
        from hive_ray._errors import UnknownPoolError

        limit = self.settings.max_agents_per_pool
        try:
            pool = await self.call("pool", name)
        except UnknownPoolError:
            return
        if pool["agent_type"] != agent_type:
            raise ProblemError(
                409, f"pool {name!r} already runs agent type {pool['agent_type']!r}, not "
                f"{agent_type!r}; choose another pool name", slug="pool-type-conflict", pool=name)
        if config and config != (pool.get("spec", {}).get("config") or {}):
            raise ProblemError(
                409, f"pool {name!r} already runs with another config; adding agents keeps its own. "
                "Stop the pool first, or choose another pool name", slug="pool-config-conflict", pool=name)
        if pool["desired"] + count > limit:
            raise ProblemError(
                409, f"pool {name!r} has {pool['desired']} agents; adding {count} would make "
                f"{pool['desired'] + count}, above the max_agents_per_pool setting ({limit}). Add "
                "fewer, or have an admin raise the setting", slug="too-many-agents", pool=name)

    async def scale_pool(self, name: str, count: int) -> dict[str, Any]:
        await self._check_virtual_size(name, count)
        try:
            info = await self.blocking("scale", name, count, wait_seconds=self.settings.api_spawn_wait_seconds)
        finally:
            self._pools_cache.clear()
        return info.model_dump(mode="json")

    async def _check_virtual_size(self, name: str, count: int) -> None:
        """A virtual pool keeps its number of shards (they own its keys): another count is a 409,
        a conflict with the pool's state, where the orchestrator would refuse it in words alone."""
        from hive_ray._api._problems import ProblemError

        pool = await self.call("pool", name)  # an unknown pool is a 404
        shards = pool["desired"]
        if pool.get("virtual") is not None and count != shards:
            raise ProblemError(
                409, f"pool {name!r} runs virtual agents: its {shards} shard(s) own their keys, so its size "
                f"is fixed; scaling it to {shards} restarts failed shards. To change the number of shards, "
                "delete the pool and create it again (states are kept)", slug="virtual-pool-size", pool=name)

    async def stop_pool(self, name: str) -> dict[str, Any]:
        try:
            info = await self.blocking("stop", name)
        finally:
            self._pools_cache.clear()
        return info.model_dump(mode="json")

    # ------------------------------------------------------------------ tasks
    def check_idempotency(self, key: str, body: dict[str, Any]) -> bool:
        """Remember ``key``'s body; True if it was seen before with the same body.

        Raises:
            IdempotencyConflictError: the key was used before with a different body.
        """
        fingerprint = _fingerprint(body)
        seen = self._idempotency.get(key)
        if seen is None:
            self._idempotency.put(key, fingerprint)
            return False
        if seen != fingerprint:
            raise IdempotencyConflictError(
                f"the Idempotency-Key {key!r} was used before with a different request body; "
                "use a new key for a new task, or resend the original body to get the original task"
            )
        return True

    def check_message_id(self, agent_type: str, key: str, message_id: str, body: dict[str, Any]) -> bool:
        """:meth:`check_idempotency` for a message to a virtual agent: its id is its agent's own
        (two agents may be sent messages with the same id, as in the orchestrator)."""
        try:
            return self.check_idempotency(f"agent\x1f{agent_type}\x1f{key}\x1f{message_id}", body)
        except IdempotencyConflictError:
            raise IdempotencyConflictError(
                f"message id {message_id!r} was sent to {agent_type}/{key} before with another message; use a "
                "new id for a new message, or resend the original to get its task") from None

    async def submit(self, template: dict[str, Any], payload: Any) -> dict[str, Any]:
        try:
            return await self.call("submit", template, payload)
        except ConfigurationError:
            await self._refuse_keyless_virtual(template)
            raise

    async def run(self, template: dict[str, Any], payload: Any, wait: float) -> tuple[str, tuple[str, Any, Any]]:
        try:
            task_id, (state, result, error) = await self.call("run", template, payload, wait)
        except ConfigurationError:
            await self._refuse_keyless_virtual(template)
            raise
        return task_id, (state, await self.resolve(task_id, result), error)

    async def _refuse_keyless_virtual(self, template: dict[str, Any]) -> None:
        """After the orchestrator refused a task: if its target runs virtual agents and it has no
        affinity key (the agent's key), say so as a 422 naming both fields, which no schema can
        state. Asked only on that error path, so ordinary submissions pay nothing for it.

        Raises:
            ProblemError: 422, the task's agent type or pool is virtual and it names no key.
        """
        from hive_ray._api._problems import ProblemError

        if template.get("affinity_key") is not None:
            return
        for field in ("agent_type", "pool"):
            target = template.get(field)
            if target is None:
                continue
            try:
                if field == "agent_type":
                    await self.ensure_virtual(target, "any")
                elif (await self.call("pool", target)).get("virtual") is None:
                    return
            except HiveError:
                return  # not virtual, or unknown: the orchestrator's own refusal stands
            message = (f"{field} {target!r} runs virtual agents: each message goes to one agent, named by "
                       "its key; give the task an affinity_key (the agent's key), or send it with POST "
                       "/v1/agents/{agent_type}/{key}/messages")
            raise ProblemError(422, message, slug="validation", errors=[
                {"field": name, "in": "body", "message": message, "code": "fields_disagree"}
                for name in (field, "affinity_key")])

    async def resolve(self, task_id: str, result: Any) -> Any:
        """A result kept in Ray's object store (too large for the task stream), fetched."""
        return await resolve_async(task_id, result, lambda task: self.call("fetch_result", task))

    def cancel_soon(self, task_id: str) -> None:
        """Cancel a task without waiting (a stream's consumer went away; its request is ending)."""
        cancelling = asyncio.ensure_future(self.call("cancel_many", [task_id]))
        self._background.add(cancelling)
        cancelling.add_done_callback(self._cancelled)

    def _cancelled(self, cancelling: asyncio.Future[Any]) -> None:
        self._background.discard(cancelling)
        if not cancelling.cancelled() and cancelling.exception() is not None:
            logger.warning("could not cancel a task whose stream was closed: %s", cancelling.exception())

    async def task_json(self, task_id: str) -> tuple[bytes, bool]:
        """A task's record as JSON; a finished one may come from the cache (it cannot change)."""
        cached = self._finished.get(task_id)
        if cached is not None:
            return cached, True
        record = await self.call("task", task_id)
        stored = type(record["result"]) is StoredResult
        if stored:
            with contextlib.suppress(ResultLostError):  # gone: the record says what it was
                record["result"] = await self.resolve(task_id, record["result"])
        body = dumps(record)
        if record["state"] in TERMINAL and not stored:  # large results are not cached here
            self._finished.put(task_id, body)
        return body, False

    async def tasks(self, state: str | None, pool: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
        return await self.call("tasks", state, pool, limit, cursor)

    async def cancel(self, task_id: str) -> dict[str, Any]:
        return await self.call("cancel", task_id)

    # ------------------------------------------------------------------ virtual agents
    async def ensure_virtual(self, agent_type: str, key: str) -> None:
        """Refuse a message to a type no pool runs as virtual agents, before sending it: the
        orchestrator would take it as an ordinary task with an affinity key.

        Raises:
            UnknownAgentTypeError: no pool runs ``agent_type`` as virtual agents (404).
            ConfigurationError: ``key`` is not a usable key (422).
        """
        if self._virtual_types.get(agent_type) is None:
            await self.call("agent_state", agent_type, key)  # refuses unknown and non-virtual types
            self._virtual_types.put(agent_type, True)

    async def agent(self, agent_type: str, key: str) -> dict[str, Any]:
        """One virtual agent, ready for JSON: its state unpickled here (the replica's client is
        trusted, like a driver's: ``hive.agent(type, key).state()`` does the same).

        A state JSON cannot hold at all (keys that are not strings) becomes its ``repr()``
        text; values inside it that JSON cannot hold become their ``str()``, as in results.
        """
        from hive_ray._api._problems import ProblemError

        answer = await self.call("agent_state", agent_type, key)
        self._virtual_types.put(agent_type, True)
        body = answer["state"]
        try:
            state = pickle.loads(body) if body is not None else None
        except Exception as error:  # noqa: BLE001 - a class this replica cannot import, most often
            raise ProblemError(
                500, f"the state of virtual agent {agent_type}/{key} (version {answer['version']}) cannot be "
                f"read by the API ({type(error).__name__}: {error}); install the package that defines the "
                "classes it holds where the API runs, or read it with hive.agent(type, key).state() where "
                "it is installed", slug="state-unreadable", agent_type=agent_type) from None
        try:
            dumps(state)
        except (TypeError, ValueError):  # keys JSON cannot hold, or a reference cycle
            state = repr(state)
        # The documented fields only (the AgentState schema): what the orchestrator adds is not API.
        return {**{name: answer.get(name) for name in AGENT_FIELDS}, "state": state,
                "reminders": answer.get("reminders") or []}

    # ------------------------------------------------------------------ topics
    async def publish(self, topic: str, message: Any, source: str | None, message_id: str | None,
                      trace_context: dict[str, str] | None) -> dict[str, Any]:
        """Deliver ``message`` to the topic's subscribers (see :mod:`hive_ray._topics`).

        A ``message_id`` is checked here first: the orchestrator answers an id it has seen
        with the first publish's answer whatever was sent, so another message or source
        under a known id is refused (409) rather than silently dropped, as for tasks.

        Raises:
            ProblemError: 422, ``topic`` is not a topic's name.
            IdempotencyConflictError: ``message_id`` was published to ``topic`` with another
                message or source (seen by this replica).
        """
        from hive_ray._api._problems import ProblemError
        from hive_ray._topics import check_topic

        try:
            check_topic(topic)
        except ValueError as error:
            raise ProblemError(422, str(error)) from None
        if message_id is not None:
            fingerprint = _fingerprint({"message": message, "source": source})
            name = f"{topic}\n{message_id}"  # a topic holds no newline
            seen = self._message_ids.get(name)
            if seen is None:
                self._message_ids.put(name, fingerprint)
            elif seen != fingerprint:
                raise IdempotencyConflictError(
                    f"message_id {message_id!r} was published to topic {topic!r} before with another "
                    "message or source; use a new id for a new message, or send the original again "
                    "to get the first publish's answer")
        return await self.call("publish", topic, message, source, message_id, trace_context)

    async def subscribe(self, topic: str, agent_type: str, key: str) -> dict[str, Any]:
        """Subscribe the virtual agent ``(agent_type, key)`` to every message of ``topic``.

        Raises:
            ProblemError: 422, ``agent_type`` is a type this replica knows not to be virtual (a
                ``fields_disagree`` of ``agent_type`` and ``key``).
        """
        from hive_ray._api._problems import ProblemError

        refusal = subscriber_refusal(agent_type)
        if refusal is not None:
            # As for a pool's subscriptions: each field is valid, not together (a type that is not
            # virtual has no agents by key), which no schema can state.
            raise ProblemError(422, refusal + "; subscribe an agent of a virtual type", slug="validation",
                               errors=[{"field": field, "in": "body", "message": refusal,
                                        "code": "fields_disagree"} for field in ("agent_type", "key")])
        return await self.call("subscribe", topic, agent_type, key)

    async def unsubscribe(self, topic: str, agent_type: str, key: str) -> dict[str, Any]:
        return await self.call("unsubscribe", topic, agent_type, key)

    async def subscriptions(self, topic: str | None = None) -> list[dict[str, Any]]:
        return await self.call("subscriptions", topic)

    # ------------------------------------------------------------------ health, metrics, overview
    async def ready(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.call("health"), READINESS_TIMEOUT_SECONDS)

    async def metrics_text(self) -> bytes:
        self.ensure_following()
        regressions = asyncio.ensure_future(self.perf.regression_count())
        endpoints = asyncio.ensure_future(self.endpoints())
        try:
            pools, statistics = await asyncio.wait_for(
                asyncio.gather(self.call("pools"), self.call("statistics")), READINESS_TIMEOUT_SECONDS)
        except Exception as error:  # noqa: BLE001 - a scrape still reports the replica's own metrics
            logger.warning("metrics: orchestrator unavailable (%s)", type(error).__name__)
            pools, statistics = [], None
        return self.metrics.render(pools, statistics, await regressions, await endpoints)

    async def endpoints(self) -> list[dict[str, Any]]:
        """The shared limits of model endpoints (their limiter actors), for metrics and the dashboard."""
        from hive_ray._runtime._limiter import limiter_statistics

        try:
            return await asyncio.wait_for(limiter_statistics(self.settings.namespace),
                                          READINESS_TIMEOUT_SECONDS)
        except Exception as error:  # noqa: BLE001 - a scrape still answers without them
            logger.warning("metrics: endpoint limiters unavailable (%s)", type(error).__name__)
            return []

    async def overview(self) -> dict[str, Any]:
        """What the dashboard shows: pools, counters, recent failures and the task window."""
        self.ensure_following()
        pools, statistics, failures, endpoints = await asyncio.gather(
            self.call("pools"), self.call("statistics"), self.call("tasks", "failed", None, 10, None),
            self.endpoints())
        return {
            "pools": pools,
            "counters": statistics["counters"],
            "usage": statistics.get("usage", []),
            "endpoints": endpoints,
            "series": self.window.series(),
            "bucket_seconds": 5.0,
            "recent_failures": [
                {"task_id": t["task_id"], "pool": t["pool"], "finished_at": t["finished_at"],
                 "error": (t.get("error") or {}).get("message", "")[:300],
                 "error_type": (t.get("error") or {}).get("type", "")}
                for t in failures["tasks"]
            ],
        }
