"""``hive_ray.Hive``: the client that notebooks, scripts, the CLI and the API use.

::

    from hive_ray import Hive

    with Hive.connect() as hive:          # a running cluster, or an embedded local Ray
        hive.spawn("echo", count=4)
        print(hive.submit("echo", {"hello": "world"}).result())
        squares = hive.map("compute", [{"rounds": n} for n in range(100)])

Synchronous calls block on ``ray.get`` and never call ``asyncio.run``, so they
work in plain scripts and inside Jupyter's running event loop; task handles
are also awaitable (``await hive.submit(...)`` works at a notebook's top level).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hive_ray._calls import _RETRYABLE_METHODS, OrchestratorCalls, _NoAnswer  # noqa: F401 - _api/_gateway.py imports it from here
from hive_ray._client_actors import ActorModelCalls
from hive_ray._connect import _ensure_token_auth, get_or_create_orchestrator, local_cluster_address
from hive_ray._errors import HiveConnectionError, HiveError, OverloadedError, ResultLostError
from hive_ray._handle import TaskHandle
from hive_ray._map_window import (
    MAP_ADMISSION_SECONDS,
    MAP_CANCEL_SECONDS,
    MAP_MAX_BACKOFF_SECONDS,
    _chunks,
    _MapWindow,
    _progress_bar,
    _remaining,
)
from hive_ray._results import StoredResult, resolve, resolve_async, unwrap
from hive_ray._task import new_task_ids
from hive_ray._tracing import inject_client_context, traced_call

if TYPE_CHECKING:
    from hive_ray._agent import Agent
    from hive_ray._models import AgentInfo, PoolInfo, TaskRecord
    from hive_ray._settings import Settings
    from hive_ray._streaming import TaskStream
    from hive_ray._tables import RecordList

logger = logging.getLogger("hive_ray.client")


class Hive(ActorModelCalls, OrchestratorCalls):
    """A connection to hive-ray's orchestrator. Build it with :meth:`Hive.connect`."""

    def __init__(self, orchestrator: Any, settings: Settings, *, owns_ray: bool) -> None:
        self._orchestrator = orchestrator
        self.settings = settings
        self._owns_ray = owns_ray
        self._closed = False
        self._channel: Any = None
        self._reopening = False

    # ------------------------------------------------------------------ connecting
    @classmethod
    def connect(
        cls,
        address: str | None = None,
        *,
        settings: Settings | dict[str, Any] | None = None,
        detached: bool | None = None,
        embedded: bool = True,
    ) -> Hive:
        """Attach to a running cluster, or start an embedded local Ray.

        The cluster is, in order: ``address``, ``RAY_ADDRESS``, the local cluster
        ``hive up`` started, or else a new local Ray owned by this client and
        stopped by :meth:`close` (unless ``embedded`` is False: then no cluster is an
        error). The orchestrator is found by name, or created (detached, so that it
        outlives this driver, unless Ray is embedded).
        """
        _ensure_token_auth()
        import ray

        from hive_ray._settings import Settings

        if not isinstance(settings, Settings):
            settings = Settings.load(settings)
        owns_ray = False
        if not ray.is_initialized():
            target = address or os.environ.get("RAY_ADDRESS") or local_cluster_address(settings)
            if target:
                from hive_ray._ray_access import prepare_driver

                prepare_driver(target)  # a head on loopback (hive up's) needs its drivers told
                try:
                    ray.init(address=target, namespace=settings.namespace, logging_level=logging.WARNING,
                             log_to_driver=False)
                except (ConnectionError, RuntimeError) as error:
                    raise HiveConnectionError(
                        f"could not connect to the Ray cluster at {target!r}: {error}. Check the "
                        "address, or unset RAY_ADDRESS to start an embedded local Ray."
                    ) from None
            elif not embedded:
                raise HiveConnectionError(
                    "no hive cluster is running: start one with `hive up`, or set RAY_ADDRESS "
                    "to a running Ray cluster"
                )
            else:
                from hive_ray._ray_access import ensure_ray_token

                ensure_ray_token()  # Ray would create it too, but readable by everyone
                # address="local": a new Ray even if some other cluster runs on this machine.
                ray.init(address="local", namespace=settings.namespace, logging_level=logging.WARNING,
                         include_dashboard=False)
                owns_ray = True
        orchestrator = get_or_create_orchestrator(settings, detached=not owns_ray if detached is None else detached)
        hive = cls(orchestrator, settings, owns_ray=owns_ray)
        hive._call("health")  # fail here, clearly, if it cannot answer
        hive._open_channel()
        return hive

    def close(self) -> None:
        """Disconnect; an embedded Ray started by :meth:`connect` is shut down."""
        if self._closed:
            return
        self._closed = True
        if self.settings.tracing:
            from hive_ray._tracing import tracer_from_settings

            tracer = tracer_from_settings(self.settings, "client")
            if tracer is not None:
                tracer.flush(timeout=2.0)  # this client's spans, before Ray may go away
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._owns_ray:
            import ray

            try:
                ray.get(self._orchestrator.shutdown.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
            ray.shutdown()

    def __enter__(self) -> Hive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ pools
    def spawn(self, agent: str | type[Agent], count: int = 1, *, pool: str | None = None,
              wait_seconds: float | None = None, **options: Any) -> PoolInfo:
        """Start ``count`` agents of a type (by name or class) in a pool, and wait until ready.

        ``pool`` defaults to the agent type's name; spawning into an existing pool
        adds agents. ``options`` are :class:`hive_ray.PoolSpec` fields: ``num_cpus``,
        ``num_gpus``, ``memory``, ``resources``, ``policy``, ``max_queue``,
        ``max_attempts``, ``placement``, ``agents_per_host``. ``wait_seconds`` bounds the wait
        (default: the ``spawn_wait_seconds`` setting); agents not placed by then keep starting.
        """
        from hive_ray._errors import UnknownAgentTypeError
        from hive_ray._models import PoolInfo
        from hive_ray._registry import describe
        from hive_ray._topics import merged_topics

        reference = capabilities = concurrency = None
        virtual, subscriptions = False, ()
        try:
            info = describe(agent)
            reference, capabilities, concurrency = info.reference, sorted(info.capabilities), info.concurrency
            agent_type, virtual, subscriptions = info.name, info.virtual, info.subscriptions
        except UnknownAgentTypeError:
            if not isinstance(agent, str):
                raise
            agent_type = agent  # perhaps installed where the orchestrator runs
        spec = {"name": pool or agent_type, "agent_type": agent_type, "count": count, **options}
        if subscriptions:
            spec["subscriptions"] = merged_topics(subscriptions, spec.get("subscriptions"))
        return PoolInfo(**self._call("create_pool", spec, reference, capabilities, concurrency, wait_seconds,
                                     virtual))

    def scale(self, pool: str, count: int, *, wait_seconds: float | None = None) -> PoolInfo:
        from hive_ray._models import PoolInfo

        return PoolInfo(**self._call("scale", pool, count, wait_seconds))

    def stop(self, pool: str) -> PoolInfo:
        """Stop a pool's agents and remove it; its queued tasks are cancelled."""
        from hive_ray._models import PoolInfo

        return PoolInfo(**self._call("stop_pool", pool))

    def pools(self) -> RecordList[PoolInfo]:
        """Every pool; a list that renders as one table in Jupyter (``.to_pandas()`` too)."""
        from hive_ray._models import PoolInfo
        from hive_ray._tables import RecordList

        return RecordList((PoolInfo(**info) for info in self._call("pools")), "pools")

    def pool(self, name: str) -> PoolInfo:
        from hive_ray._models import PoolInfo

        return PoolInfo(**self._call("pool", name))

    def agents(self, pool: str | None = None) -> RecordList[AgentInfo]:
        """Every agent (of one pool, or all); a list that renders as one table in Jupyter."""
        from hive_ray._tables import RecordList

        pools = [self.pool(pool)] if pool else self.pools()
        return RecordList((agent for p in pools for agent in p.agents), "agents")

    # ------------------------------------------------------------------ tasks
    def _template(self, agent: str | type[Agent] | None, options: dict[str, Any]) -> dict[str, Any]:
        from hive_ray._models import TaskSpec

        if agent is not None and not isinstance(agent, str):
            agent = agent.type_name()
        spec = TaskSpec(agent_type=agent, **options)  # validates; raises ValidationError
        return inject_client_context(spec.template())  # the call's trace, when sampled

    @traced_call("submit")
    def submit(self, agent: str | type[Agent] | None = None, payload: Any = None, **options: Any) -> TaskHandle:
        """Submit one task; returns at once with a handle (the task is accepted and queued).

        ``agent`` is an agent type name (or class); instead give ``capability=`` or
        ``pool=``. Other options: ``priority``, ``timeout``, ``affinity_key``,
        ``idempotency_key``, ``max_attempts``, ``metadata``.
        """
        return self._submit(self._template(agent, options), payload)

    def _submit(self, template: dict[str, Any], payload: Any) -> TaskHandle:
        [task_id] = new_task_ids(1)
        try:
            accepted = self._call("submit", template, payload, task_id)
        except HiveConnectionError:
            accepted = self._recover_submission(template, payload, task_id)
            if accepted is None:
                raise
        return TaskHandle(self, accepted["task_id"], accepted["pool"])

    def stream(self, agent: str | type[Agent] | None = None, payload: Any = None, *, detach: bool = False,
               idle_timeout: float | None = None, **options: Any) -> TaskStream:
        """Submit one task and iterate its parts as its agent's generator yields them.

        ``for part in hive.stream("words", "a b c")`` (or ``async for``). Stopping
        early cancels the task unless ``detach``; ``idle_timeout`` bounds the wait
        for each part (:class:`~hive_ray.TaskTimeoutError`). The task's error, if
        it fails, is raised after the parts that came before it. Options as in
        :meth:`submit`.
        """
        from hive_ray._streaming import TaskStream

        # "stream": this consumer counts as reading from the start (no first part is dropped).
        handle = self._submit({**self._template(agent, options), "stream": True}, payload)
        return TaskStream(self, handle.task_id, handle.pool, detach=detach, idle_timeout=idle_timeout)

    @traced_call("run")
    def run(self, agent: str | type[Agent] | None = None, payload: Any = None, *,
            wait_timeout: float | None = None, **options: Any) -> Any:
        """Submit one task and return its result: the fastest path, one orchestrator call.

        The task gets every guarantee a submitted one gets (queueing, supervision,
        a record); only the separate acknowledgement is skipped. Raises the
        task's error like :meth:`TaskHandle.result`; ``wait_timeout`` bounds the wait.
        """
        template = self._template(agent, options)
        [task_id] = new_task_ids(1)
        deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
        try:
            _, answer = self._call("run", template, payload, wait_timeout, task_id, timeout=wait_timeout)
        except _NoAnswer:
            raise
        except HiveConnectionError:
            # The orchestrator went away mid-call. If it had accepted the task, the
            # journal has it and the restarted orchestrator runs it: wait for it.
            # If not, nothing happened yet: submit it again under the same id.
            if self._recover_submission(template, payload, task_id) is None:
                raise
            answer = self._call("wait", task_id, wait_timeout, timeout=wait_timeout)
        return self._value(task_id, answer, _remaining(deadline))

    def _recover_submission(self, template: dict[str, Any], payload: Any, task_id: str) -> dict[str, Any] | None:
        from hive_ray._errors import TaskNotFoundError

        try:
            return self._call("task", task_id)
        except TaskNotFoundError:
            pass
        except HiveConnectionError:
            return None
        try:
            return self._call("submit", template, payload, task_id)
        except HiveConnectionError:
            return None

    @traced_call("run_async")
    async def run_async(self, agent: str | type[Agent] | None = None, payload: Any = None, *,
                        wait_timeout: float | None = None, **options: Any) -> Any:
        """:meth:`run` for ``async`` code (and a notebook's top-level ``await``)."""
        template = self._template(agent, options)
        task_id, answer = await self._call_async("run", template, payload, wait_timeout, timeout=wait_timeout)
        return await self._value_async(task_id, answer)

    @traced_call("submit_many")
    def submit_many(self, agent: str | type[Agent] | None, payloads: Iterable[Any], *,
                    chunk_size: int = 1000, **options: Any) -> list[TaskHandle]:
        """Submit many tasks in one orchestrator call per ``chunk_size`` payloads."""

        template = self._template(agent, options)
        pending = [self._fire("submit_many", template, chunk) for chunk in _chunks(list(payloads), chunk_size)]
        return [TaskHandle(self, task_id, "") for ref in pending for task_id in self._collect(ref)]

    @traced_call("map")
    def map(self, agent: str | type[Agent] | None, payloads: Iterable[Any], *, chunk_size: int = 512,
            progress: bool | None = None, return_exceptions: bool = False, timeout: float | None = None,
            keys: Iterable[str] | None = None, **options: Any) -> list[Any]:
        """Run one task per payload and return the results in input order.

        Tasks reach the orchestrator ``chunk_size`` at a time (one call per chunk
        each way), and at most what the pool's queue bound admits is in flight:
        a full pool (:class:`~hive_ray.OverloadedError`) is waited out, for the
        ``retry_after`` it suggests, instead of failing the map half-way. If the
        map stops early (an error reaching the orchestrator, Ctrl-C), the tasks it
        sent and no longer waits for are cancelled: nothing is left running.

        A ``tqdm.auto`` progress bar shows by default for more than one chunk. A
        failed task raises its error once every task has ended, unless
        ``return_exceptions`` is True, in which case the error takes its place.

        ``keys`` gives each payload its own affinity key (for virtual agents: the
        agent it goes to; see :meth:`ask_many`).
        """
        items = list(payloads)
        template = self._template(agent, options)
        key_list = None if keys is None else list(keys)
        if key_list is not None and len(key_list) != len(items):
            raise ValueError(f"map needs one key per payload: {len(key_list)} keys for {len(items)} payloads")
        # A quick read, bounded like the map itself (or by MAP_ADMISSION_SECONDS).
        admission = self._call("admission", template, timeout=timeout or MAP_ADMISSION_SECONDS) if items else None
        window = _MapWindow.for_pool(admission, chunk_size, len(items))
        chunks = _chunks(items, window.chunk_size)
        templates = [template] * len(chunks) if key_list is None else \
            [{**template, "affinity_keys": part} for part in _chunks(key_list, window.chunk_size)]
        ids = [new_task_ids(len(chunk)) for chunk in chunks]  # known even if a reply is lost
        # With a timeout, each chunk's answer is given up on at the timeout plus the margin
        # after it was sent, whether or not the orchestrator answers.
        bound = None if timeout is None else timeout + self.settings.client_timeout_margin_seconds
        bar = _progress_bar(len(items), progress if progress is not None else len(chunks) > 1)
        answers: list[Any] = [None] * len(chunks)
        in_flight: dict[int, Any] = {}
        sent_at: dict[int, float] = {}
        waiting = list(range(len(chunks)))  # chunks not sent yet (or sent again), in order
        try:
            while waiting or in_flight:
                while waiting and len(in_flight) < window.chunks:
                    index = waiting.pop(0)
                    in_flight[index] = self._fire("run_many", templates[index], chunks[index], timeout, ids[index])
                    sent_at[index] = time.monotonic()
                index = min(in_flight)
                remaining = None if bound is None else max(0.0, sent_at[index] + bound - time.monotonic())
                try:
                    _, answers[index] = self._collect(in_flight[index], remaining)
                except OverloadedError as full:
                    # Nothing of that chunk was accepted: send it again once the pool has room.
                    del in_flight[index]
                    window.on_overloaded()
                    waiting.insert(0, index)
                    time.sleep(min(full.retry_after, MAP_MAX_BACKOFF_SECONDS))
                    continue
                del in_flight[index]
                window.on_accepted()
                if bar is not None:
                    bar.update(len(answers[index]))
        except BaseException:
            self._cancel_quietly([task_id for index in in_flight for task_id in ids[index]])
            raise
        finally:
            if bar is not None:
                bar.close()
        results: list[Any] = []
        first_error: BaseException | None = None
        for chunk_ids, chunk_answers in zip(ids, answers, strict=True):
            for task_id, answer in zip(chunk_ids, chunk_answers, strict=True):
                try:
                    results.append(self._value(task_id, answer, timeout))
                except HiveError as error:
                    first_error = first_error or error
                    results.append(error)
        if first_error is not None and not return_exceptions:
            raise first_error
        return results

    def _cancel_quietly(self, task_ids: list[str]) -> None:
        """Cancel tasks nobody waits for any more; best effort, bounded in time."""
        if not task_ids or self._closed:
            return
        try:
            self._call_once("cancel_many", task_ids, timeout=MAP_CANCEL_SECONDS)
        except BaseException as error:  # noqa: BLE001 - already failing: say so, do not mask it
            logger.warning("could not cancel %d task(s) of an interrupted map: %s", len(task_ids), error)

    def _value(self, task_id: str, answer: tuple[str, Any, Any], timeout: float | None = None) -> Any:
        """The result in ``answer``, fetched from the object store if it was kept there."""
        return resolve(task_id, unwrap(task_id, answer),
                       lambda task: self._call("fetch_result", task, timeout=timeout), timeout)

    async def _value_async(self, task_id: str, answer: tuple[str, Any, Any]) -> Any:
        return await resolve_async(task_id, unwrap(task_id, answer),
                                   lambda task: self._call_async("fetch_result", task))

    def cancel(self, task_id: str) -> TaskRecord:
        from hive_ray._models import TaskRecord

        return TaskRecord(**self._call("cancel", task_id))

    def task(self, task_id: str) -> TaskRecord:
        from hive_ray._models import TaskRecord

        record = self._call("task", task_id)
        if type(record["result"]) is StoredResult:  # kept in the object store: the value, if still there
            with contextlib.suppress(ResultLostError):
                record["result"] = self._value(task_id, ("succeeded", record["result"], None))
        return TaskRecord(**record)

    def tasks(self, *, state: str | None = None, pool: str | None = None,
              limit: int = 100) -> RecordList[TaskRecord]:
        """Recent tasks, newest first, optionally filtered by state and pool (a table in Jupyter)."""
        from hive_ray._models import TaskRecord
        from hive_ray._tables import RecordList

        page = self._call("tasks", state, pool, limit, None)
        return RecordList((TaskRecord(**record) for record in page["tasks"]), "tasks")

    def dead_letters(self, limit: int = 100) -> RecordList[TaskRecord]:
        """Tasks that failed after every allowed attempt, newest first (a table in Jupyter)."""
        from hive_ray._models import TaskRecord
        from hive_ray._tables import RecordList

        return RecordList((TaskRecord(**record) for record in self._call("dead_letters", limit)),
                          "dead letters")

    def resubmit(self, task_id: str) -> TaskHandle:
        """Submit an ended (typically dead-lettered) task again, as a new task."""
        accepted = self._call("resubmit", task_id)
        return TaskHandle(self, accepted["task_id"], accepted["pool"])

    def hosts(self, pool: str) -> list[dict[str, Any]]:
        """The host actors of a pool: pid, agents, how many are active or passivated."""
        return self._call("hosts", pool)

    def restarts(self, pool: str | None = None, limit: int = 100) -> RecordList[dict[str, Any]]:
        """Recent agent restarts with their causes (exception, process_killed, oom_killed,
        node_lost, health_check_failed, timeout_unresponsive); a table in Jupyter."""
        from hive_ray._models import RESTART_COLUMNS
        from hive_ray._tables import RecordList

        return RecordList(self._call("restart_events", pool, limit), "restarts", RESTART_COLUMNS)

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        return TaskHandle(self, task_id, "").result(timeout)

    def events(self, after: int = 0, timeout: float = 0.0, task_id: str | None = None) -> dict[str, Any]:
        return self._call("events", after, timeout, task_id, timeout=timeout)

    def statistics(self) -> dict[str, Any]:
        return self._call("statistics")

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("embedded" if self._owns_ray else "attached")
        return f"<Hive {state} namespace={self.settings.namespace!r}>"
